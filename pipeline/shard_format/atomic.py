"""Crash-safe small files: write under a temporary name, then rename over the target."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp."  # temp files are ``<name>.tmp.<pid>``; a resumed run deletes leftovers by this mark


def temp_path(path: Path) -> Path:
    """The temporary name this process writes ``path`` under."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` by temp name + rename (readers see the old or the new file, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (sorted keys, 1-space indent, trailing newline) by temp name + rename."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
