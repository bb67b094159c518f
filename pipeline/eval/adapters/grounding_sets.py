"""Grounding sets: finding phrases with their regions, from the phantom annotations or MS-CXR boxes.

Phantom: ``phantom_annotations.json`` written beside the phantom tree; each finding carries the
exact phrase of the report and a column-major (COCO-style, uncompressed) RLE mask in original
pixels, and the images come from a shard split (resized copies of the originals).
MS-CXR: the published box CSV (``dicom_id, label_text, category_name, x, y, w, h,
image_width, image_height`` [, ``path``]) over MIMIC-CXR-JPG images.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.eval.adapters.base import GroundingPhrase, GroundingSet, LabelledImages, file_loader
from pipeline.shard_format.coco_rle import decode_rle
from pipeline.shard_format.regions import Box, boxes_mask, resize_mask

MSCXR_COLUMNS = ("dicom_id", "label_text", "category_name", "x", "y", "w", "h", "image_width", "image_height")


def _rle_mask(rle: dict) -> Callable[[tuple[int, int]], np.ndarray]:
    """A mask function: decode the RLE and resize it to the loaded image's size."""
    return lambda size: resize_mask(decode_rle(rle), size)


def load_phantom_grounding(
    annotations_path: Path, images: LabelledImages, statuses: Sequence[str]
) -> GroundingSet:
    """Phrases of the findings (with the given statuses) drawn in the images of a shard split."""
    if not Path(annotations_path).is_file():
        raise FileNotFoundError(f"phantom annotations not found: {annotations_path}")
    annotations = json.loads(Path(annotations_path).read_text(encoding="utf-8"))["images"]
    texts = images.texts or [""] * len(images)
    out = GroundingSet(name="phantom", loaders={})
    for image_id, loader, text in zip(images.ids, images.loaders, texts):
        if image_id not in annotations:
            raise ValueError(f"{annotations_path}: no annotation for image {image_id!r}")
        for finding in annotations[image_id]["findings"]:
            # A phrase cut from the training text (e.g. FINDINGS dropped) cannot be grounded in it.
            if finding["status"] not in statuses or finding["phrase"] not in text:
                continue
            out.loaders[image_id] = loader
            out.phrases.append(
                GroundingPhrase(image_id, finding["phrase"], finding["label"], _rle_mask(finding["mask_rle"]))
            )
    return out


def _box_mask(boxes: list[Box], width: float, height: float) -> Callable[[tuple[int, int]], np.ndarray]:
    """A mask function: the union of (x, y, w, h) boxes given in a ``width`` x ``height`` image."""
    return lambda size: boxes_mask(boxes, width, height, size)


def _mimic_jpg_paths(jpg_root: Path) -> dict[str, Path]:
    """dicom_id -> JPG path from MIMIC-CXR-JPG's metadata CSV (plain or .gz)."""
    for name in ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"):
        path = jpg_root / name
        if path.is_file():
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", newline="", encoding="utf-8") as handle:
                return {
                    row["dicom_id"]: jpg_root / "files" / f"p{row['subject_id'][:2]}" / f"p{row['subject_id']}"
                    / f"s{row['study_id']}" / f"{row['dicom_id']}.jpg"
                    for row in csv.DictReader(handle)
                }
    raise FileNotFoundError(f"{jpg_root}: no mimic-cxr-2.0.0-metadata.csv(.gz) to locate MS-CXR images")


def load_ms_cxr(csv_path: Path, jpg_root: Path) -> GroundingSet:
    """MS-CXR phrases and boxes; images located by the CSV's ``path`` column or MIMIC-CXR-JPG metadata."""
    csv_path, jpg_root = Path(csv_path), Path(jpg_root)
    if not csv_path.is_file():
        raise FileNotFoundError(f"MS-CXR CSV not found: {csv_path}")
    groups: dict[tuple[str, str], dict] = {}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [c for c in MSCXR_COLUMNS if c not in fields]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}")
        lookup = None if "path" in fields else _mimic_jpg_paths(jpg_root)
        for line, row in enumerate(reader, start=2):
            try:
                box = tuple(float(row[c]) for c in ("x", "y", "w", "h"))
                width, height = float(row["image_width"]), float(row["image_height"])
            except ValueError as err:
                raise ValueError(f"{csv_path}:{line}: box or image size is not a number ({err})") from err
            dicom_id = row["dicom_id"]
            path = jpg_root / row["path"] if lookup is None else lookup.get(dicom_id)
            if path is None or not path.is_file():
                raise FileNotFoundError(f"{csv_path}:{line}: image for dicom_id {dicom_id!r} not found ({path})")
            group = groups.setdefault(
                (dicom_id, row["label_text"]),
                {"label": row["category_name"], "boxes": [], "size": (width, height), "path": path},
            )
            group["boxes"].append(box)
    out = GroundingSet(name="ms_cxr", loaders={})
    for (dicom_id, phrase), group in groups.items():
        out.loaders[dicom_id] = file_loader(group["path"])
        out.phrases.append(GroundingPhrase(dicom_id, phrase, group["label"], _box_mask(group["boxes"], *group["size"])))
    return out
