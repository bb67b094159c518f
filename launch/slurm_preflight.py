"""Refuse at submission what a real SLURM would let pend forever or kill early: ask the scheduler first."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from launch.slurm_config import SlurmConfig

# SLURM checks signal times about every 30 s, so ``--signal=USR2@N`` can arrive up to ~60 s early.
SIGNAL_EARLY_S = 60
# The least an attempt must be able to work before its preemption signal.
MIN_WORK_S = 60


def check_signal_margin(cfg: SlurmConfig) -> None:
    """Refuse a time limit that leaves no work time before USR2 (``signal_delay_s`` + up to 60 s early)."""
    needed = cfg.signal_delay_s + SIGNAL_EARLY_S + MIN_WORK_S
    if cfg.time_minutes * 60 < needed:
        raise ValueError(
            f"time {cfg.time!r} ({cfg.time_minutes * 60} s) is too close to signal_delay_s={cfg.signal_delay_s}: "
            f"USR2 may arrive up to {SIGNAL_EARLY_S} s earlier than that, before the job has started its work; "
            f"set time >= {-(-needed // 60)} minutes or lower signal_delay_s"
        )


def check_satisfiable(sbatch_script: str, job_name: str) -> None:
    """Refuse a request the cluster can never meet (memory, CPUs, GPUs, partition) via ``sbatch --test-only``."""
    if shutil.which("sbatch") is None:
        raise ValueError("sbatch is not on PATH: submit from a SLURM login node (or use executor: local)")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="sista-preflight-") as script:
        script.write(sbatch_script)
        script.flush()
        done = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True, text=True, cwd=Path.cwd())
    if done.returncode != 0:
        reason = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise ValueError(f"SLURM refuses job {job_name!r}: the partition can never satisfy it ({reason}); "
                         f"lower the request (slurm.mem_gb, slurm.cpus_per_task, slurm.gpus_per_node, slurm.nodes) "
                         f"or pick another slurm.partition")


def preflight(cfg: SlurmConfig, sbatch_script: str) -> None:
    """Every submission-time check of ``cfg`` (the scheduler is asked only for the ``slurm`` executor)."""
    check_signal_margin(cfg)
    if cfg.executor == "slurm":
        check_satisfiable(sbatch_script, cfg.job_name)
