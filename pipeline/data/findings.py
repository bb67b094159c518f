"""Findings signatures: which samples have identical findings (the truth behind SIA's false negatives).

Two studies have identical findings when the phantom annotations record the same set of findings,
each with the same label, status, side, zone and severity (and, for nodules, size bucket where the
set records one); normal studies are identical to each other. A sample's signature is a 63-bit
integer digest of its study's finding set (the union over the study's images), so equal
signatures mean identical findings; ``UNKNOWN`` (-1) marks a sample without annotations, which is
never anyone's true false negative.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

UNKNOWN = -1
FINDING_KEYS = ("label", "status", "side", "zone", "severity", "size_bucket")


def signature_of(findings: list[dict]) -> int:
    """The signature of a finding set (order and repeats do not matter; the empty set is "normal")."""
    items = sorted({json.dumps([f.get(k) for k in FINDING_KEYS]) for f in findings})
    digest = hashlib.sha256("\n".join(items).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # non-negative int64


def signatures_from_annotations(path: str | Path) -> dict[str, int]:
    """dicom_id → findings signature of its study, from a phantom set's ``phantom_annotations.json``."""
    path = Path(path)
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a phantom annotation file ({type(err).__name__}: {err})") from err
    by_study: dict[str, list[dict]] = {}
    for ann in images.values():
        by_study.setdefault(str(ann["study_id"]), []).extend(ann["findings"])
    study_sig = {study: signature_of(findings) for study, findings in by_study.items()}
    return {dicom_id: study_sig[str(ann["study_id"])] for dicom_id, ann in images.items()}


def tfn_mask(rows: torch.Tensor, columns: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
    """True false negatives [R, C]: column j of row i has identical findings and is not i's pair.

    ``rows`` [R] and ``columns`` [C] are signatures; an ``UNKNOWN`` signature matches nothing.
    """
    same = rows[:, None] == columns[None, :]
    known = (rows[:, None] != UNKNOWN) & (columns[None, :] != UNKNOWN)
    return same & known & ~paired
