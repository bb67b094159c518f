"""Phantom segmentation/detection sets in SIIM-ACR, RSNA-Pneumonia and Object-CXR layouts (``--downstream``).

The images are new phantom chests drawn from their own random streams (``[seed, STREAM, set, i]``),
not studies of the MIMIC-layout tree, so pre-training never sees them. They are enriched: a
SIIM image holds a pneumothorax with probability ``SIIM_POSITIVE``, an RSNA image one or two
consolidations with probability ``RSNA_POSITIVE`` and an Object-CXR image objects with probability
``OBJECT_POSITIVE``, so 1 % of the labels (floored at ``dense.min_train`` images) still holds >= 8
positives.

- ``siim/``: ``train-rle.csv`` (``ImageId``, `` EncodedPixels``; Kaggle's relative column-major RLE
  at each DICOM's own Rows x Columns, one row per region, ``-1`` for none) and
  ``dicom-images-train/<study UID>/<series UID>/<ImageId>.dcm`` (8-bit MONOCHROME2).
- ``rsna/``: ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``: one row per
  consolidation's bounding box with Target 1, or one row with empty box cells and Target 0) and
  ``stage_2_train_images/<patientId>.dcm`` (8-bit MONOCHROME2, JPEG Baseline), patientIds UUIDs.
- ``object_cxr/``: ``train.csv`` / ``dev.csv`` (``image_name,annotation``; objects ``T x1 y1 ...``
  joined by ``;``) and ``train/`` / ``dev/`` JPGs. T = 0: a dense rectangle (a clip / generator
  box), 1: an ellipse given by its bounding box (a button / ECG electrode), 2: a polygon (the
  extreme points of a tube or line). Rectangles and ellipses span 8-14 % of the short side and
  tubes are 3 % of it wide, so at a 128 px input an object is >= 10 px and a tube >= 4 px.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from data_prep.phantom.anatomy import build_anatomy, ellipse_f, polyline_distance, soft
from data_prep.phantom.case import Finding
from data_prep.phantom.cohort import make_uid, stable_digest
from data_prep.phantom.dicom_io import jpeg_bytes, presentation_image, to_jpg_pixels, write_rsna_dicom
from data_prep.phantom.draw import draw_findings
from data_prep.phantom.tables import RSNA_COLUMNS, write_csv
from pipeline.shard_format.coco_rle import mask_bbox
from pipeline.shard_format.kaggle_rle import EMPTY, encode_kaggle_rle

STREAM = 0xD5E7
SIIM_POSITIVE = 0.6
RSNA_POSITIVE = 0.6
OBJECT_POSITIVE = 0.7
DEV_FRACTION = 0.2
TUBE_WIDTH = 0.03  # of the short side
OBJECT_SIDE = (0.08, 0.14)  # of the short side


def _chest(rng: np.random.Generator, size_range: tuple[int, int]):
    """A healthy PA/AP chest at a random Rows x Columns."""
    rows, cols = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    return build_anatomy(rng, "PA" if rng.random() < 0.6 else "AP", rows, cols, None)


def siim_case(seed: int, index: int, size_range: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One SIIM phantom: 8-bit display pixels ``[rows, cols]`` and its pneumothorax masks (none or one)."""
    rng = np.random.default_rng([seed, STREAM, 0, index])
    anatomy = _chest(rng, size_range)
    findings: tuple[Finding, ...] = ()
    if rng.random() < SIIM_POSITIVE:
        side, severity = ("left", "right")[int(rng.integers(2))], ("small", "large")[int(rng.integers(2))]
        findings = (Finding("pneumothorax", ("Pneumothorax",), "present", side, "upper", severity, None, None,
                            f"{severity} {side} pneumothorax"),)  # fmt: skip
    density, masks = draw_findings(rng, anatomy, findings)
    return to_jpg_pixels(presentation_image(rng, density)), [mask for _, mask in masks]


def rsna_case(seed: int, index: int, size_range: tuple[int, int]) -> tuple[np.ndarray, str, list[list[float]]]:
    """One RSNA phantom: 8-bit pixels, its view and a box ``[x0, y0, x1, y1]`` per consolidation (none, one or two)."""
    rng = np.random.default_rng([seed, STREAM, 2, index])
    anatomy = _chest(rng, size_range)
    findings: tuple[Finding, ...] = ()
    if rng.random() < RSNA_POSITIVE:
        sides = ("left", "right") if rng.random() < 0.3 else (("left", "right")[int(rng.integers(2))],)
        zones = [("upper", "mid", "lower")[int(rng.choice(3, p=(0.25, 0.25, 0.5)))] for _ in sides]
        findings = tuple(Finding("consolidation", ("Consolidation", "Pneumonia"), "present", side, zone, None, None,
                                 None, f"{side} {zone} consolidation") for side, zone in zip(sides, zones))  # fmt: skip
    density, masks = draw_findings(rng, anatomy, findings)
    boxes = [[float(v) for v in mask_bbox(mask)] for _, mask in masks]
    return to_jpg_pixels(presentation_image(rng, density)), anatomy.view, boxes


