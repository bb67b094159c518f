"""RSNA Pneumonia Detection in its published layout: ``stage_2_train_labels.csv`` + ``stage_2_train_images/*.dcm``.

The CSV has one row per box (``patientId,x,y,width,height,Target``), and a single row with
empty box cells for an image without pneumonia. Only the training images carry labels, so the
linear probe splits this pool itself (split files written once and reused). For segmentation the
boxes become masks, for detection they stay boxes (:func:`load_rsna_boxes`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.eval.adapters.base import LabelledImages
from pipeline.eval.adapters.dense import DenseImages, boxes_mask, check_box, dicom_size
from pipeline.eval.adapters.dicom import dicom_loader

LABELS_FILE = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"
BOX_COLUMNS = ("x", "y", "width", "height")


@dataclass
class _Patient:
    """One patientId's rows: its target, its boxes (x, y, w, h) and the CSV line of each box."""

    target: float = 0.0
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


def _read_labels(csv_path: Path, columns: tuple[str, ...]) -> dict[str, _Patient]:
    """patientId -> its rows, in CSV order; a bad Target or box cell names the line and column."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"RSNA labels file not found: {csv_path}")
    patients: dict[str, _Patient] = {}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("patientId", "Target", *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}")
        for line, row in enumerate(reader, start=2):
            value = row["Target"].strip()
            if value not in ("0", "1"):
                raise ValueError(f"{csv_path}:{line}: Target {value!r} is not 0 or 1")
            patient = patients.setdefault(row["patientId"].strip(), _Patient())
            patient.target = max(patient.target, float(value))
            if value == "1" and columns:
                try:
                    patient.boxes.append(tuple(float(row[c]) for c in columns))
                except ValueError:
                    bad = next(c for c in columns if not _is_number(row[c]))
                    raise ValueError(f"{csv_path}:{line} column {bad!r}: {row[bad]!r} is not a number") from None
                patient.lines.append(line)
    if not patients:
        raise ValueError(f"{csv_path}: no rows")
    return patients


def _is_number(cell: str) -> bool:
    """Whether a CSV cell parses as a float."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _image_path(root: Path, csv_path: Path, pid: str) -> Path:
    """The DICOM of a patientId; FileNotFoundError naming the CSV when it is missing."""
    path = Path(root) / IMAGES_DIR / f"{pid}.dcm"
    if not path.is_file():
        raise FileNotFoundError(f"{csv_path}: patientId {pid!r} has no image {path}")
    return path


def load_rsna(root: Path) -> LabelledImages:
    """Read the labelled RSNA pool: one binary label (pneumonia) per patientId, in CSV order."""
    csv_path = Path(root) / LABELS_FILE
    patients = _read_labels(csv_path, ())
    ids = list(patients)
    return LabelledImages(
        name="rsna",
        ids=ids,
        loaders=[dicom_loader(_image_path(root, csv_path, pid)) for pid in ids],
        labels=np.asarray([[patients[p].target] for p in ids], dtype=np.float64),
        label_names=["Pneumonia"],
        task="binary",
    )


def load_rsna_boxes(root: Path) -> DenseImages:
    """Read the RSNA pool with its boxes (x1, y1, x2, y2) and their masks; a box outside its image is skipped, counted."""
    csv_path = Path(root) / LABELS_FILE
    patients = _read_labels(csv_path, BOX_COLUMNS)
    ids, loaders, sizes, boxes, outside = [], [], [], [], 0
    for pid, patient in patients.items():
        path = _image_path(root, csv_path, pid)
        size = dicom_size(path)
        kept = []
        for (x, y, w, h), line in zip(patient.boxes, patient.lines):
            box = check_box((x, y, x + w, y + h), size, f"{csv_path}:{line}")
            outside += box is None
            if box is not None:
                kept.append(box)
        ids.append(pid)
        loaders.append(dicom_loader(path))
        sizes.append(size)
        boxes.append(np.asarray(kept, dtype=np.float64).reshape(-1, 4))
    masks = [boxes_mask(b, s) for b, s in zip(boxes, sizes)]
    return DenseImages("rsna", ids, loaders, sizes, boxes=boxes, masks=masks, skipped={"box_outside_image": outside})
