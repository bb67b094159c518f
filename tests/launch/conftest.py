"""Shared by the launch tests: one single-process sharding of the session's phantom set."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from shard_fixtures import phantom_shard_config


@pytest.fixture(scope="session")
def phantom_shards(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(shard folder, manifest) of one single-process run over the phantom set."""
    from data_prep.shard_mimic import shard_mimic

    out = tmp_path_factory.mktemp("launch_shards")
    return out, shard_mimic(phantom_shard_config(phantom_root, out))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """The local two-node SLURM (node1, node2) for the session: its environment; skips when it cannot start."""
    from local_slurm import CLUSTER, start_cluster, stop_cluster

    state = Path(os.environ.get("SISTA_SLURM_STATE", Path(tempfile.gettempdir()) / "sista-local-slurm"))
    already_up = subprocess.run([str(CLUSTER), "status"], capture_output=True,
                                env={**os.environ, "SISTA_SLURM_STATE": str(state)}).returncode == 0
    env = start_cluster(state)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env
    if not already_up:  # a cluster someone else started stays up
        stop_cluster(state)
