"""Turning a ``SlurmConfig`` into a submitit executor, or into the sbatch script it would submit."""

from __future__ import annotations

import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from launch.slurm_config import SlurmConfig, local_parameters, submitit_parameters
from launch.slurm_state import QueueJob


def job_folder(cfg: SlurmConfig, workdir: Path) -> Path:
    """The absolute submitit folder (logs, pickles, sbatch files); ``%j`` becomes the job id."""
    folder = Path(cfg.log_dir).expanduser()
    return folder if folder.is_absolute() else workdir / folder


def python_command(cfg: SlurmConfig) -> str:
    """The shell command that starts Python inside the job (a container wrapper, or this interpreter)."""
    return cfg.python if cfg.python else shlex.quote(sys.executable)


class SlurmExecutor(submitit.SlurmExecutor):
    """submitit's ``SlurmExecutor`` whose job arrays keep the configured ``python`` command.

    submitit builds a fresh executor for an array and forgets ``python`` there, so an array would
    start the login node's interpreter instead of, e.g., the container's. Its jobs poll their state
    without accounting too (``launch.slurm_state``).
    """

    job_class = QueueJob

    def _internal_process_submissions(
        self, delayed_submissions: list[submitit.helpers.DelayedSubmission]
    ) -> list[submitit.Job[Any]]:
        if len(delayed_submissions) == 1:
            return super()._internal_process_submissions(delayed_submissions)
        folder = submitit.core.utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickles = []
        for delayed in delayed_submissions:
            path = folder / f"{uuid.uuid4().hex}.pkl"
            delayed.set_timeout(self.parameters["time"], self.max_num_timeout)
            delayed.dump(path)
            pickles.append(path)
        array = SlurmExecutor(self.folder, self.max_num_timeout, python=self.python)
        array.update_parameters(**self.parameters)
        array.parameters["map_count"] = len(delayed_submissions)
        first = array._submit_command(array._submitit_command_str)
        jobs: list[submitit.Job[Any]] = []
        for index, path in enumerate(pickles):
            job = self.job_class(self.folder, f"{first.job_id}_{index}", tasks=list(range(first.num_tasks)))
            job.paths.move_temporary_file(path, "submitted_pickle")
            jobs.append(job)
        return jobs


def make_executor(cfg: SlurmConfig, workdir: Path, **extra: Any) -> submitit.Executor:
    """A submitit executor (``SlurmExecutor`` or ``LocalExecutor``) for ``cfg``; ``extra`` adds sbatch options."""
    folder = job_folder(cfg, workdir)
    if cfg.executor == "slurm":
        executor: submitit.Executor = SlurmExecutor(folder, max_num_timeout=cfg.max_requeues, python=python_command(cfg))
        executor.update_parameters(**submitit_parameters(cfg, workdir), **extra)
    else:
        executor = submitit.LocalExecutor(folder, max_num_timeout=cfg.max_requeues, python=python_command(cfg))
        executor.update_parameters(**local_parameters(cfg))
    return executor


def render_sbatch(cfg: SlurmConfig, workdir: Path, *, array_size: int | None = None, **extra: Any) -> str:
    """The sbatch script submitit writes for ``cfg`` (``array_size`` for a job array), without submitting."""
    folder = job_folder(cfg, workdir)
    command = " ".join([python_command(cfg), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    params = {**submitit_parameters(cfg, workdir), **extra}
    if array_size is not None and array_size > 1:
        params["map_count"] = array_size
        params["array_parallelism"] = cfg.array_parallelism
    return _make_sbatch_string(command=command, folder=folder, **params)


def log_paths(job: submitit.Job) -> tuple[Path, Path]:
    """The stdout and stderr files of task 0 of ``job`` (the other tasks' differ only in the task number)."""
    return job.paths.stdout, job.paths.stderr


def wait_for(job: submitit.Job, what: str) -> int:
    """Wait for every task of ``job``, through its requeues; 0 when it succeeded, else 1 after printing why not.

    ``what`` names the job in the message (e.g. "merge job"). A job that ended without a result (cancelled,
    killed, stopped on a signal and not requeued) fails too.
    """
    try:
        job.results()
    except Exception as err:  # submitit re-raises the job's error, whatever its type, or says it left no result
        print(f"{what} {job.job_id} failed: {err}", file=sys.stderr)
        return 1
    return 0
