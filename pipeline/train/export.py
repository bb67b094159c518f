"""Export: consolidate the (possibly ZeRO-partitioned, low-precision) weights to fp32 and write a self-describing export.

``python -m pipeline.train.export upgrade EXPORT_DIR [--run-dir RUN_DIR]`` converts an export written
before ``sista_export.json`` existed, from its training run's ``config.yaml`` and checkpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ConfigError, load_config, to_yaml
from pipeline.data import DataConfig
from pipeline.data.shards import ShardError
from pipeline.models import build_model
from pipeline.models.export_format import (
    EXPORT_FILE,
    SCHEMA_VERSION,
    DicomWindow,
    ExportDescription,
    ImagePreprocessing,
    Preprocessing,
    Provenance,
    TextPreprocessing,
    write_description,
)
from pipeline.models.sista_model import TEXT_DIR
from pipeline.resources import config_root
from pipeline.shard_format import read_manifest

log = logging.getLogger(__name__)
GIT_COMMIT_ENV = "SISTA_GIT_COMMIT"  # set where the source has no .git (e.g. a Docker build argument)


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


def shard_window(data: DataConfig) -> DicomWindow | None:
    """The DICOM window the training shards were made with (their manifest's ``image.window``), None when unknown."""
    if data.manifest is None:
        return None
    try:
        image = read_manifest(data.manifest).image
    except (ShardError, ValueError) as err:
        log.warning("no DICOM window in the export: %s", err)
        return None
    window = None if image is None else image.window
    return None if window is None else DicomWindow(window.use_file_voi, window.percentile_low, window.percentile_high)


def git_commit() -> str | None:
    """The commit of the installed source (``SISTA_GIT_COMMIT``, else ``git`` beside the package), ``+dirty`` if changed."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    where = config_root().resolve().parent  # the checkout holding configs/ (no git inside a wheel)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def describe_export(cfg: Any, tracking_uri: str | None, run_id: str | None, step: int | None,
                    run_dir: Path, commit: str | None) -> ExportDescription:
    """The ``sista_export.json`` of a training run's export (``cfg``: its resolved PretrainConfig)."""
    return ExportDescription(
        schema_version=SCHEMA_VERSION,
        preprocessing=Preprocessing(
            image=ImagePreprocessing(resize="short_side", crop="center", transform=cfg.data.transform),
            text=TextPreprocessing(tokenizer=TEXT_DIR, max_length=cfg.model.text.max_length),
            dicom_window=shard_window(cfg.data),
        ),
        provenance=Provenance(
            tracking_uri=tracking_uri, run_id=run_id, step=step, git_commit=commit,
            config_hash="sha256:" + hashlib.sha256(to_yaml(cfg).encode("utf-8")).hexdigest(),
            run_dir=str(run_dir.resolve()),
        ),
    )


def export_model(model: torch.nn.Module, model_cfg: Any, tokenizer: Any, out_dir: Path, is_main: bool,
                 description: ExportDescription | None = None) -> Path | None:
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
    if description is not None:
        write_description(out_dir, description)
    log.info("exported fp32 encoders to %s", out_dir)
    return out_dir


def upgrade_export(export_dir: Path, run_dir: Path | None = None) -> Path:
    """Write ``sista_export.json`` into an older export from its training run's ``config.yaml`` and checkpoints."""
    from pipeline.train import checkpoint as ckpt
    from pipeline.train.config import PretrainConfig, checkpoint_dir
    from pipeline.train.tracking import tracking_uri

    run_dir = run_dir or export_dir.resolve().parent
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{config_file}: not found; name the training run folder with --run-dir")
    cfg = load_config(PretrainConfig, config_file)
    found = ckpt.find_resume_point(checkpoint_dir(cfg), "latest") if checkpoint_dir(cfg).is_dir() else None
    info = ckpt.describe(found) if found is not None else None
    uri = tracking_uri(cfg.tracking, run_dir) if cfg.tracking.enabled else None
    description = describe_export(cfg, uri, info.mlflow_run_id if info else None, info.step if info else None,
                                  run_dir, None)
    return write_description(export_dir, description)


def main(argv: list[str] | None = None) -> int:
    """``upgrade EXPORT_DIR [--run-dir RUN_DIR]``: add ``sista_export.json`` to an export that lacks it."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.train.export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    upgrade = sub.add_parser("upgrade", help=f"write {EXPORT_FILE} into an older export folder")
    upgrade.add_argument("export_dir", type=Path)
    upgrade.add_argument("--run-dir", type=Path, help="the training run folder (default: the export's parent)")
    args = parser.parse_args(argv)
    try:
        path = upgrade_export(args.export_dir, args.run_dir)
    except (ConfigError, FileNotFoundError) as err:
        print(f"export error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
