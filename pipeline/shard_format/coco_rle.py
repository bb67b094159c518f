"""COCO-style uncompressed run-length encoding of binary masks (column-major, runs start with zeros).

The phantom generator writes finding masks with it and the grounding evaluation reads them back.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a 2-D boolean mask as ``{"size": [rows, cols], "counts": [int, ...]}`` (column-major)."""
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D mask, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode ``{"size": [rows, cols], "counts": [...]}`` to a boolean array of shape (rows, cols).

    Counts alternate runs of 0 and 1, starting with 0; ValueError when they do not cover rows x cols.
    """
    try:
        rows, cols = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not an uncompressed COCO RLE (need 'size' and integer 'counts'): {err}") from err
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() != rows * cols:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {rows} x {cols} = {rows * cols}")
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((rows, cols), order="F")


def mask_bbox(mask: np.ndarray) -> list[int]:
    """The box ``[x0, y0, x1, y1]`` of a non-empty mask in pixels (x1, y1 exclusive)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        raise ValueError("mask_bbox: empty mask")
    return [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]
