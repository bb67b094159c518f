"""Evaluation reads remote (``pipe:``) shards as training does, through the local shard cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.shard_mimic import shard_mimic
from pipeline.config import ConfigError, load_config
from pipeline.data.shards import resolve_shards
from pipeline.eval.adapters import load_shard_split
from pipeline.eval.config import EvalConfig
from pipeline.eval.context import EvalContext
from pipeline.shard_format import ShardFormatError, WindowSettings
from tests.data_prep.mimic_layout import REPO, build_small_mimic, shard_config


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


def _context(tmp_path: Path, *overrides: str) -> EvalContext:
    """An evaluation context over configs/eval/base.yaml (no model: only the shard settings are used)."""
    from pipeline.train.config import PretrainConfig
    from pipeline.train.export import describe_export

    cfg = load_config(EvalConfig, REPO / "configs" / "eval" / "base.yaml", ["checkpoint=unused", *overrides])
    trained = load_config(PretrainConfig, REPO / "configs" / "pretrain" / "tiny.yaml", ["data.manifest=null"])
    export = describe_export(trained, None, None, None, tmp_path, None)  # no window recorded: the manifest's is used
    return EvalContext(cfg=cfg, model=None, tokenizer=None, transform=None, device=torch.device("cpu"), out_dir=tmp_path,
                       export=export)


def test_dicom_sets_are_windowed_as_the_shards_record(tmp_path: Path) -> None:
    """RSNA's films use the window the sharder recorded in the manifest, not a copy of its defaults."""
    mimic = build_small_mimic(tmp_path / "mimic", subjects=4)
    shard_mimic(shard_config(mimic.root, tmp_path / "dicom", splits=["test"], **{"window.percentile_low": 2.0}))
    ctx = _context(tmp_path, f"data.shards.root={tmp_path / 'dicom'}")
    assert ctx.dicom_window() == WindowSettings(use_file_voi=True, percentile_low=2.0, percentile_high=99.5)
    template = f"pipe:cat {tmp_path / 'dicom'}/{{path}}"
    remote = _context(tmp_path, f"data.shards.manifest=pipe:cat {tmp_path / 'dicom' / 'manifest.json'}",
                      f"data.shards.shard_root={template}", f"data.shards.cache_dir={tmp_path / 'cache'}")
    assert remote.dicom_window() == ctx.dicom_window() and remote.shard_split("test").ids == ctx.shard_split("test").ids
    manifest = json.loads((tmp_path / "dicom" / "manifest.json").read_text())
    manifest["image"]["window"] = None  # as for shards made from MIMIC-CXR-JPG
    (tmp_path / "dicom" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="records no DICOM window"):
        ctx.dicom_window()
