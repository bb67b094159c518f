"""Submit SISTA pre-training to SLURM with submitit: one task per GPU, preemption-safe, one MLflow run.

    python launch/slurm_pretrain.py --config configs/pretrain/<name>.yaml \\
        --slurm configs/slurm/<cluster>.yaml [key=value ...] [slurm.key=value ...] [--dry-run | --wait]

``key=value`` overrides go to the training config, ``slurm.key=value`` to the SLURM config.
Inside the job every task exports its rank, local rank, world size and rendezvous address, then
runs ``pipeline.train`` in-process. Before the time limit (or on preemption) the trainer saves a
checkpoint, and the job requeues itself with ``checkpoint.resume=latest`` up to ``max_requeues`` times; every
attempt logs into the same MLflow run and records its SLURM job id there. ``--wait`` waits for the
whole job, requeues included, and exits 1 when it failed or ended without finishing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

import submitit

from launch import pretrain_run
from launch.preemption import PreemptionRelay
from launch.slurm_config import (
    SlurmConfig,
    load_slurm_config,
    parse_job_args,
    split_overrides,
)
from launch.slurm_preflight import preflight
from launch.slurm_submit import log_paths, make_executor, render_sbatch, wait_for
from pipeline import job_env
from pipeline.config import ConfigError, to_yaml
from pipeline.logging_setup import setup_logging

log = logging.getLogger("sista.launch")

RESUME_LATEST = "checkpoint.resume=latest"  # the trainer's key (PretrainConfig.checkpoint.resume)


def run_trainer(config_path: str, overrides: list[str]) -> int:
    """Run ``pipeline.train`` in this process; 0 when it finished or stopped on request, else RuntimeError."""
    from pipeline import train

    try:
        code = train.main(["--config", config_path, *overrides])
    except SystemExit as done:  # argparse / config errors exit
        code = done.code
    if code not in (0, None):  # an exception, not an exit, so that submitit records the failure
        raise RuntimeError(f"pipeline.train exited with code {code} (its error is in this task's log)")
    return 0


def exit_at_once(code: int) -> NoReturn:
    """End this task now with ``code``, its logs flushed, skipping the interpreter's teardown.

    With torch, DeepSpeed and MLflow loaded that teardown (garbage collection, module clean-up) takes
    ~10 s on a loaded machine, and a requeued job restarts only once every task has exited. Call it
    only when the trainer has returned: its checkpoint is complete and its MLflow run ended.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclasses.dataclass
class PretrainJob(submitit.helpers.Checkpointable):
    """The callable every task of the job runs; pickled by submitit, requeued through ``checkpoint()``."""

    config_path: str
    overrides: list[str]
    slurm: SlurmConfig
    mlflow: pretrain_run.RunRef | None
    attempt: int = 0

    def trainer_overrides(self) -> list[str]:
        """The training overrides of this attempt: the job's MLflow run; a requeued attempt resumes from the newest checkpoint.

        Without a checkpoint yet the attempt starts afresh with the first attempt's overrides, so the
        parameters it logs into the (same) MLflow run do not change value.
        """
        overrides = [*self.overrides, *(self.mlflow.overrides() if self.mlflow is not None else [])]
        requeued = self.attempt > 0 or job_env.slurm_restart_count() > 0
        if requeued and pretrain_run.has_checkpoint(pretrain_run.load_train_config(self.config_path, self.overrides)):
            return [*overrides, RESUME_LATEST]
        return overrides

    def __call__(self) -> int:
        """Export this task's distributed environment, record the attempt, train; requeue if preempted.

        A task whose trainer stopped before its end (preemption, ``scancel``, a requeue by the scheduler)
        exits without a result: only an attempt that finishes may report one, so that a client waiting
        for the job (``--wait``) sees the requeued attempt's outcome, or the job's end state when none follows.
        """
        task = job_env.from_submitit(self.slurm.master_port)
        job_env.export(task)
        setup_logging(task.rank, task.world_size, all_ranks=True)  # every rank says where it landed
        host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()  # SLURM's node name, not the OS's
        log.info("job %s attempt %d (SLURM_RESTART_COUNT=%d): rank %d/%d (local %d) on %s, rendezvous %s:%d",
                 task.job_id, self.attempt, job_env.slurm_restart_count(), task.rank, task.world_size,
                 task.local_rank, host, task.master_addr, task.master_port)
        setup_logging(task.rank, task.world_size)
        if self.mlflow is not None and task.rank == 0:
            pretrain_run.record_attempt(self.mlflow, task.job_id)
        with PreemptionRelay() as relay:
            result = run_trainer(self.config_path, self.trainer_overrides())
        if relay.preempted and task.rank == 0:
            try:
                relay.hand_over()  # submitit: checkpoint() -> resubmission pickled -> requeue -> sys.exit
            except SystemExit as requeued:
                exit_at_once(requeued.code if isinstance(requeued.code, int) else 1)
        if relay.unfinished is not None:
            log.warning("job %s rank %d: the trainer stopped before its end (%s) after saving a checkpoint; "
                        "this attempt reports no result", task.job_id, task.rank, relay.unfinished)
            exit_at_once(1)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """The resubmission of this job with ``resume=latest``, or None once ``max_requeues`` are spent.

        submitit calls it on rank 0 when the preemption signal is handed over, i.e. after the trainer
        has saved its checkpoint (see ``launch.preemption``).
        """
        if self.attempt >= self.slurm.max_requeues:
            log.warning("not requeueing: %d requeue(s) done, max_requeues is %d", self.attempt,
                        self.slurm.max_requeues)
            return None
        log.info("requeueing as attempt %d with %s", self.attempt + 1, RESUME_LATEST)
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, attempt=self.attempt + 1))


