"""The tables beside the images: MIMIC's three gzipped CSVs, the annotation file, the downstream CSVs.

Gzip headers carry no name and mtime 0, rows are written in a fixed order, so equal inputs give
equal bytes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from data_prep.phantom.case import LABEL_NAMES

METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
CHEXPERT_COLUMNS = ("subject_id", "study_id", *LABEL_NAMES)
CSV_NAMES = {
    "metadata": "mimic-cxr-2.0.0-metadata.csv.gz",
    "split": "mimic-cxr-2.0.0-split.csv.gz",
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz",
}
# CheXpert's own column order (not MIMIC's alphabetical one).
CHEXPERT_DOWNSTREAM_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip
CHEXPERT_DOWNSTREAM_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_DOWNSTREAM_LABELS)
RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")


def label_cell(value: float | None) -> str:
    """A CheXpert value as MIMIC writes it: "1.0", "0.0", "-1.0" or empty."""
    return "" if value is None else f"{value:.1f}"


def csv_bytes(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> bytes:
    """UTF-8 CSV text of ``rows`` (dicts keyed by column) with a header line and '\\n' line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    return buffer.getvalue().encode("utf-8")


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write a CSV; a ``.gz`` name is gzipped reproducibly (no file name, mtime 0)."""
    data = csv_bytes(columns, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)


def write_mimic_tables(
    root: Path,
    metadata: list[dict[str, Any]],
    splits: dict[int, str],
    labels: dict[tuple[int, int], dict[str, float | None]],
) -> None:
    """The three MIMIC-CXR CSVs under ``root``; ``splits`` maps study_id to split name."""
    write_csv(root / CSV_NAMES["metadata"], METADATA_COLUMNS, metadata)
    split_rows = [dict(row, split=splits[row["study_id"]]) for row in metadata]
    write_csv(root / CSV_NAMES["split"], SPLIT_COLUMNS, split_rows)
    chexpert_rows = [
        {"subject_id": subject, "study_id": study, **{n: label_cell(v[n]) for n in LABEL_NAMES}}
        for (subject, study), v in labels.items()
    ]
    write_csv(root / CSV_NAMES["chexpert"], CHEXPERT_COLUMNS, chexpert_rows)


def write_annotations(
    path: Path, images: dict[str, Any], studies: dict[int, dict[str, float | None]], generator: dict[str, Any]
) -> None:
    """``phantom_annotations.json``: label names, per-image findings, per-study labels, generator arguments."""
    document = {
        "label_names": list(LABEL_NAMES),
        "images": images,
        "studies": {str(study): {"labels": values} for study, values in studies.items()},
        "generator": generator,
    }
    path.write_text(json.dumps(document, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def write_chexpert_downstream(root: Path, rows: list[dict[str, Any]]) -> None:
    """``train.csv`` and ``valid.csv`` in CheXpert's layout (U as -1.0, unmentioned as empty)."""
    for name, folder in (("train.csv", "train/"), ("valid.csv", "valid/")):
        chosen = [
            {**{k: v for k, v in row.items() if k != "labels"},
             **{n: label_cell(row["labels"][n]) for n in CHEXPERT_DOWNSTREAM_LABELS}}
            for row in rows
            if row["Path"].startswith(folder)
        ]  # fmt: skip
        write_csv(root / name, CHEXPERT_DOWNSTREAM_COLUMNS, chosen)
