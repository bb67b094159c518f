"""MLflow tracking (rank 0 only): params, per-step metrics, artifacts and patch-word alignment figures."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipeline.config import flatten
from pipeline.train.config import TrackingConfig

log = logging.getLogger(__name__)
MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
PARAMS_PER_CALL = 100


def tracking_uri(cfg: TrackingConfig, run_dir: Path) -> str:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<run dir>/mlflow.db``."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def ensure_experiment(cfg: TrackingConfig, run_dir: Path) -> str:
    """The id of experiment ``tracking.experiment`` in the store; a new one keeps its artifacts in ``<run dir>/mlartifacts``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(cfg, run_dir))
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (run_dir / "mlartifacts").resolve().as_uri()
    return client.create_experiment(cfg.experiment, artifact_location=artifacts)


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    return f"mlflow ui --backend-store-uri {uri}"


class Tracker:
    """An MLflow run on rank 0; on other ranks (or when disabled) every call is a no-op."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, is_main: bool) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.active = cfg.enabled and is_main
        self.uri = tracking_uri(cfg, run_dir)
        self.run_id: str | None = None
        self._mlflow: Any = None

    def start(self, run_name: str, resume_run_id: str | None, config: Any) -> str | None:
        """Continue ``resume_run_id``, else start ``tracking.run_id`` or a new run and log the flattened config as params."""
        if not self.active:
            return resume_run_id
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(self.uri)
        experiment_id = ensure_experiment(self.cfg, self.run_dir)
        if resume_run_id is not None and mlflow.tracking.MlflowClient().search_runs(
            [experiment_id], f"attributes.run_id = '{resume_run_id}'"
        ):
            run = mlflow.start_run(run_id=resume_run_id)
            log.info("continuing MLflow run %s", resume_run_id)
        else:
            if resume_run_id is not None:
                log.warning("MLflow run %s is not in %s: starting %s", resume_run_id, self.uri,
                            f"run {self.cfg.run_id}" if self.cfg.run_id else "a new run")
            try:
                run = mlflow.start_run(run_id=self.cfg.run_id, experiment_id=experiment_id, run_name=run_name)
            except mlflow.exceptions.MlflowException as err:
                if self.cfg.run_id is None:
                    raise
                raise ValueError(f"tracking.run_id={self.cfg.run_id}: no such run in {self.uri} ({err.message})") from err
            params = {k: str(v)[:MAX_PARAM_CHARS] for k, v in flatten(config).items()}
            items = sorted(params.items())
            for i in range(0, len(items), PARAMS_PER_CALL):
                mlflow.log_params(dict(items[i : i + PARAMS_PER_CALL]))
        self.run_id = run.info.run_id
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at ``step``."""
        if self.active and metrics:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Copy a file into the run's artifacts."""
        if self.active:
            self._mlflow.log_artifact(str(path), artifact_path=folder)

    def log_figure(self, figure: Any, name: str) -> None:
        """Store a matplotlib figure as a PNG artifact."""
        if self.active:
            self._mlflow.log_figure(figure, name)

    def end(self, status: str = "FINISHED") -> None:
        """End the run (FINISHED, KILLED after a stop signal, FAILED)."""
        if self.active and self._mlflow is not None and self._mlflow.active_run() is not None:
            self._mlflow.end_run(status=status)
