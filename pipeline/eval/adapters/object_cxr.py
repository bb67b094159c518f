"""Object-CXR (foreign objects) in its published layout: ``train.csv`` / ``dev.csv`` + ``train/`` / ``dev/`` JPGs.

Each CSV row is ``image_name,annotation``; the annotation lists objects separated by ``;``, each
``T x1 y1 x2 y2 ...``: T = 0 a rectangle (two corners), 1 an ellipse (its bounding box's corners),
2 a polygon (its points). Every object becomes its bounding box. An empty annotation is an image
without objects. ``dev`` is the test split (as in MGCA); validation is carved out of ``train``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.eval.adapters.base import file_loader
from pipeline.eval.adapters.dense import DenseImages, boxes_mask, check_box

SPLITS = ("train", "dev")
SHAPES = {0: "rectangle", 1: "ellipse", 2: "polygon"}


def parse_annotation(text: str) -> list[tuple[int, list[float]]]:
    """``[(type, bounding box x1, y1, x2, y2), ...]`` of one annotation cell; ValueError says what is wrong."""
    objects = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        fields = part.split()
        try:
            kind, coords = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(f"object {part!r} is not 'T x1 y1 x2 y2 ...' numbers") from None
        if kind not in SHAPES:
            raise ValueError(f"object {part!r}: type {kind} is not 0 (rectangle), 1 (ellipse) or 2 (polygon)")
        if len(coords) % 2 or len(coords) < (6 if kind == 2 else 4) or (kind != 2 and len(coords) != 4):
            raise ValueError(f"object {part!r}: a {SHAPES[kind]} needs {'>= 3 points' if kind == 2 else '2 points'}")
        xs, ys = coords[0::2], coords[1::2]
        objects.append((kind, [min(xs), min(ys), max(xs), max(ys)]))
    return objects


def load_object_cxr(root: Path, split: str) -> DenseImages:
    """Read ``root/<split>.csv``: one image per row with the bounding boxes of its objects (masks from the boxes).

    A missing image or an object outside its image is skipped and counted; a malformed cell is an error.
    """
    if split not in SPLITS:
        raise ValueError(f"Object-CXR split must be one of {SPLITS}, got {split!r}")
    csv_path = Path(root) / f"{split}.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"Object-CXR split file not found: {csv_path}")
    ids, loaders, sizes, boxes = [], [], [], []
    skipped = {"missing_image": 0, "object_outside_image": 0}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("image_name", "annotation") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}")
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line} column 'annotation'"
            try:
                objects = parse_annotation(row["annotation"] or "")
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            path = Path(root) / split / row["image_name"].strip()
            if not path.is_file():
                skipped["missing_image"] += 1
                continue
            with Image.open(path) as img:
                size = (img.height, img.width)
            kept = [b for b in (check_box(box, size, where) for _, box in objects) if b is not None]
            skipped["object_outside_image"] += len(objects) - len(kept)
            ids.append(row["image_name"].strip())
            loaders.append(file_loader(path))
            sizes.append(size)
            boxes.append(np.asarray(kept, dtype=np.float64).reshape(-1, 4))
    if not ids:
        raise FileNotFoundError(f"{csv_path}: none of its images is under {Path(root) / split}")
    masks = [boxes_mask(b, s) for b, s in zip(boxes, sizes)]
    return DenseImages(f"object_cxr/{split}", ids, loaders, sizes, boxes=boxes, masks=masks, skipped=skipped)
