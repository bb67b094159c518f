"""Where things are in a shard set: file names, the shard path pattern, member extensions, path validation."""

from __future__ import annotations

import re

MANIFEST = "manifest.json"
SKIPPED_CSV = "skipped.csv"
STATE_DIR = ".shard_state"  # the sharder's per-shard state records (used by --resume)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")  # tar member extensions that hold the image, in lookup order
TEXT_MEMBER = "txt"
META_MEMBER = "json"
REPORT_EMBEDDING_MEMBER = "report_emb.npy"

_SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")
# A manifest path may hold only these characters: nothing a shell, a URL or a terminal reads specially.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-/]+$")


class ShardFormatError(ValueError):
    """A manifest, shard path or template that breaks the shard format; the message names it."""


def shard_path(split: str, index: int) -> str:
    """The path of shard ``index`` of ``split`` relative to the output folder: ``<split>/<split>-NNNNNN.tar``."""
    return f"{split}/{split}-{index:06d}.tar"


def shard_index(split: str, file_name: str) -> int | None:
    """The index of a shard file name of ``split`` (``train-000012.tar`` -> 12), or None for another file."""
    match = _SHARD_NAME.match(file_name)
    if match is None or match.group("split") != split:
        return None
    return int(match.group("index"))


def image_extension(members: object) -> str | None:
    """The first of :data:`IMAGE_EXTENSIONS` that ``members`` (a mapping or set of extensions) contains."""
    return next((e for e in IMAGE_EXTENSIONS if e in members), None)  # type: ignore[operator]


def validate_relative_path(path: object, where: str) -> str:
    """``path`` when it is a safe relative shard path; ShardFormatError naming ``where`` otherwise.

    Safe: relative, no ``..`` or empty segment, no segment starting with ``-`` (read as an option by a
    ``pipe:`` command), and only letters, digits, ``_``, ``.``, ``-`` and ``/`` (no control or shell characters).
    """
    if not isinstance(path, str) or not path:
        raise ShardFormatError(f"{where}: shard path {path!r} is not a non-empty string")
    if path.startswith("/"):
        raise ShardFormatError(f"{where}: shard path {path!r} is absolute; manifest paths are relative to the shard root")
    if not _SAFE_PATH.match(path):
        bad = sorted({c for c in path if not _SAFE_PATH.match(c)})
        raise ShardFormatError(f"{where}: shard path {path!r} contains characters {bad!r} "
                               "(allowed: letters, digits, '_', '.', '-', '/')")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise ShardFormatError(f"{where}: shard path {path!r} has a {segment or 'empty'!r} segment")
        if segment.startswith("-"):
            raise ShardFormatError(f"{where}: shard path {path!r} has a segment starting with '-'")
    return path
