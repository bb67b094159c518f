"""Export: consolidate the (possibly ZeRO-partitioned, low-precision) weights to fp32 and write ``SistaModel.export``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.models import build_model

log = logging.getLogger(__name__)


def full_fp32_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's full fp32 master copy (a collective under ZeRO-3: all ranks call it) plus buffers."""
    from deepspeed.utils import safe_get_full_fp32_param

    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        full = safe_get_full_fp32_param(param) if param.requires_grad else None
        if full is None:  # frozen parameters have no optimizer master copy
            full = param.detach()
            if hasattr(param, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([param]):
                    full = param.detach().clone()
        state[name] = full.detach().float().cpu().clone()
    for name, buffer in model.named_buffers():
        state[name] = buffer.detach().cpu().clone()
    return state


def export_model(model: torch.nn.Module, model_cfg: Any, tokenizer: Any, out_dir: Path, is_main: bool) -> Path | None:
    """Consolidate on every rank, then rank 0 loads the weights into a fresh fp32 model and exports it."""
    state = full_fp32_state_dict(model)
    if not is_main:
        return None
    fresh = build_model(model_cfg, tokenizer).float()
    expected = fresh.state_dict()  # non-persistent buffers are not part of it
    missing = [k for k in expected if k not in state]
    if missing:
        raise RuntimeError(f"export: consolidated weights lack {missing[:5]}")
    # the trainer stored 0-d parameters as shape [1] (see engine.vectorise_scalar_parameters)
    fresh.load_state_dict({k: state[k].reshape(v.shape) for k, v in expected.items()}, strict=True)
    fresh.export(out_dir, tokenizer)
    log.info("exported fp32 encoders to %s", out_dir)
    return out_dir
