"""Deterministic, crash-safe WebDataset shard files.

A shard is written to ``<name>.tmp.<pid>``, hashed while it is written, and renamed to ``<name>``
only when complete; then a small state record (sample count, bytes, sha256, skipped inputs) is
written next to the outputs, also by temp name + rename. A shard counts as done only when its
state record exists and the file's sha256 matches it, so a run killed at any moment (SIGKILL
included) leaves either a complete shard or something ``--resume`` redoes. Tar members carry fixed
metadata (mtime 0, uid/gid 0, empty user/group names, mode 0444, USTAR) in a fixed order, so the
same samples always give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.shard_format.atomic import TMP_MARK, temp_path
from pipeline.shard_format.layout import STATE_DIR

__all__ = ["STATE_DIR", "load_complete_state", "remove_leftovers", "sha256_file", "state_path", "write_tar"]


class _HashingFile:
    """A write-only file wrapper that feeds every byte to sha256 and counts them."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()


def _member(name: str, size: int) -> tarfile.TarInfo:
    """A tar header with fixed, reproducible metadata."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_tar(path: Path, samples: Iterable[tuple[str, list[tuple[str, bytes]]]]) -> tuple[int, int, str]:
    """Write ``(key, [(extension, bytes), ...])`` samples to ``path`` atomically: (samples, bytes, sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    count = 0
    try:
        with open(tmp, "wb") as raw:
            hashing = _HashingFile(raw)
            with tarfile.open(fileobj=hashing, mode="w", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[call-overload]
                for key, members in samples:
                    for extension, data in members:
                        tar.addfile(_member(f"{key}.{extension}", len(data)), io.BytesIO(data))
                    count += 1
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count, hashing.size, hashing.sha256.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def state_path(out_dir: Path, relative_shard: str) -> Path:
    """Where the state record of ``<split>/<split>-NNNNNN.tar`` lives."""
    return out_dir / STATE_DIR / (relative_shard.replace("/", "__") + ".json")


def load_complete_state(out_dir: Path, relative_shard: str) -> dict[str, Any] | None:
    """The state record of a shard when the shard is complete and its checksum matches, else None."""
    record_path, shard_path = state_path(out_dir, relative_shard), out_dir / relative_shard
    if not record_path.is_file() or not shard_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("path") != relative_shard:
        return None
    if shard_path.stat().st_size != record.get("bytes") or sha256_file(shard_path) != record.get("sha256"):
        return None
    return record


def remove_leftovers(out_dir: Path, relative_shard: str) -> None:
    """Delete temp files a killed run left for this shard (and its state record)."""
    for path in (out_dir / relative_shard, state_path(out_dir, relative_shard)):
        if path.parent.is_dir():
            for stale in path.parent.glob(path.name + TMP_MARK + "*"):
                stale.unlink(missing_ok=True)
