"""Local copies of remote (``pipe:``) shards, for readers that seek to tar offsets (evaluation).

A pipe stream cannot seek, so a shard behind a ``pipe:`` URL is first copied into the cache folder
under its manifest sha256 (``<cache>/<sha256>.tar``), checked against the manifest's size and sha256,
and renamed into place; later runs reuse it. A shard whose manifest entry has no sha256 cannot be
named by content and is fetched again on every run. Local shards are read where they are.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from pipeline.shard_format.atomic import temp_path
from pipeline.shard_format.layout import ShardFormatError
from pipeline.shard_format.location import PIPE_PREFIX, is_pipe
from pipeline.shard_format.manifest import ShardRecord

CACHE_ENV = "SISTA_SHARD_CACHE"
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$SISTA_SHARD_CACHE``, else ``$XDG_CACHE_HOME/sista/shards``, else ``~/.cache/sista/shards``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sista" / "shards"


def _fetch(url: str, target: Path, record: ShardRecord) -> None:
    """Stream the command's stdout into ``target`` (temp name + rename), checking size and sha256 when known."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            proc = subprocess.Popen(url[len(PIPE_PREFIX):], shell=True, stdout=subprocess.PIPE,  # noqa: S602 - pipe: is a shell command
                                    stderr=subprocess.PIPE)
            assert proc.stdout is not None
            while block := proc.stdout.read(_CHUNK):
                out.write(block)
                digest.update(block)
                size += len(block)
            stderr = proc.stderr.read().decode("utf-8", "replace").strip() if proc.stderr else ""
            code = proc.wait()
        if code != 0:
            raise ShardFormatError(f"shard {record.path}: command {url!r} exited with {code}: "
                                   f"{stderr.splitlines()[-1] if stderr else 'no error output'}")
        if record.bytes is not None and size != record.bytes:
            raise ShardFormatError(f"shard {record.path}: {url!r} gave {size} bytes, the manifest says {record.bytes}")
        if record.sha256 is not None and digest.hexdigest() != record.sha256:
            raise ShardFormatError(f"shard {record.path}: {url!r} gave sha256 {digest.hexdigest()}, "
                                   f"the manifest says {record.sha256}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def local_shard(url: str, record: ShardRecord, cache_dir: Path | None) -> Path:
    """A local, seekable file holding the shard at ``url``: the file itself, or its copy in ``cache_dir``."""
    if not is_pipe(url):
        return Path(url)
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    if record.sha256 is None:
        target = folder / "unverified" / (hashlib.sha256(url.encode("utf-8")).hexdigest() + ".tar")
        _fetch(url, target, record)  # nothing names its content: fetch again every run
        return target
    target = folder / f"{record.sha256}.tar"
    if not (target.is_file() and (record.bytes is None or target.stat().st_size == record.bytes)):
        _fetch(url, target, record)
    return target
