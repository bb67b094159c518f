"""Shared by the launch tests: one single-process sharding of the session's phantom set."""

from __future__ import annotations

from pathlib import Path

import pytest
from shard_fixtures import phantom_shard_config


@pytest.fixture(scope="session")
def phantom_shards(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(shard folder, manifest) of one single-process run over the phantom set."""
    from data_prep.shard_mimic import shard_mimic

    out = tmp_path_factory.mktemp("launch_shards")
    return out, shard_mimic(phantom_shard_config(phantom_root, out))
