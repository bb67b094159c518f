"""The one MLflow run of a SLURM pre-training job: created at submission, continued by every attempt.

The run is created (status SCHEDULED) when the job is submitted, so its id can be printed at once.
Each task exports ``MLFLOW_TRACKING_URI`` and ``MLFLOW_RUN_ID``; the trainer's ``mlflow.start_run()``
attaches to that run on a fresh start, and a resumed trainer takes the same id from its
checkpoint. Rank 0 of every attempt records the SLURM job id as ``slurm.job_id.<attempt>``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import flatten, load_config
from pipeline.train.config import PretrainConfig

ATTEMPT_PARAM = "slurm.job_id."


@dataclasses.dataclass(frozen=True)
class RunRef:
    """Where the run lives and its id."""

    tracking_uri: str
    experiment: str
    run_id: str

    def export(self) -> None:
        """Point this process's MLflow (and the trainer in it) at the run."""
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        os.environ["MLFLOW_RUN_ID"] = self.run_id


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> PretrainConfig:
    """The resolved training config (``configs/pretrain/*.yaml`` + overrides)."""
    return load_config(PretrainConfig, path, overrides)


def tracking_uri(cfg: PretrainConfig) -> str:
    """The trainer's tracking URI: ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else sqlite under the run dir."""
    from pipeline.train.tracking import resolve_tracking_uri

    return resolve_tracking_uri(cfg)


def create_run(config_path: str | Path, overrides: Sequence[str], slurm: object) -> RunRef | None:
    """Create the job's MLflow run (SCHEDULED, tagged with the SLURM request); None when tracking is off."""
    from mlflow.tracking import MlflowClient

    cfg = load_train_config(config_path, overrides)
    if not cfg.tracking.enabled:
        return None
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.tracking.experiment)
    tags = {f"slurm.{k}": str(v) for k, v in flatten(slurm).items()}
    tags["slurm.config_path"] = str(Path(config_path).resolve())
    run = client.create_run(experiment_id, run_name=cfg.run.name, tags=tags)
    client.update_run(run.info.run_id, status="SCHEDULED")
    return RunRef(uri, cfg.tracking.experiment, run.info.run_id)


def record_attempt(run: RunRef, job_id: str) -> int:
    """Log this attempt's SLURM job id into the run (param ``slurm.job_id.<n>``, tags); returns n."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run.tracking_uri)
    params = client.get_run(run.run_id).data.params
    attempt = sum(1 for key in params if key.startswith(ATTEMPT_PARAM))
    client.log_param(run.run_id, f"{ATTEMPT_PARAM}{attempt}", job_id)
    client.set_tag(run.run_id, "slurm.job_id", job_id)
    client.set_tag(run.run_id, "slurm.attempts", str(attempt + 1))
    return attempt