def build_job(config_path: str, overrides: list[str], slurm: SlurmConfig, open_run: bool = True) -> PretrainJob:
    """The job for a submission, checked to be resumable; with ``open_run`` its MLflow run is opened now."""
    cfg = pretrain_run.load_train_config(config_path, overrides)
    pretrain_run.check_world_size(pretrain_run.resume_point(cfg), slurm.world_size)
    run = pretrain_run.open_run(cfg, config_path, slurm) if open_run else None
    return PretrainJob(str(Path(config_path).resolve()), list(overrides), slurm, run)


def submit(job: PretrainJob, workdir: Path) -> submitit.Job:
    """Submit ``job`` (one task per GPU over the configured nodes) and return the submitit job."""
    executor = make_executor(job.slurm, workdir)
    return executor.submit(job)


def main(argv: list[str] | None = None) -> int:
    """Resolve both configs, then print (``--dry-run``) or submit the pre-training job."""
    setup_logging()
    args = parse_job_args(argv, __doc__.split("\n\n")[0], "training YAML (configs/pretrain/*.yaml)", "print the sbatch script and configs; submit nothing")
    train_overrides, slurm_overrides = split_overrides(args.overrides)
    workdir = Path.cwd()
    try:
        slurm = load_slurm_config(args.slurm, slurm_overrides)
        train_cfg = pretrain_run.load_train_config(args.config, train_overrides)
        point = pretrain_run.resume_point(train_cfg)
        pretrain_run.check_world_size(point, slurm.world_size)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(f"resumes from {point.folder} (step {point.step})" if point else "starts afresh (no checkpoint to resume)")
    if args.dry_run:
        print(f"# sbatch script ({slurm.nodes} node(s) x {slurm.ntasks_per_node} task(s) = {slurm.world_size})")
        print(render_sbatch(slurm, workdir))
        print("# SLURM config (resolved)")
        print(to_yaml(slurm), end="")
        print("# training config (resolved)")
        print(to_yaml(train_cfg), end="")
        return 0
    try:
        preflight(slurm, render_sbatch(slurm, workdir))
        job = build_job(args.config, train_overrides, slurm)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    submitted = submit(job, workdir)
    stdout, stderr = log_paths(submitted)
    print(f"submitted job {submitted.job_id}: {slurm.nodes} node(s) x {slurm.ntasks_per_node} task(s)")
    print(f"logs:   {stdout}\n        {stderr}\n        (task k: replace _0_ by _k_)")
    if job.mlflow is not None:
        print(f"mlflow: run {job.mlflow.run_id} in experiment '{job.mlflow.experiment}' at {job.mlflow.tracking_uri}")
        print(f"        open the UI with: mlflow ui --backend-store-uri {job.mlflow.tracking_uri}")
    if args.wait:
        print(f"waiting for job {submitted.job_id} (through its requeues)", flush=True)
        if wait_for(submitted, "job"):
            return 1
        print(f"done: job {submitted.job_id} finished")
    return 0


if __name__ == "__main__":
    from launch.slurm_pretrain import main as _main  # so pickles name launch.slurm_pretrain, not __main__

    raise SystemExit(_main())
