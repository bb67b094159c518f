"""SIIM-ACR Pneumothorax in its published layout: ``train-rle.csv`` + ``dicom-images-train/<study>/<series>/<ImageId>.dcm``.

The CSV has columns ``ImageId`` and `` EncodedPixels`` (with a leading space, as published); one
row per pneumothorax region, ``-1`` for an image without one. Regions of one image are united.
The RLE is Kaggle's relative, column-major one (``pipeline/shard_format/kaggle_rle.py``).
A row whose DICOM is missing is skipped and counted (the published set has a few); a malformed
RLE or one longer than its image is an error naming the file, line and column.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.eval.adapters.dense import DenseImages, MaskLoader, dicom_size
from pipeline.eval.adapters.dicom import dicom_loader
from pipeline.shard_format.kaggle_rle import decode_kaggle_rle, parse_kaggle_rle

LABELS_FILE = "train-rle.csv"
IMAGES_DIR = "dicom-images-train"
ID_COLUMN, RLE_COLUMN = "ImageId", " EncodedPixels"


def _union_mask(rles: list[str], size: tuple[int, int]) -> MaskLoader:
    """A mask loader: the union of the RLE regions at ``size``."""

    def mask() -> np.ndarray:
        out = np.zeros(size, dtype=bool)
        for rle in rles:  # one to a few regions per image
            out |= decode_kaggle_rle(rle, *size)
        return out

    return mask


def load_siim(root: Path) -> DenseImages:
    """Read the labelled SIIM pool: one union mask per ImageId, in CSV order (missing DICOMs skipped, counted)."""
    root = Path(root)
    csv_path = root / LABELS_FILE
    if not csv_path.is_file():
        raise FileNotFoundError(f"SIIM labels file not found: {csv_path}")
    dicoms = {p.stem: p for p in (root / IMAGES_DIR).glob("*/*/*.dcm")}
    regions: dict[str, list[str]] = {}
    lines: dict[str, int] = {}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (ID_COLUMN, RLE_COLUMN) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing} (has {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            image_id, rle = row[ID_COLUMN].strip(), (row[RLE_COLUMN] or "").strip()
            try:
                parse_kaggle_rle(rle)
            except ValueError as err:
                raise ValueError(f"{csv_path}:{line} column {RLE_COLUMN!r}: {err}") from None
            lines.setdefault(image_id, line)
            regions.setdefault(image_id, [])
            if rle != "-1":
                regions[image_id].append(rle)
    if not regions:
        raise ValueError(f"{csv_path}: no rows")
    ids, loaders, sizes, masks, skipped = [], [], [], [], 0
    for image_id, rles in regions.items():
        path = dicoms.get(image_id)
        if path is None:
            skipped += 1
            continue
        size = dicom_size(path)
        for rle in rles:
            runs = parse_kaggle_rle(rle)
            if runs.size and int(runs[-1].sum()) > size[0] * size[1]:
                raise ValueError(f"{csv_path}:{lines[image_id]} column {RLE_COLUMN!r}: mask of {image_id} runs past "
                                 f"its {size[0]} x {size[1]} image {path}")  # fmt: skip
        ids.append(image_id)
        loaders.append(dicom_loader(path))
        sizes.append(size)
        masks.append(_union_mask(rles, size))
    if not ids:
        raise FileNotFoundError(f"{csv_path}: none of its {len(regions)} images is under {root / IMAGES_DIR}")
    return DenseImages("siim", ids, loaders, sizes, masks=masks, skipped={"missing_image": skipped})
