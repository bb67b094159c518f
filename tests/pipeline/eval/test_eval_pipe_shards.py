"""Evaluation reads remote (``pipe:``) shards as training does, through the local shard cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.shard_mimic import shard_mimic
from pipeline.data.shards import resolve_shards
from pipeline.eval.adapters import load_shard_split
from pipeline.shard_format import ShardFormatError
from tests.data_prep.mimic_layout import build_small_mimic, shard_config


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real sharder output (sha256 and sizes in the manifest) of a six-subject MIMIC layout."""
    base = tmp_path_factory.mktemp("pipe_eval")
    mimic = build_small_mimic(base / "mimic")
    shard_mimic(shard_config(mimic.root, base / "shards", splits=["test"], shard_size=2))
    return base / "shards"


def test_eval_reads_pipe_shards_like_local_ones(shard_set: Path, tmp_path: Path) -> None:
    manifest, template = f"pipe:cat {shard_set}/manifest.json", f"pipe:cat {shard_set}/{{path}}"
    cache = tmp_path / "cache"
    local = load_shard_split(shard_set, "test", uncertain="ignore")
    remote = load_shard_split(manifest, "test", uncertain="ignore", shard_root=template, cache_dir=cache)
    assert remote.ids == local.ids and remote.texts == local.texts and remote.meta == local.meta
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert all(torch.equal(a(), b()) for a, b in zip(remote.loaders, local.loaders))
    # training resolves the same manifest and template to the same shards
    assert len(resolve_shards("test", manifest=manifest, shard_root=template)) == len(list(cache.glob("*.tar")))
    records = json.loads((shard_set / "manifest.json").read_text())["splits"]["test"]["shards"]
    assert sorted(p.name for p in cache.glob("*.tar")) == sorted(f"{r['sha256']}.tar" for r in records)
    # a later run reuses the verified copies: the command is not run again
    again = load_shard_split(manifest, "test", uncertain="ignore", shard_root="pipe:exit 3 {path}", cache_dir=cache)
    assert again.ids == local.ids


def test_a_remote_shard_that_differs_from_the_manifest_is_refused(shard_set: Path, tmp_path: Path) -> None:
    manifest = f"pipe:cat {shard_set}/manifest.json"
    with pytest.raises(ShardFormatError, match="bytes, the manifest says"):
        load_shard_split(manifest, "test", uncertain="ignore", shard_root=f"pipe:head -c 1024 {shard_set}/{{path}}",
                         cache_dir=tmp_path / "cache")
    with pytest.raises(ShardFormatError, match="exited with 3"):
        load_shard_split(manifest, "test", uncertain="ignore", shard_root="pipe:exit 3 {path}", cache_dir=tmp_path / "c2")
    assert not list((tmp_path / "cache").glob("*.tar"))  # nothing half-fetched is kept
    with pytest.raises(ShardFormatError, match="data.shards.shard_root"):
        load_shard_split(manifest, "test", uncertain="ignore", cache_dir=tmp_path / "cache")
