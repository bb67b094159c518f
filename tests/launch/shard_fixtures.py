"""The sharding setup every launch test uses on the session's phantom set."""

from __future__ import annotations

from pathlib import Path

from data_prep.shard_config import ShardConfig
from pipeline.config import load_config

PHANTOM_YAML = Path(__file__).resolve().parents[2] / "configs" / "data" / "phantom.yaml"


def phantom_shard_config(phantom_root: Path, out: Path) -> ShardConfig:
    """Small shards, one worker, the phantom defaults."""
    overrides = [f"mimic_root={phantom_root}", f"out={out}", "shard_size=8", "workers=1"]
    return load_config(ShardConfig, PHANTOM_YAML, overrides)
