"""Unreadable and truncated shards: bounded retries with a message, rate-limited warnings, incomplete samples skipped."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import pytest
from test_loader import data_config, epoch_batches, keys, tokenizer

from pipeline.data import Collator, DataPosition, build_epoch_loader
from pipeline.data.reading import NoReadableShard, RateLimitedLog
from pipeline.data.shards import resolve_shards

SHARDER_ORDER = ("png", "json", "txt", "report_emb.npy")  # the sharder appends the embedding last


def _rewrite_in_sharder_order(shard: Path) -> list[int]:
    """Rewrite ``shard`` with each sample's members in the sharder's order; returns each member's data offset."""
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    names = sorted({n.split(".", 1)[0] for n in members})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key in names:
            for ext in SHARDER_ORDER:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(members[f"{key}.{ext}"])
                tar.addfile(info, io.BytesIO(members[f"{key}.{ext}"]))
    shard.write_bytes(buf.getvalue())
    with tarfile.open(shard) as tar:
        return [m.offset_data for m in tar.getmembers()]


def test_truncated_shard_skips_the_incomplete_sample(tiny_shards, caplog):
    """A tar cut inside the last sample's report_emb.npy: that sample is skipped and counted, training data flows."""
    manifest = tiny_shards(16, 4)
    shard = manifest.parent / "train" / "train-000003.tar"
    offsets = _rewrite_in_sharder_order(shard)
    shard.write_bytes(shard.read_bytes()[: offsets[-1] + 10])  # cut in the middle of d00015.report_emb.npy
    cfg = data_config(manifest, epoch_samples=12, batch_size=3)
    batches, loader = epoch_batches(cfg)
    assert len(batches) == 4 and "d00015" not in keys(batches)
    assert loader.corrupt_total >= 1
    assert any("d00015" in r.getMessage() and "report_emb.npy" in r.getMessage() for r in caplog.records)


def test_every_shard_unreadable_stops_with_the_shards_named(tiny_shards, caplog):
    """All shards garbage: a bounded number of passes, then NoReadableShard naming the shards; few warnings."""
    manifest = tiny_shards(16, 4)
    for shard in (manifest.parent / "train").glob("*.tar"):
        shard.write_bytes(b"\x00garbage" * 100)
    cfg = data_config(manifest, num_workers=1)
    with caplog.at_level(logging.WARNING), pytest.raises(NoReadableShard) as info:
        epoch_batches(cfg)
    message = str(info.value)
    assert "\n" not in message and "train-00000" in message and "data.reading.retries" in message
    assert len(caplog.records) < 20


def test_failing_pipe_command_stops_with_its_error(tiny_shards):
    """A pipe: command that fails (e.g. bad credentials) ends the run after the retries, naming the command."""
    manifest = tiny_shards(16, 4)
    cfg = data_config(manifest, shard_root="pipe:cat /nonexistent/{path}")
    shards = resolve_shards("train", manifest=str(manifest), shard_root=cfg.shard_root)
    loader = build_epoch_loader(shards, cfg, Collator(tokenizer(), 12), rank=0, world_size=1, seed=0,
                                accumulation=1, start=DataPosition(0))
    with pytest.raises(NoReadableShard, match=r"pipe:cat /nonexistent/train/train-00000\d\.tar"):
        list(loader)


def test_rate_limited_log_holds_back_a_flood(caplog):
    """1000 warnings within one interval log ``burst`` lines plus one summary; a later one logs again with the count."""
    now = [0.0]
    warn = RateLimitedLog(burst=3, interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for i in range(1000):
            warn.warning("bad %d", i)
        now[0] = 11.0
        warn.warning("bad %d", 1000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 and lines[:3] == ["bad 0", "bad 1", "bad 2"]
    assert "996 similar warnings held back" in lines[4]