def _extreme_points(mask: np.ndarray) -> list[float]:
    """Top, right, bottom and left extreme pixels of a mask as a polygon ``x1 y1 ... x4 y4`` (its bounding box)."""
    ys, xs = np.nonzero(mask)
    picks = (np.argmin(ys), np.argmax(xs), np.argmax(ys), np.argmin(xs))
    ends = ((0, 0), (1, 0), (0, 1), (0, 0))  # exclusive right/bottom edges
    return [float(v) for i, (dx, dy) in zip(picks, ends) for v in (xs[i] + dx, ys[i] + dy)]


def object_case(seed: int, index: int, size_range: tuple[int, int]) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One Object-CXR phantom: 8-bit pixels and its objects ``(type, coordinates)`` in pixels."""
    rng = np.random.default_rng([seed, STREAM, 1, index])
    anatomy = _chest(rng, size_range)
    g = anatomy.grid
    density = anatomy.density.copy()
    objects = []
    count = int(rng.integers(1, 3)) if rng.random() < OBJECT_POSITIVE else 0
    for _ in range(count):
        kind = int(rng.integers(3))
        short = min(g.rows, g.cols)
        if kind == 2:
            path = anatomy.airway() if rng.random() < 0.5 else anatomy.line_path(("left", "right")[int(rng.integers(2))],
                                                                                  picc=bool(rng.random() < 0.5))  # fmt: skip
            field = polyline_distance(g.x, g.y, path) - TUBE_WIDTH * short * g.px / 2
        else:
            half_w, half_h = (rng.uniform(*OBJECT_SIDE, size=2) * short * g.px / 2)
            cx, cy = rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.6)
            if kind == 0:
                field = np.maximum(np.abs(g.x - cx) - half_w, np.abs(g.y - cy) - half_h)
            else:
                field = ellipse_f(g.x, g.y, cx, cy, half_w, half_h) * min(half_w, half_h)
        shape = soft(field, 1.0 * g.px)
        mask = shape > 0.5
        if not mask.any():
            continue
        density += (0.97 - density) * shape
        ys, xs = np.nonzero(mask)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        objects.append((kind, _extreme_points(mask) if kind == 2 else box))
    return to_jpg_pixels(presentation_image(rng, density)), objects


def write_siim(root: Path, seed: int, count: int, size_range: tuple[int, int]) -> None:
    """``root/train-rle.csv`` and ``root/dicom-images-train/<study>/<series>/<ImageId>.dcm``."""
    rows = []
    for i in range(count):
        pixels, masks = siim_case(seed, i, size_range)
        image_id = make_uid(seed, "siim-image", i)
        path = root / "dicom-images-train" / make_uid(seed, "siim-study", i) / make_uid(seed, "siim-series", i)
        write_rsna_dicom(path / f"{image_id}.dcm", pixels, seed=seed, patient_id=image_id, view="PA", sex="F", age=50)
        rles = [encode_kaggle_rle(m) for m in masks] or [EMPTY]
        rows += [{"ImageId": image_id, " EncodedPixels": f" {rle}"} for rle in rles]
    write_csv(root / "train-rle.csv", ("ImageId", " EncodedPixels"), rows)


def write_rsna(root: Path, seed: int, count: int, size_range: tuple[int, int]) -> None:
    """``root/stage_2_train_labels.csv`` and ``root/stage_2_train_images/<patientId>.dcm``."""
    rows = []
    for i in range(count):
        pixels, view, boxes = rsna_case(seed, i, size_range)
        patient_id = str(uuid.UUID(bytes=stable_digest("rsna-dense", seed, i)[:16], version=4))
        sex, age = ("F", "M")[i % 2], 20 + (i * 7) % 70
        write_rsna_dicom(root / "stage_2_train_images" / f"{patient_id}.dcm", pixels, seed=seed,
                         patient_id=patient_id, view=view, sex=sex, age=age)  # fmt: skip
        rows += [{"patientId": patient_id, "x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0, "Target": 1}
                 for x0, y0, x1, y1 in boxes] or [
                    {"patientId": patient_id, "x": "", "y": "", "width": "", "height": "", "Target": 0}]  # fmt: skip
    write_csv(root / "stage_2_train_labels.csv", RSNA_COLUMNS, rows)


def write_object_cxr(root: Path, seed: int, count: int, size_range: tuple[int, int]) -> None:
    """``root/train.csv``, ``root/dev.csv`` and their ``train/`` / ``dev/`` JPGs (the last ``DEV_FRACTION`` is dev)."""
    first_dev = count - round(count * DEV_FRACTION)
    tables: dict[str, list[dict]] = {"train": [], "dev": []}
    for i in range(count):
        pixels, objects = object_case(seed, i, size_range)
        split = "dev" if i >= first_dev else "train"
        name = f"{i + 1:05d}.jpg"
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / name).write_bytes(jpeg_bytes(pixels))
        cell = ";".join(" ".join([str(kind), *(f"{v:g}" for v in coords)]) for kind, coords in objects)
        tables[split].append({"image_name": name, "annotation": cell})
    for split, rows in tables.items():
        write_csv(root / f"{split}.csv", ("image_name", "annotation"), rows)


def write_dense_sets(downstream: Path, seed: int, count: int, size_range: tuple[int, int]) -> None:
    """The three sets, ``count`` images each, under ``downstream/siim``, ``downstream/rsna`` and ``downstream/object_cxr``."""
    write_siim(downstream / "siim", seed, count, size_range)
    write_rsna(downstream / "rsna", seed, count, size_range)
    write_object_cxr(downstream / "object_cxr", seed, count, size_range)
