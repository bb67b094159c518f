"""The training run seen from the launcher: its resolved config, its folders and its one MLflow run.

The MLflow run of a SLURM job is created at submission and continued by every attempt.

The run is created (status SCHEDULED) when the job is submitted, so its id can be printed at once;
a job that will resume from a checkpoint continues that checkpoint's run instead.
Each task exports ``MLFLOW_TRACKING_URI`` and ``MLFLOW_RUN_ID``; the trainer's ``mlflow.start_run()``
attaches to that run on a fresh start, and a resumed trainer takes the same id from its
checkpoint. Rank 0 of every attempt records the SLURM job id as ``slurm.job_id.<attempt>``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import flatten, load_config
from pipeline.train.config import PretrainConfig

ATTEMPT_PARAM = "slurm.job_id."
RANK0_STATE = "trainer_rank00000.json"  # the trainer's per-rank state file (pipeline.train.checkpoint)


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


def run_dir(cfg: PretrainConfig) -> Path:
    """The trainer's run folder (``run.output_dir/run.name``, relative to the job's working directory)."""
    return Path(cfg.run.output_dir) / cfg.run.name


def checkpoint_dir(cfg: PretrainConfig) -> Path:
    """Where the trainer keeps its checkpoints (``checkpoint.dir``, else ``<run dir>/checkpoints``)."""
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir(cfg) / "checkpoints"


def has_checkpoint(cfg: PretrainConfig) -> bool:
    """Whether the trainer would find a complete checkpoint to resume from."""
    from pipeline.train.checkpoint import complete_checkpoints

    return bool(complete_checkpoints(checkpoint_dir(cfg)))


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a job would resume from, as its files describe it."""

    folder: Path
    step: int
    world_size: int
    mlflow_run_id: str | None


def resume_point(cfg: PretrainConfig) -> ResumePoint | None:
    """The checkpoint ``checkpoint.resume`` points at (None: a fresh start), read from the trainer's files."""
    from pipeline.train.checkpoint import COMPLETE, find_resume_point

    folder = find_resume_point(checkpoint_dir(cfg), cfg.checkpoint.resume)
    if folder is None:
        return None
    marker = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))
    state = json.loads((folder / RANK0_STATE).read_text(encoding="utf-8"))["state"]
    return ResumePoint(folder, int(marker["step"]), int(marker["world_size"]), state.get("mlflow_run_id"))


def check_world_size(point: ResumePoint | None, world_size: int) -> None:
    """Refuse a job that could not resume: the trainer needs the world size that wrote the checkpoint."""
    if point is not None and point.world_size != world_size:
        raise ValueError(
            f"{point.folder} was written by {point.world_size} ranks but this job has {world_size} "
            f"(nodes x tasks per node); submit with that many tasks, or set checkpoint.resume=null to start afresh"
        )


def open_run(cfg: PretrainConfig, config_path: str | Path, slurm: object) -> RunRef | None:
    """The job's MLflow run: the resumed checkpoint's run, else a new one (SCHEDULED); None when tracking is off."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline.train.tracking import tracking_uri

    if not cfg.tracking.enabled:
        return None
    folder = run_dir(cfg)
    uri = tracking_uri(cfg.tracking, folder)
    client = MlflowClient(uri)
    tags = {f"slurm.{k}": str(v) for k, v in flatten(slurm).items()}
    tags["slurm.config_path"] = str(Path(config_path).resolve())
    point = resume_point(cfg)
    if point is not None and point.mlflow_run_id is not None:
        try:
            client.get_run(point.mlflow_run_id)
        except MlflowException as err:
            raise ValueError(f"{point.folder} continues MLflow run {point.mlflow_run_id}, which {uri} does not hold: "
                             f"set tracking.uri to the store it was logged to") from err
        for key, value in tags.items():
            client.set_tag(point.mlflow_run_id, key, value)
        return RunRef(uri, cfg.tracking.experiment, point.mlflow_run_id)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:  # as the trainer would create it: artifacts next to the run
        artifacts = (folder / "mlartifacts").resolve().as_uri()
        experiment_id = client.create_experiment(cfg.tracking.experiment, artifact_location=artifacts)
    else:
        experiment_id = experiment.experiment_id
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
