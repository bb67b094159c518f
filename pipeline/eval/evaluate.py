"""Run the configured evaluation tasks on an exported model and write/log their results."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.eval.config import EvalConfig
from pipeline.eval.context import EvalContext, TaskResult, pick_device, resolve_transform, tokenizer_for
from pipeline.eval.detection import run_detection
from pipeline.eval.grounding import run_grounding
from pipeline.eval.linear_probe import run_linear_probe
from pipeline.eval.reporting import log_to_mlflow, write_outputs
from pipeline.eval.retrieval import run_retrieval
from pipeline.eval.segmentation import run_segmentation
from pipeline.eval.zero_shot import run_zero_shot
from pipeline.models import load_exported

log = logging.getLogger(__name__)
TASKS = {
    "zero_shot": run_zero_shot,
    "retrieval": run_retrieval,
    "linear_probe": run_linear_probe,
    "grounding": run_grounding,
    "segmentation": run_segmentation,
    "detection": run_detection,
}


def output_dir(cfg: EvalConfig, config_name: str) -> Path:
    """``output_dir``, else ``<run dir>/eval/<config name>`` beside the exported model."""
    if cfg.output_dir is not None:
        return Path(cfg.output_dir)
    return Path(cfg.checkpoint).resolve().parent / "eval" / config_name


def build_context(cfg: EvalConfig, out_dir: Path) -> EvalContext:
    """Load the exported model (safetensors, no pickle) with its tokenizer and eval transform."""
    checkpoint = Path(cfg.checkpoint)
    if not checkpoint.is_dir():
        raise ConfigError(f"checkpoint={cfg.checkpoint}: not a folder (expected a SistaModel.export folder)")
    device = pick_device(cfg.device)
    model = load_exported(checkpoint).to(device).eval()
    return EvalContext(
        cfg=cfg,
        model=model,
        tokenizer=tokenizer_for(model),
        transform=resolve_transform(cfg, checkpoint),
        device=device,
        out_dir=out_dir,
    )


def evaluate(cfg: EvalConfig, config_name: str = "eval") -> tuple[list[TaskResult], dict[str, Path]]:
    """Run every task of ``cfg.tasks`` in order; write metrics.json / metrics.md / figures; log to MLflow."""
    if not cfg.tasks:
        raise ConfigError("tasks is empty: name at least one of " + ", ".join(TASKS))
    out_dir = output_dir(cfg, config_name)
    ctx = build_context(cfg, out_dir)
    results = []
    for task in cfg.tasks:
        log.info("evaluating %s on %s", task, cfg.checkpoint)
        results.append(TASKS[task](ctx))
    paths = write_outputs(out_dir, cfg, results)
    run_id = log_to_mlflow(cfg, results, paths, out_dir)
    log.info("wrote %s and %s%s", paths["metrics"], paths["table"], f" (MLflow run {run_id})" if run_id else "")
    return results, paths
