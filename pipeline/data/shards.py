"""Where a split's shards are: the sharder's manifest (read through :mod:`pipeline.shard_format`), a brace pattern, or ``pipe:`` URLs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from webdataset.shardlists import expand_urls

from pipeline.shard_format import PIPE_PREFIX, read_manifest, shard_url
from pipeline.shard_format import ShardFormatError as ShardError

__all__ = ["ShardError", "ShardList", "check_local_shards", "read_manifest", "resolve_shards", "shard_url",
           "shards_from_manifest", "shards_from_pattern"]


@dataclass(frozen=True)
class ShardList:
    """The shards of one split: their URLs (local paths or ``pipe:`` commands) and sample counts."""

    split: str
    urls: tuple[str, ...]
    num_samples: int
    shard_samples: tuple[int, ...] | None = None

    def __len__(self) -> int:
        """Number of shards."""
        return len(self.urls)


def shards_from_manifest(manifest_location: str, split: str, shard_root: str | None = None) -> ShardList:
    """The shards of ``split`` listed in a manifest, as URLs (see :func:`shard_url`)."""
    entry = read_manifest(manifest_location).split(split, manifest_location)
    urls = tuple(shard_url(s.path, manifest_location, shard_root) for s in entry.shards)
    return ShardList(split, urls, entry.num_samples, tuple(s.num_samples for s in entry.shards))


def shards_from_pattern(pattern: str, num_samples: int, split: str) -> ShardList:
    """Shards named by a brace pattern (``train-{000000..000099}.tar``, a ``pipe:`` command with one, ``::``-joined)."""
    urls = tuple(expand_urls(pattern))
    if not urls:
        raise ShardError(f"shard pattern {pattern!r} expands to no shard")
    return ShardList(split, urls, num_samples, None)


def check_local_shards(shards: ShardList) -> None:
    """Fail fast, naming the files, when local shards are missing (``pipe:`` URLs are checked when read)."""
    missing = [u for u in shards.urls if not u.startswith(PIPE_PREFIX) and not Path(u).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ShardError(f"split {shards.split!r}: {len(missing)} of {len(shards.urls)} shards missing: {shown}")


def resolve_shards(
    split: str,
    *,
    manifest: str | None,
    shard_root: str | None = None,
    pattern: str | None = None,
    num_samples: int | None = None,
    check: bool = True,
) -> ShardList:
    """The shards of a split from a manifest or, failing that, a brace pattern plus its sample count."""
    if manifest is not None:
        shards = shards_from_manifest(manifest, split, shard_root)
    elif pattern is not None:
        if num_samples is None:
            raise ShardError(f"split {split!r}: a shard pattern needs its number of samples (data.num_samples)")
        shards = shards_from_pattern(pattern, num_samples, split)
    else:
        raise ShardError(f"split {split!r}: set data.manifest, or data.pattern with data.num_samples")
    if not shards.urls:
        raise ShardError(f"split {split!r} has no shards")
    if check:
        check_local_shards(shards)
    return shards
