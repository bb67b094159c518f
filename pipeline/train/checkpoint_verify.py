"""Checkpoint integrity: sha256 of every file recorded when a checkpoint completes, checked before resuming.

Rank 0 writes the digests into ``COMPLETE.json`` (``files``) once every rank has saved. Before a
resume, rank ``r`` hashes every ``world``-th file from ``r``, the ranks all-gather what they found
broken, and all of them take the newest complete checkpoint without a broken file, warning about
each one passed over. A checkpoint without digests (an older run) is taken as it is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.distributed as dist

from pipeline.file_digest import sha256_file

log = logging.getLogger("sista.train")
MARKER = "COMPLETE.json"  # the marker file of pipeline.train.checkpoint


class CheckpointError(RuntimeError):
    """No usable checkpoint to resume from; the message names the broken files."""


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint folder but its marker, by path relative to the folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER and not p.name.endswith(".tmp"))
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}


def broken_files(folder: Path, rank: int, world: int) -> list[str]:
    """The files of ``folder`` this rank checks (every ``world``-th) that are missing or differ from the marker's digests."""
    try:
        recorded = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError) as err:
        return [f"{MARKER} ({err})"]
    if not recorded:
        return []
    broken = []
    for name in sorted(recorded)[rank::world]:
        path = folder / name
        if not path.is_file():
            broken.append(f"{name} (missing)")
        elif sha256_file(path) != recorded[name]:
            broken.append(f"{name} (sha256 differs)")
    return broken


def _all_broken(folder: Path, rank: int, world: int) -> list[str]:
    """The union over ranks of :func:`broken_files` (one all-gather), the same list on every rank."""
    mine = broken_files(folder, rank, world)
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return mine
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return sorted({name for part in gathered for name in part or ()})


def first_intact(candidates: list[Path], rank: int, world: int) -> Path | None:
    """The first of ``candidates`` (newest first) with no broken file, agreed by all ranks; None when there are none.

    CheckpointError naming the broken files when every candidate is broken.
    """
    passed_over = []
    for folder in candidates:
        broken = _all_broken(folder, rank, world)
        if not broken:
            return folder
        passed_over.append(f"{folder}: {', '.join(broken)}")
        log.warning("checkpoint %s has broken file(s) %s: falling back to the previous complete checkpoint",
                    folder, ", ".join(broken))
    if passed_over:
        raise CheckpointError(
            f"no intact checkpoint to resume from ({'; '.join(passed_over)}): delete the broken folder(s) "
            "to start fresh, or set checkpoint.resume to an intact checkpoint folder"
        )
    return None
