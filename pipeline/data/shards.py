"""Where a split's shards are: the sharder's manifest, a brace pattern, or ``pipe:`` URLs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from webdataset.shardlists import expand_urls

PIPE_PREFIX = "pipe:"
PATH_FIELD = "{path}"


class ShardError(ValueError):
    """A shard list that cannot be used; the message names the manifest, split or shard."""


@dataclass(frozen=True)
class ShardList:
    """The shards of one split: their URLs (local paths or ``pipe:`` commands) and sample counts."""

    split: str
    urls: tuple[str, ...]
    num_samples: int
    shard_samples: tuple[int, ...] | None = None
    report_embeddings: bool | None = None  # every sample has report_emb.npy (manifest's report_encoder); None: unknown

    def __len__(self) -> int:
        """Number of shards."""
        return len(self.urls)


def _read_text(location: str) -> str:
    """Read a small text file from a local path or a ``pipe:`` command."""
    if location.startswith(PIPE_PREFIX):
        from webdataset import gopen

        with gopen.gopen(location, "rb") as stream:
            return stream.read().decode("utf-8")
    path = Path(location)
    if not path.is_file():
        raise ShardError(f"manifest not found: {path}")
    return path.read_text(encoding="utf-8")


def read_manifest(location: str) -> dict:
    """Parse the sharder's ``manifest.json`` from a local path or a ``pipe:`` command."""
    try:
        manifest = json.loads(_read_text(location))
    except json.JSONDecodeError as err:
        raise ShardError(f"{location}: not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or "splits" not in manifest:
        raise ShardError(f"{location}: not a shard manifest (no 'splits' key)")
    return manifest


def shard_url(relative: str, manifest_location: str, shard_root: str | None) -> str:
    """The URL of a manifest entry: under ``shard_root`` (a dir, or a template with ``{path}``) or next to the manifest."""
    if shard_root is None:
        if manifest_location.startswith(PIPE_PREFIX):
            raise ShardError(
                f"manifest {manifest_location!r} is read through a pipe: set data.shard_root to a URL template "
                f"containing {PATH_FIELD} (e.g. 'pipe:aws s3 cp s3://bucket/shards/{PATH_FIELD} -')"
            )
        return str(Path(manifest_location).parent / relative)
    if PATH_FIELD in shard_root:
        return shard_root.replace(PATH_FIELD, relative)
    if shard_root.startswith(PIPE_PREFIX):
        raise ShardError(f"data.shard_root {shard_root!r} is a pipe: command but has no {PATH_FIELD} placeholder")
    return str(Path(shard_root) / relative)


def shards_from_manifest(manifest_location: str, split: str, shard_root: str | None = None) -> ShardList:
    """The shards of ``split`` listed in a manifest, as URLs (see :func:`shard_url`)."""
    manifest = read_manifest(manifest_location)
    splits = manifest["splits"]
    if split not in splits:
        raise ShardError(f"{manifest_location}: no split {split!r} (has: {', '.join(sorted(splits)) or 'none'})")
    entries = splits[split]["shards"]
    urls = tuple(shard_url(e["path"], manifest_location, shard_root) for e in entries)
    counts = tuple(int(e["num_samples"]) for e in entries)
    return ShardList(split, urls, int(splits[split]["num_samples"]), counts, manifest.get("report_encoder") is not None)


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
