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
from pipeline.eval.context import TaskResult
from pipeline.models.export_format import Provenance

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


def _store_reachable(uri: str) -> bool:
    """Whether a tracking store exists without creating it (a sqlite file, a file store folder), or answers (servers)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).is_file()
    if uri.startswith("file:") or "://" not in uri:
        return Path(uri.removeprefix("file://").removeprefix("file:")).is_dir()
    from mlflow.tracking import MlflowClient

    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
        return True
    except Exception:  # noqa: BLE001 - any failure means we cannot log there
        return False
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _run_exists(uri: str, run_id: str) -> bool:
    """Whether ``run_id`` is in the store at ``uri``."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - deleted, never there, or the store failed
        return False


def choose_store(cfg: EvalConfig, provenance: Provenance, out_dir: Path) -> tuple[str, str | None]:
    """(tracking URI, the training run to nest under or None).

    ``tracking.uri``, else MLFLOW_TRACKING_URI, else the export's training store when it is still
    there, else a sqlite store in ``out_dir``. The training run is the parent only where it exists.
    """
    parent = cfg.tracking.pretrain_run_id or provenance.run_id
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None and provenance.tracking_uri and _store_reachable(provenance.tracking_uri):
        uri = provenance.tracking_uri
    if uri is None:
        uri = f"sqlite:///{out_dir.resolve() / 'mlflow.db'}"
        if provenance.tracking_uri:
            log.warning("the training run's MLflow store %s cannot be reached: logging to %s",
                        provenance.tracking_uri, uri)
    if parent is not None and not (_store_reachable(uri) and _run_exists(uri, parent)):
        log.warning("MLflow run %s is not in %s: a new run tagged with the export's provenance", parent, uri)
        parent = None
    return uri, parent


def provenance_tags(provenance: Provenance) -> dict[str, str]:
    """The export's provenance as ``sista.pretrain_*`` tags (unknown fields left out)."""
    fields = {"run_id": provenance.run_id, "tracking_uri": provenance.tracking_uri, "step": provenance.step,
              "git_commit": provenance.git_commit, "config_hash": provenance.config_hash}
    return {f"sista.pretrain_{k}": str(v) for k, v in fields.items() if v is not None}


def log_to_mlflow(cfg: EvalConfig, results: list[TaskResult], paths: dict[str, Path], out_dir: Path,
                  provenance: Provenance) -> str | None:
    """Record metrics, tables, figures and the config in MLflow; return the run id.

    A new run carries the export's provenance as tags (``sista.pretrain_run_id``, ...) and, where the
    training run is in the store, ``mlflow.parentRunId`` (the UI nests it under that run); with
    ``tracking.same_run`` the metrics go into the training run itself under ``eval/<task>/...``, or,
    when that run cannot be found, into a new run as above.
    """
    if not cfg.tracking.enabled:
        return None
    import mlflow

    checkpoint = Path(cfg.checkpoint)
    uri, parent = choose_store(cfg, provenance, out_dir)
    mlflow.set_tracking_uri(uri)
    if cfg.tracking.same_run and parent is not None:
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
        tags = {"sista.checkpoint": str(checkpoint.resolve()), "sista.data": cfg.data.shards.name,
                **provenance_tags(provenance)}
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
