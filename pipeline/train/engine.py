"""DeepSpeed engine: the filled-in DeepSpeed config, AdamW parameter groups, warm-up + cosine, the encoder."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import deep_merge
from pipeline.resources import config_root, locate
from pipeline.train.config import PretrainConfig

log = logging.getLogger(__name__)
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def find_config_file(path: str) -> Path:
    """A config file relative to the working directory, else ``configs/...`` of the installed package."""
    found = locate(path)
    if not found.is_file():
        raise FileNotFoundError(f"engine.deepspeed_config: {path} not found (looked in . and {config_root()})")
    return found


def deepspeed_config(cfg: PretrainConfig, world_size: int, device_type: str) -> dict[str, Any]:
    """``engine.deepspeed_config`` merged with ``engine.deepspeed_overrides``; batches, precision, AdamW filled in."""
    ds = json.loads(find_config_file(cfg.engine.deepspeed_config).read_text())
    ds = {k: v for k, v in ds.items() if not k.startswith("_")}
    ds = deep_merge(ds, cfg.engine.deepspeed_overrides, "engine.deepspeed_overrides")
    micro, accum = cfg.data.batch_size, cfg.optim.accumulation_steps
    if device_type == "cpu" and "zero_optimization" in ds:
        # The CPU accelerator has no streams to overlap on; its async reductions only add ordering risk.
        ds["zero_optimization"]["overlap_comm"] = False
    ds.update(
        train_micro_batch_size_per_gpu=micro,
        gradient_accumulation_steps=accum,
        train_batch_size=micro * accum * world_size,
        gradient_clipping=cfg.optim.grad_clip,
        bf16={"enabled": cfg.engine.precision == "bf16"},
        fp16={"enabled": cfg.engine.precision == "fp16", "initial_scale_power": 16},
        optimizer={
            "type": "AdamW",
            "params": {
                "lr": cfg.optim.lr,
                "betas": list(cfg.optim.betas),
                "eps": cfg.optim.eps,
                "weight_decay": cfg.optim.weight_decay,
                "torch_adam": True,
                "adam_w_mode": True,
                **({"fused": True} if device_type == "cuda" else {}),
            },
        },
    )
    return ds


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_patterns: list[str]) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights, and undecayed norms / biases / temperatures / named patterns."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or any(p in name for p in no_decay_patterns):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step``: linear warm-up, then cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ContrastiveEncoder(nn.Module):
    """What the engine runs forward: both encoders and the temperatures, in one call (ZeRO-3 gathers here)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor
    ) -> tuple[Any, Any, dict[str, torch.Tensor]]:
        """(ImageFeatures, TextFeatures, logit scales) of one micro-batch."""
        image = self.model.encode_image(images)
        text = self.model.encode_text(input_ids, attention_mask, word_ids)
        scales = {k: v.reshape(()) for k, v in self.model.logit_scales().items()}
        return image, text, scales


def vectorise_scalar_parameters(model: nn.Module) -> list[str]:
    """Give every 0-d parameter (the temperatures) shape [1]; returns their names.

    DeepSpeed 0.19 broadcasts and partitions parameters through a byte view, which fails for 0-d
    tensors (ZeRO-1/2 model broadcast and ZeRO-3 partitioning alike). The values are unchanged;
    :class:`ContrastiveEncoder` hands the loss 0-d scales again and the export restores the shapes.
    """
    names = []
    for module_name, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.ndim == 0:
                setattr(module, name, nn.Parameter(param.detach().reshape(1).clone(), requires_grad=param.requires_grad))
                names.append(f"{module_name}.{name}" if module_name else name)
    return names


def compile_encoders(model: nn.Module, ds_config: dict[str, Any], mode: str = "default") -> None:
    """``torch.compile`` the image and text encoders in place (parameter names and checkpoints unchanged).

    At per-device batches of ~100+ a ViT-B step launches thousands of small kernels; fusing them is what
    keeps the GPU busy, and ``mode="reduce-overhead"`` replays each compiled graph as one CUDA graph
    (the shapes are static: fixed batches, text padded to ``max_length``). ZeRO-3 gathers parameters in
    forward hooks that graph capture cannot follow.
    """
    if ds_config.get("zero_optimization", {}).get("stage", 0) >= 3:
        raise ValueError("engine.compile=true needs ZeRO stage 1 or 2: ZeRO-3's parameter hooks break graph capture")
    for name in ("image_encoder", "text_encoder"):
        getattr(model, name).compile(mode=mode)
    log.info("torch.compile (mode %s): image and text encoders compiled in place", mode)


def build_engine(cfg: PretrainConfig, model: nn.Module, world_size: int, device: torch.device, total_steps: int):
    """``deepspeed.initialize`` on the encoder wrapper with AdamW groups and the warm-up + cosine schedule."""
    import deepspeed

    ds_config = deepspeed_config(cfg, world_size, device.type)
    if cfg.engine.compile:
        compile_encoders(model, ds_config, cfg.engine.compile_mode)
    vectorise_scalar_parameters(model)
    groups = parameter_groups(model, cfg.optim.weight_decay, cfg.optim.no_decay_patterns)
    schedule = cfg.schedule

    def make_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, schedule.warmup_steps, total_steps, schedule.min_lr_ratio)
        )

    engine, _, _, _ = deepspeed.initialize(
        model=ContrastiveEncoder(model), model_parameters=groups, config=ds_config, lr_scheduler=make_scheduler
    )
    return engine, ds_config
