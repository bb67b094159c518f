"""The training run seen from the launcher: its resolved config, its checkpoint and its one MLflow run.

The MLflow run of a SLURM job is created at submission and continued by every attempt.

The run is created (status SCHEDULED) when the job is submitted, so its id can be printed at once;
a job that will resume from a checkpoint continues that checkpoint's run instead.
Every attempt passes the run to the trainer as ``tracking.uri`` / ``tracking.run_id`` overrides: a fresh
trainer logs into that run, a resumed one continues its checkpoint's run (the same one).
Rank 0 of every attempt records the SLURM job id as ``slurm.job_id.<attempt>``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from pipeline import job_env
from pipeline.config import flatten, load_config
from pipeline.train.checkpoint import CheckpointInfo, complete_checkpoints, describe, resume_checkpoint
from pipeline.train.config import PretrainConfig, checkpoint_dir, run_dir

ATTEMPT_PARAM = "slurm.job_id."


@dataclasses.dataclass(frozen=True)
class RunRef:
    """Where the run lives and its id."""

    tracking_uri: str
    experiment: str
    run_id: str

    def overrides(self) -> list[str]:
        """The trainer's config overrides that make it log into this run (values quoted: YAML keeps them strings)."""
        return [f"tracking.uri={json.dumps(self.tracking_uri)}", f"tracking.run_id={json.dumps(self.run_id)}"]


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> PretrainConfig:
    """The resolved training config (``configs/pretrain/*.yaml`` + overrides)."""
    return load_config(PretrainConfig, path, overrides)


def has_checkpoint(cfg: PretrainConfig) -> bool:
    """Whether the trainer would find a complete checkpoint to resume from."""
    return bool(complete_checkpoints(checkpoint_dir(cfg)))


def resume_point(cfg: PretrainConfig) -> CheckpointInfo | None:
    """The checkpoint the trainer of ``cfg`` would resume from (None: a fresh start)."""
    folder = resume_checkpoint(cfg)
    return describe(folder) if folder is not None else None


def check_world_size(point: CheckpointInfo | None, world_size: int) -> None:
    """Refuse a job that could not resume: the trainer needs the world size that wrote the checkpoint."""
    if point is not None:
        job_env.require_world(point.world_size, str(point.folder),
                              "submit with that many tasks (nodes x tasks per node), or set "
                              "checkpoint.resume=null to start afresh", actual=world_size)


def open_run(cfg: PretrainConfig, config_path: str | Path, slurm: object) -> RunRef | None:
    """The job's MLflow run: the resumed checkpoint's, else ``tracking.run_id``, else a new one (SCHEDULED); None: tracking off."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline.train.tracking import ensure_experiment, tracking_uri

    if not cfg.tracking.enabled:
        return None
    folder = run_dir(cfg)
    uri = tracking_uri(cfg.tracking, folder)
    client = MlflowClient(uri)
    tags = {f"slurm.{k}": str(v) for k, v in flatten(slurm).items()}
    tags["slurm.config_path"] = str(Path(config_path).resolve())
    point = resume_point(cfg)
    # the run the trainer would log into: its checkpoint's, else tracking.run_id (see Tracker.start)
    if point is not None and point.mlflow_run_id is not None:
        existing, source = point.mlflow_run_id, f"{point.folder} continues MLflow run"
    else:
        existing, source = cfg.tracking.run_id, "tracking.run_id names MLflow run"
    if existing is not None:
        try:
            client.get_run(existing)
        except MlflowException as err:
            raise ValueError(f"{source} {existing}, which {uri} does not hold: "
                             f"set tracking.uri to the store it was logged to") from err
        for key, value in tags.items():
            client.set_tag(existing, key, value)
        return RunRef(uri, cfg.tracking.experiment, existing)
    run = client.create_run(ensure_experiment(cfg.tracking, folder), run_name=cfg.run.name, tags=tags)
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
