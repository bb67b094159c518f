"""The SLURM resource request (``configs/slurm/*.yaml``) and its translation into submitit parameters.

One YAML file describes a cluster and a job shape; ``slurm.key=value`` on the command line overrides
any key. Defaults live in the YAML files, not here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pipeline.config import ConfigError, load_config

SLURM_PREFIX = "slurm."


@dataclasses.dataclass
class SlurmConfig:
    """What to ask the scheduler for, and how to start Python inside the allocation."""

    executor: Literal["slurm", "local"]
    job_name: str
    log_dir: str
    partition: Optional[str]
    account: Optional[str]
    qos: Optional[str]
    time: Union[str, int]
    nodes: int
    gpus_per_node: int
    tasks_per_node: Optional[int]
    cpus_per_task: int
    mem_gb: Optional[float]
    constraint: Optional[str]
    exclusive: bool
    signal_delay_s: int
    max_requeues: int
    master_port: Optional[int]
    python: Optional[str]
    setup: list[str]
    srun_args: list[str]
    extra_sbatch: dict[str, Any]
    array_tasks: int
    array_parallelism: int

    def __post_init__(self) -> None:
        parse_time_minutes(self.time)  # fail at load time, naming the value
        for name in ("nodes", "cpus_per_task", "array_tasks", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0 or self.max_requeues < 0 or self.signal_delay_s < 0:
            raise ValueError("gpus_per_node, max_requeues and signal_delay_s must be >= 0")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise ValueError(f"tasks_per_node must be >= 1 or null, got {self.tasks_per_node}")
        if self.tasks_per_node is None and self.gpus_per_node == 0:
            raise ValueError("tasks_per_node: null means one task per GPU, but gpus_per_node is 0")
        if self.executor == "local" and self.nodes != 1:
            raise ValueError("executor 'local' runs on this machine only: nodes must be 1")

    @property
    def ntasks_per_node(self) -> int:
        """Tasks per node: one per GPU unless ``tasks_per_node`` says otherwise."""
        return self.tasks_per_node if self.tasks_per_node is not None else self.gpus_per_node

    @property
    def world_size(self) -> int:
        """Total number of tasks (training processes) of the job."""
        return self.nodes * self.ntasks_per_node

    @property
    def time_minutes(self) -> int:
        """The time limit in whole minutes."""
        return parse_time_minutes(self.time)


_TIME_FORMATS = (
    (re.compile(r"^(\d+)$"), ("m",)),
    (re.compile(r"^(\d+):(\d{1,2})$"), ("m", "s")),
    (re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})$"), ("h", "m", "s")),
    (re.compile(r"^(\d+)-(\d+)$"), ("d", "h")),
    (re.compile(r"^(\d+)-(\d+):(\d{1,2})$"), ("d", "h", "m")),
    (re.compile(r"^(\d+)-(\d+):(\d{1,2}):(\d{1,2})$"), ("d", "h", "m", "s")),
)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_time_minutes(text: str | int) -> int:
    """Minutes (rounded up, >= 1) of a SLURM time string: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S."""
    value = str(text).strip()
    for pattern, units in _TIME_FORMATS:
        match = pattern.match(value)
        if match:
            seconds = sum(int(part) * _SECONDS[unit] for part, unit in zip(match.groups(), units))
            minutes = -(-seconds // 60)
            if minutes < 1:
                break
            return minutes
    raise ValueError(f"time {text!r} is not a SLURM time limit (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S), >= 1 minute")


def parse_job_args(argv: list[str] | None, description: str, job_config_help: str, dry_run_help: str) -> argparse.Namespace:
    """The command line every SLURM launcher takes: job config, SLURM config, dry run, ``[slurm.]key=value``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help=job_config_help)
    parser.add_argument("--slurm", required=True, help="SLURM YAML (configs/slurm/*.yaml)")
    parser.add_argument("--dry-run", action="store_true", help=dry_run_help)
    parser.add_argument("--wait", action="store_true", help="wait for the whole job; exit non-zero when it failed")
    parser.add_argument("overrides", nargs="*", metavar="key=value | slurm.key=value", help="config overrides")
    return parser.parse_args(argv)


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split command-line overrides into (job overrides, SLURM overrides without the ``slurm.`` prefix)."""
    job, slurm = [], []
    for text in overrides:
        if text.startswith(SLURM_PREFIX):
            slurm.append(text[len(SLURM_PREFIX) :])
        else:
            job.append(text)
    return job, slurm


def load_slurm_config(path: str | Path, overrides: Sequence[str] = ()) -> SlurmConfig:
    """Load a SLURM YAML with its ``base`` chain plus overrides (keys without the ``slurm.`` prefix)."""
    try:
        return load_config(SlurmConfig, path, overrides)
    except ConfigError as err:
        raise ConfigError(f"SLURM config: {err}") from err


def submitit_parameters(cfg: SlurmConfig, workdir: Path) -> dict[str, Any]:
    """The ``SlurmExecutor.update_parameters`` keywords for ``cfg`` (sbatch option names)."""
    params: dict[str, Any] = {
        "job_name": cfg.job_name,
        "time": cfg.time_minutes,
        "nodes": cfg.nodes,
        "ntasks_per_node": cfg.ntasks_per_node,
        "cpus_per_task": cfg.cpus_per_task,
        "signal_delay_s": cfg.signal_delay_s,
        "setup": list(cfg.setup),
        "srun_args": list(cfg.srun_args),
        # The job starts in the directory it was submitted from; relative config paths rely on it.
        "additional_parameters": {"chdir": str(workdir), **cfg.extra_sbatch},
    }
    if cfg.gpus_per_node:
        params["gpus_per_node"] = cfg.gpus_per_node
    if cfg.mem_gb is not None:
        params["mem"] = _mem_string(cfg.mem_gb)
    if cfg.exclusive:
        params["exclusive"] = True
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(cfg, name) is not None:
            params[name] = getattr(cfg, name)
    return params


def local_parameters(cfg: SlurmConfig) -> dict[str, Any]:
    """The ``LocalExecutor.update_parameters`` keywords for ``cfg`` (one node, this machine)."""
    params: dict[str, Any] = {
        "timeout_min": cfg.time_minutes,
        "tasks_per_node": cfg.ntasks_per_node,
        "gpus_per_node": cfg.gpus_per_node,
        "signal_delay_s": cfg.signal_delay_s,
    }
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    return params


def _mem_string(mem_gb: float) -> str:
    """SLURM ``--mem`` value for ``mem_gb`` gigabytes (0 asks for all of a node's memory)."""
    if mem_gb == 0:
        return "0"
    return f"{int(mem_gb)}G" if float(mem_gb).is_integer() else f"{round(mem_gb * 1024)}M"
