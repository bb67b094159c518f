"""MIMIC-CXR metadata: join the metadata, split and CheXpert CSVs with the files on disk into candidates.

The three CSVs (``mimic-cxr-2.0.0-{metadata,split,chexpert}.csv[.gz]``) are read from the first of
the given roots that holds them. Each image row is joined with its official split (``train``,
``validate`` and ``test`` stay separate) and its study's CheXpert labels; views come from the
metadata's ViewPosition, or from the DICOM header when the CSV leaves it blank. The candidate list
is sorted by (subject_id, study_id, dicom_id) within each split, so it never depends on disk order.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.tag import Tag

from pipeline.dicom_pixels import DicomReadError, read_dicom

log = logging.getLogger(__name__)

CSV_PREFIX = "mimic-cxr-2.0.0-"
OFFICIAL_SPLITS = ("train", "validate", "test")
CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
_VIEW_POSITION_TAG = Tag(0x0018, 0x5101)
_LABEL_VALUES = {"": None, "1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0}


@dataclass(frozen=True)
class Candidate:
    """One frontal image that passed the metadata, view and split filters."""

    dicom_id: str
    subject_id: int
    study_id: int
    split: str
    view: str
    image_path: Path
    report_path: Path
    labels: tuple[float | None, ...]
    labels_found: bool


@dataclass(frozen=True)
class Skip:
    """An input left out, with a short reason and a detail naming the file or row."""

    id: str
    reason: str
    detail: str


@dataclass
class Listing:
    """The candidates per split plus everything left out while listing them."""

    candidates: dict[str, list[Candidate]]
    skipped: list[Skip] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=dict)


def study_folder(subject_id: int, study_id: int) -> Path:
    """``files/p1X/pSSSSSSSS/sTTTTTTTT`` relative to a MIMIC-CXR root."""
    subject = str(subject_id)
    return Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id}"


def find_csv(roots: Sequence[Path], name: str) -> Path:
    """The first ``mimic-cxr-2.0.0-<name>.csv.gz`` or ``.csv`` under ``roots``; FileNotFoundError naming them."""
    for root in roots:
        for suffix in (".csv.gz", ".csv"):
            path = Path(root) / f"{CSV_PREFIX}{name}{suffix}"
            if path.is_file():
                return path
    tried = ", ".join(str(r) for r in roots)
    raise FileNotFoundError(f"{CSV_PREFIX}{name}.csv[.gz] not found in any of: {tried}")


@dataclass(frozen=True)
class CsvRow:
    """One data row of a CSV: its line number, its cells, and why it is malformed (None: well-formed)."""

    line: int
    cells: dict[str, str]
    problem: str | None


def read_csv(path: Path) -> list[CsvRow]:
    """Rows of a plain or gzipped UTF-8 CSV; a row with too few or too many cells is kept with its problem.

    ValueError naming the file when the file itself cannot be parsed.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
        rows = []
        for cells in reader:
            width = len(reader.fieldnames or ())
            got = sum(1 for k, v in cells.items() if k is not None and v is not None) + len(cells.get(None) or ())
            problem = None if got == width else f"{path}: line {reader.line_num}: {got} cell(s), header has {width}"
            rows.append(CsvRow(reader.line_num, {k: v for k, v in cells.items() if k is not None and v is not None}, problem))
        return rows
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as err:
        raise ValueError(f"{path}: cannot read CSV: {err}") from err


def _require_columns(path: Path, rows: list[CsvRow], columns: Iterable[str]) -> None:
    """ValueError naming the file when a required column is absent."""
    if not rows:
        return
    missing = [c for c in columns if c not in rows[0].cells and rows[0].problem is None]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")


def _row_id(path: Path, row: CsvRow, column: str) -> str:
    """The row's id (its ``column`` cell) or ``<file>:<line>``."""
    return (row.cells.get(column) or "").strip() or f"{path.name}:{row.line}"


def scan_files(root: Path, extension: str) -> dict[str, Path]:
    """Every ``files/**/<dicom_id>.<extension>`` under ``root``: dicom_id -> path relative to root."""
    found: dict[str, Path] = {}
    top = root / "files"
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith("." + extension):
                found.setdefault(name[: -len(extension) - 1], Path(dirpath).relative_to(root) / name)
    return found


def _parse_labels(row: dict[str, str]) -> tuple[float | None, ...]:
    """The 14 CheXpert values of a row (1.0, 0.0, -1.0 or None); KeyError/ValueError on a bad cell."""
    values = []
    for name in CHEXPERT_LABELS:
        cell = (row.get(name) or "").strip()
        if cell not in _LABEL_VALUES:
            raise ValueError(f"label {name!r} has value {cell!r}")
        values.append(_LABEL_VALUES[cell])
    return tuple(values)


def _view_from_header(path: Path) -> str:
    """ViewPosition from the DICOM header (upper case, may be empty)."""
    ds = read_dicom(path, header_only=True)
    return str(ds.get(_VIEW_POSITION_TAG).value if _VIEW_POSITION_TAG in ds else "").strip().upper()


