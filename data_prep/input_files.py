"""Checks on input files before they are opened: a FIFO, socket or device named ``.dcm`` must never block the sharder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

NOT_REGULAR = "not_regular_file"


def non_regular_problem(path: Path) -> str | None:
    """Why ``path`` must not be opened (a FIFO, socket, device or folder), or None for a regular file or a missing one.

    ``os.stat`` follows symlinks and never blocks, unlike ``open`` on a FIFO.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: the reader reports it with its own reason
    if stat.S_ISREG(mode):
        return None
    kind = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "directory" if stat.S_ISDIR(mode)
            else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")
    return f"{path} is a {kind}, not a regular file"


def aspect_problem(rows: int, cols: int, limit: float) -> str | None:
    """Why an image of ``rows`` x ``cols`` pixels is refused (empty, or long side / short side > ``limit``), or None."""
    if min(rows, cols) < 1:
        return f"{rows} x {cols} pixels"
    ratio = max(rows, cols) / min(rows, cols)
    return f"{rows} x {cols} pixels: aspect ratio {ratio:.1f} > max_aspect_ratio {limit}" if ratio > limit else None
