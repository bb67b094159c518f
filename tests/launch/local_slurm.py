"""The session's throw-away SLURM cluster (launch/local_slurm/cluster.sh), for tests marked ``slurm``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CLUSTER = Path(__file__).resolve().parents[2] / "launch" / "local_slurm" / "cluster.sh"


def start_cluster(state: Path) -> dict[str, str]:
    """Start the cluster with its state in ``state``; returns its environment, or skips saying why."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (daemons, /etc/hosts)")
    env = {**os.environ, "SISTA_SLURM_STATE": str(state)}
    done = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"local SLURM cluster did not start: {(done.stderr or done.stdout).strip()[-500:]}")
    return {"SLURM_CONF": str(state / "etc" / "slurm.conf")}


def stop_cluster(state: Path) -> None:
    """Stop what ``start_cluster`` started and undo its /etc/hosts line."""
    subprocess.run([str(CLUSTER), "down"], capture_output=True, env={**os.environ, "SISTA_SLURM_STATE": str(state)},
                   timeout=120, check=False)