def list_candidates(
    mimic_root: Path,
    image_root: Path,
    image_extension: str,
    csv_roots: Sequence[Path],
    views: Sequence[str],
    splits: Sequence[str],
    limit: int | None,
) -> Listing:
    """Join CSVs and files into the sorted candidate list per split, recording every skip and filter."""
    meta_path, split_path, label_path = (find_csv(csv_roots, n) for n in ("metadata", "split", "chexpert"))
    meta_rows, split_rows, label_rows = read_csv(meta_path), read_csv(split_path), read_csv(label_path)
    _require_columns(meta_path, meta_rows, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    _require_columns(split_path, split_rows, ("dicom_id", "split"))
    _require_columns(label_path, label_rows, ("subject_id", "study_id", *CHEXPERT_LABELS))
    files = scan_files(image_root, image_extension)
    listing = Listing(candidates={s: [] for s in splits})
    filtered = {"view_not_selected": 0, "split_not_selected": 0, "beyond_limit": 0}

    split_of: dict[str, str] = {}
    bad_split: dict[str, str] = {}  # dicom_id -> why its split row is malformed (skipped once, with its image)
    for srow in split_rows:
        dicom_key = (srow.cells.get("dicom_id") or "").strip()
        if srow.problem is not None:
            if dicom_key:
                bad_split[dicom_key] = srow.problem
            else:
                listing.skipped.append(Skip(_row_id(split_path, srow, "dicom_id"), "bad_csv_row", srow.problem))
            continue
        split_of[dicom_key] = srow.cells["split"].strip()
    labels_of: dict[tuple[int, int], tuple[float | None, ...] | str] = {}
    for lrow in label_rows:
        row, number = lrow.cells, lrow.line
        try:
            key = (int(row["subject_id"]), int(row["study_id"]))
            if lrow.problem is not None:
                raise ValueError(lrow.problem)
            labels_of[key] = _parse_labels(row)
        except (ValueError, KeyError, TypeError) as err:
            listing.skipped.append(Skip(f"{label_path.name}:{number}", "bad_csv_row", f"{label_path}: row {number}: {err}"))
            try:
                labels_of[(int(row["subject_id"]), int(row["study_id"]))] = f"{label_path}: row {number}: {err}"
            except (ValueError, KeyError, TypeError):
                pass

    wanted_views = {v.upper() for v in views}
    known_ids: set[str] = set()
    for mrow in meta_rows:
        row, number = mrow.cells, mrow.line
        dicom_id = (row.get("dicom_id") or "").strip()
        if dicom_id and dicom_id in known_ids:
            listing.skipped.append(Skip(dicom_id, "duplicate_csv_row", f"{meta_path}: row {number}: {dicom_id} listed again"))
            continue
        try:
            if mrow.problem is not None:
                raise ValueError(mrow.problem)
            subject_id, study_id = int(row["subject_id"]), int(row["study_id"])
        except (ValueError, KeyError, TypeError) as err:
            listing.skipped.append(Skip(dicom_id or f"{meta_path.name}:{number}", "bad_csv_row", f"{meta_path}: row {number}: {err}"))
            known_ids.add(dicom_id)
            continue
        known_ids.add(dicom_id)
        folder = study_folder(subject_id, study_id)
        image_rel = folder / f"{dicom_id}.{image_extension}"
        view = (row.get("ViewPosition") or "").strip().upper()
        if not view:
            dicom_path = mimic_root / folder / f"{dicom_id}.dcm"
            if not dicom_path.is_file():
                reason = "missing_file" if image_extension == "dcm" else "unknown_view"
                listing.skipped.append(Skip(dicom_id, reason, f"no ViewPosition in {meta_path.name} and no {dicom_path}"))
                continue
            try:
                view = _view_from_header(dicom_path)
            except DicomReadError as err:
                listing.skipped.append(Skip(dicom_id, err.reason, str(err)))
                continue
            if not view:
                listing.skipped.append(Skip(dicom_id, "unknown_view", f"no ViewPosition in {meta_path.name} or {dicom_path}"))
                continue
        if view not in wanted_views:
            filtered["view_not_selected"] += 1
            continue
        split = split_of.get(dicom_id)
        if split is None and dicom_id in bad_split:
            listing.skipped.append(Skip(dicom_id, "bad_csv_row", bad_split[dicom_id]))
            continue
        if split is None:
            listing.skipped.append(Skip(dicom_id, "missing_split_row", f"{dicom_id} not in {split_path}"))
            continue
        if split not in OFFICIAL_SPLITS:
            listing.skipped.append(Skip(dicom_id, "bad_csv_row", f"{split_path}: split {split!r} for {dicom_id}"))
            continue
        if split not in listing.candidates:
            filtered["split_not_selected"] += 1
            continue
        if files.get(dicom_id) != image_rel:
            where = f"found at {files[dicom_id]}" if dicom_id in files else "not on disk"
            listing.skipped.append(Skip(dicom_id, "missing_file", f"{image_root / image_rel} {where}"))
            continue
        labels = labels_of.get((subject_id, study_id))
        if isinstance(labels, str):
            listing.skipped.append(Skip(dicom_id, "bad_csv_row", labels))
            continue
        listing.candidates[split].append(
            Candidate(
                dicom_id=dicom_id,
                subject_id=subject_id,
                study_id=study_id,
                split=split,
                view=view,
                image_path=image_root / image_rel,
                report_path=mimic_root / folder.parent / f"{folder.name}.txt",
                labels=labels if labels is not None else (None,) * len(CHEXPERT_LABELS),
                labels_found=labels is not None,
            )
        )
    for dicom_id in sorted(set(files) - known_ids):
        listing.skipped.append(Skip(dicom_id, "file_without_csv_row", f"{image_root / files[dicom_id]} not in {meta_path.name}"))
    for items in listing.candidates.values():
        items.sort(key=lambda c: (c.subject_id, c.study_id, c.dicom_id))
        if limit is not None and len(items) > limit:
            filtered["beyond_limit"] += len(items) - limit
            del items[limit:]
    listing.skipped.sort(key=lambda s: (s.reason, s.id))
    listing.filtered = filtered
    return listing
