"""Evaluation outputs: ``metrics.json``, a Markdown table, figures, and the MLflow run that records them."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from pipeline.config import flatten, to_yaml
from pipeline.eval.config import EvalConfig
from pipeline.eval.context import TaskResult, training_config

log = logging.getLogger(__name__)
_MLFLOW_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
MAX_PARAM_CHARS = 6000


def markdown_report(results: list[TaskResult], data_name: str, checkpoint: str) -> str:
    """One Markdown table per task: what | value (%) | 95 % CI, every number labelled with the data set."""
    lines = [f"# Evaluation of `{checkpoint}`", ""]
    for result in results:
        lines += [f"## {result.task} ({data_name})" if result.task not in ("linear_probe", "segmentation", "detection") else f"## {result.task}", ""]
        lines += ["| metric | value (%) | 95 % CI |", "|---|---|---|"]
        lines += [f"| {what} | {value} | {ci} |" for what, value, ci in result.table]
        lines += [f"![{f.stem}]({f.relative_to(f.parents[1]).as_posix()})" for f in result.figures]
        lines.append("")
    return "\n".join(lines)


def write_outputs(out_dir: Path, cfg: EvalConfig, results: list[TaskResult]) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and ``eval_config.yaml`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "checkpoint": cfg.checkpoint,
        "data": cfg.data.shards.name,
        "tasks": {r.task: r.metrics for r in results},
    }
    paths = {
        "metrics": out_dir / "metrics.json",
        "table": out_dir / "metrics.md",
        "config": out_dir / "eval_config.yaml",
    }
    paths["metrics"].write_text(json.dumps(payload, indent=2, sort_keys=False), encoding="utf-8")
    paths["table"].write_text(markdown_report(results, cfg.data.shards.name, cfg.checkpoint), encoding="utf-8")
    paths["config"].write_text(to_yaml(cfg), encoding="utf-8")
    return paths


def numeric_leaves(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a nested dict as ``{"a/b/c": value}``; a 2-list interval becomes ``..._ci_low``/``_ci_high``."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(numeric_leaves(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(tree, list) and len(tree) == 2 and all(isinstance(v, (int, float)) for v in tree):
        out[f"{prefix}_low"], out[f"{prefix}_high"] = float(tree[0]), float(tree[1])
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix] = float(tree)
    return {_MLFLOW_KEY.sub("_", k.replace("@", "_at_")): v for k, v in out.items()}


def pretrain_run_id(checkpoint: Path) -> str | None:
    """The MLflow run of the training run that exported ``checkpoint`` (from its newest complete checkpoint)."""
    from pipeline.train.checkpoint import describe, find_resume_point

    run_dir = checkpoint.resolve().parent
    ckpt_dir = ((training_config(checkpoint) or {}).get("checkpoint") or {}).get("dir") or run_dir / "checkpoints"
    folder = find_resume_point(Path(ckpt_dir), "latest") if Path(ckpt_dir).is_dir() else None
    return None if folder is None else describe(folder).mlflow_run_id


def tracking_uri(cfg: EvalConfig, checkpoint: Path, out_dir: Path) -> str:
    """``tracking.uri``, else MLFLOW_TRACKING_URI, else the training run's sqlite store, else one in ``out_dir``."""
    train_db = checkpoint.resolve().parent / "mlflow.db"
    fallback = train_db if train_db.is_file() else out_dir.resolve() / "mlflow.db"
    return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{fallback}"


def log_to_mlflow(cfg: EvalConfig, results: list[TaskResult], paths: dict[str, Path], out_dir: Path) -> str | None:
    """Record metrics, tables, figures and the config in MLflow; return the run id.

    A new run carries the tags ``sista.pretrain_run_id`` and ``mlflow.parentRunId`` (the UI nests
    it under the training run); with ``tracking.same_run`` the metrics go into the training run
    itself under ``eval/<task>/...``.
    """
    if not cfg.tracking.enabled:
        return None
    import mlflow

    checkpoint = Path(cfg.checkpoint)
    mlflow.set_tracking_uri(tracking_uri(cfg, checkpoint, out_dir))
    parent = cfg.tracking.pretrain_run_id or pretrain_run_id(checkpoint)
    if cfg.tracking.same_run:
        if parent is None:
            raise ValueError(
                "tracking.same_run=true but the training run's MLflow id is unknown: set tracking.pretrain_run_id"
            )
        run = mlflow.start_run(run_id=parent)
    else:
        experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else mlflow.create_experiment(
                cfg.tracking.experiment, artifact_location=(out_dir.resolve() / "mlartifacts").as_uri()
            )
        )
        tags = {"sista.checkpoint": str(checkpoint.resolve()), "sista.data": cfg.data.shards.name}
        if parent is not None:
            tags.update({"sista.pretrain_run_id": parent, "mlflow.parentRunId": parent})
        run = mlflow.start_run(experiment_id=experiment_id, run_name=f"eval-{'-'.join(cfg.tasks)}", tags=tags)
        params = {k: str(v)[:MAX_PARAM_CHARS] for k, v in flatten(cfg).items()}
        items = sorted(params.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))
    try:
        for result in results:
            mlflow.log_metrics(numeric_leaves(result.metrics, f"eval/{result.task}"))
            for figure in result.figures:
                mlflow.log_artifact(str(figure), artifact_path="eval/figures")
        for path in paths.values():
            mlflow.log_artifact(str(path), artifact_path="eval")
        run_id = run.info.run_id
    finally:
        mlflow.end_run()
    log.info("MLflow: logged the evaluation to run %s (%s)", run_id, mlflow.get_tracking_uri())
    return run_id
