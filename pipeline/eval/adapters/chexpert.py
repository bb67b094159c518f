"""CheXpert in its published layout: ``train.csv`` / ``valid.csv`` with a ``Path`` column and 14 label columns.

Label cells are 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank (not mentioned).
Blank counts as negative (CheXpert's convention); uncertain follows the ``U-ones`` or
``U-zeros`` policy. Paths in the CSV start with the release folder name
(``CheXpert-v1.0-small/train/...``) and are resolved against the CSV's folder or its parent.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.eval.adapters.base import LabelledImages, file_loader

UncertainPolicy = Literal["ones", "zeros"]
SPLIT_FILES = {"train": "train.csv", "valid": "valid.csv"}


def _label_value(cell: str, policy: UncertainPolicy, where: str) -> float:
    """One CheXpert cell as 1.0/0.0 under the uncertainty policy."""
    cell = cell.strip()
    if cell == "":
        return 0.0
    try:
        value = float(cell)
    except ValueError as err:
        raise ValueError(f"{where}: label {cell!r} is not 1.0, 0.0, -1.0 or blank") from err
    if value == -1.0:
        return 1.0 if policy == "ones" else 0.0
    if value not in (0.0, 1.0):
        raise ValueError(f"{where}: label {cell!r} is not 1.0, 0.0, -1.0 or blank")
    return value


def _resolve(root: Path, relative: str, where: str) -> Path:
    """The image file named by a CSV path, relative to the CSV's folder or the folder above it."""
    for base in (root, root.parent):
        candidate = base / relative
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{where}: image {relative!r} found neither under {root} nor under {root.parent}")


def load_chexpert(
    root: Path,
    split: str,
    label_names: Sequence[str],
    uncertain: UncertainPolicy,
    frontal_only: bool,
) -> LabelledImages:
    """Read ``root/{train,valid}.csv`` into labelled images (multi-label, K = len(label_names))."""
    if split not in SPLIT_FILES:
        raise ValueError(f"CheXpert split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    if uncertain not in ("ones", "zeros"):
        raise ValueError(f"CheXpert uncertainty policy must be 'ones' or 'zeros', got {uncertain!r}")
    csv_path = Path(root) / SPLIT_FILES[split]
    if not csv_path.is_file():
        raise FileNotFoundError(f"CheXpert split file not found: {csv_path}")
    ids, loaders, rows = [], [], []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("Path", *label_names) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}")
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line}"
            if frontal_only and row.get("Frontal/Lateral", "Frontal").strip() != "Frontal":
                continue
            ids.append(row["Path"])
            loaders.append(file_loader(_resolve(csv_path.parent, row["Path"], where)))
            rows.append([_label_value(row[name], uncertain, f"{where} column {name!r}") for name in label_names])
    if not ids:
        raise ValueError(f"{csv_path}: no images left (frontal_only={frontal_only})")
    return LabelledImages(
        name=f"chexpert/{split}",
        ids=ids,
        loaders=loaders,
        labels=np.asarray(rows, dtype=np.float64).reshape(len(ids), len(label_names)),
        label_names=list(label_names),
        task="multilabel",
    )
