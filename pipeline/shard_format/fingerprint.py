"""What a shard was made from, as one digest: ``--resume`` keeps a shard only while its digest is unchanged.

A shard's inputs are its settings, its candidates (ids, view, split and labels: everything the
sharder takes from the CSV rows), the content of each report (sha256: reports are small) and each
image file's size and modification time (films are large, hashing them all would cost a full read).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any


def file_stamp(path: Path) -> dict[str, Any]:
    """``{size, mtime_ns}`` of a file, or ``{error}`` when it cannot be read (the shard records that as a skip)."""
    try:
        stat = os.stat(path)
    except OSError as err:
        return {"error": type(err).__name__}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def content_digest(path: Path) -> str:
    """Hex sha256 of a small regular file's bytes, or ``error:<why>`` when it cannot be read (a FIFO is never opened)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "error:not_regular_file"
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as err:
        return f"error:{type(err).__name__}"


def digest(payload: Any) -> str:
    """sha256 of a JSON-able payload in canonical form (sorted keys; paths and other objects as strings)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()
