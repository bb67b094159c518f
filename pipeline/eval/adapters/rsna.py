"""RSNA Pneumonia Detection in its published layout: ``stage_2_train_labels.csv`` + ``stage_2_train_images/*.dcm``.

The CSV has one row per box (``patientId,x,y,width,height,Target``), and a single row with
empty box cells for an image without pneumonia. Only the training images carry labels, so the
linear probe splits this pool itself (split files written once and reused). Films are displayed
with the DICOM window of the training shards (``window``, from their manifest).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.eval.adapters.base import LabelledImages
from pipeline.eval.adapters.dicom import dicom_loader
from pipeline.shard_format import WindowSettings

LABELS_FILE = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"


def load_rsna(root: Path, window: WindowSettings) -> LabelledImages:
    """Read the labelled RSNA pool: one binary label (pneumonia) per patientId, in CSV order, films shown with ``window``."""
    csv_path = Path(root) / LABELS_FILE
    if not csv_path.is_file():
        raise FileNotFoundError(f"RSNA labels file not found: {csv_path}")
    target: dict[str, float] = {}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("patientId", "Target") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}")
        for line, row in enumerate(reader, start=2):
            value = row["Target"].strip()
            if value not in ("0", "1"):
                raise ValueError(f"{csv_path}:{line}: Target {value!r} is not 0 or 1")
            pid = row["patientId"].strip()
            target[pid] = max(target.get(pid, 0.0), float(value))
    if not target:
        raise ValueError(f"{csv_path}: no rows")
    ids = list(target)
    loaders = []
    for pid in ids:
        path = Path(root) / IMAGES_DIR / f"{pid}.dcm"
        if not path.is_file():
            raise FileNotFoundError(f"{csv_path}: patientId {pid!r} has no image {path}")
        loaders.append(dicom_loader(path, window))
    return LabelledImages(
        name="rsna",
        ids=ids,
        loaders=loaders,
        labels=np.asarray([[target[p]] for p in ids], dtype=np.float64),
        label_names=["Pneumonia"],
        task="binary",
    )
