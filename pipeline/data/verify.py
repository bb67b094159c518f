"""Check shards against the manifest's per-shard records before training (size always, sha256 on request).

Local shards: the size of every file is compared with the manifest's ``bytes`` when the run starts;
with ``data.reading.verify_sha256`` every file is also hashed and compared with its ``sha256``.
``pipe:`` shards (object stores) are not checked: the store's size is not known without a request
per object. A mismatch stops the run before training with a message naming the shards.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.shards import PIPE_PREFIX, ShardError, ShardList
from pipeline.file_digest import sha256_file
from pipeline.shard_format.manifest import ShardManifest, ShardRecord


def shard_mismatches(shards: ShardList, records: list[ShardRecord], sha256: bool) -> list[str]:
    """One 'url: what differs' line per local shard whose size (or sha256) differs from its manifest record."""
    problems = []
    for url, record in zip(shards.urls, records):
        if url.startswith(PIPE_PREFIX):
            continue
        path = Path(url)
        size = path.stat().st_size
        if record.bytes is not None and size != record.bytes:
            problems.append(f"{url}: {size} bytes, manifest says {record.bytes}")
        elif sha256 and record.sha256 and sha256_file(path) != record.sha256:
            problems.append(f"{url}: sha256 differs from the manifest's")
    return problems


def verify_shards(shards: ShardList, manifest: ShardManifest, sha256: bool) -> None:
    """ShardError naming the shards of ``shards.split`` that do not match ``manifest``; silent when all match."""
    records = list(manifest.split(shards.split, "manifest").shards)
    problems = shard_mismatches(shards, records, sha256)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ShardError(
            f"split {shards.split!r}: {len(problems)} of {len(shards)} shards do not match the manifest ({shown}): "
            "the output was changed after the manifest was written (two sharders on one --out?); re-shard it"
        )
