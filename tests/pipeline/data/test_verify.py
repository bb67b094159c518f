"""Shards that no longer match their manifest are found before training and named."""

from __future__ import annotations

import hashlib
import json

import pytest

from pipeline.data.shards import ShardError, read_manifest, resolve_shards
from pipeline.data.verify import verify_shards


def _with_digests(manifest_path):
    """Fill the fixture manifest's sha256 fields with the shards' real digests."""
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["splits"]["train"]["shards"]:
        entry["sha256"] = hashlib.sha256((manifest_path.parent / entry["path"]).read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    return manifest_path


def test_size_mismatch_is_found_at_start(tiny_shards):
    """A shard rewritten with another size: named without hashing."""
    manifest = _with_digests(tiny_shards(16, 4))
    shard = manifest.parent / "train" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes() + b"\0" * 512)
    shards = resolve_shards("train", manifest=str(manifest))
    with pytest.raises(ShardError, match=r"1 of 4 shards do not match.*train-000001\.tar: \d+ bytes, manifest says"):
        verify_shards(shards, read_manifest(str(manifest)), sha256=False)


def test_same_size_other_bytes_needs_sha256(tiny_shards):
    """Same size, other content: passes the size check, found by data.reading.verify_sha256."""
    manifest = _with_digests(tiny_shards(16, 4))
    shard = manifest.parent / "train" / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    shards, records = resolve_shards("train", manifest=str(manifest)), read_manifest(str(manifest))
    verify_shards(shards, records, sha256=False)
    with pytest.raises(ShardError, match=r"train-000002\.tar: sha256 differs"):
        verify_shards(shards, records, sha256=True)
