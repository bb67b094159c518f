"""Ground-truth regions in an image of another size: nearest-neighbour mask resize and pixel boxes as masks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]  # (x, y, width, height) in the pixels of the annotated image


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``size`` = (rows, cols), sampling pixel centres."""
    rows, cols = size
    src_rows = np.minimum(((np.arange(rows) + 0.5) * mask.shape[0] / rows).astype(np.int64), mask.shape[0] - 1)
    src_cols = np.minimum(((np.arange(cols) + 0.5) * mask.shape[1] / cols).astype(np.int64), mask.shape[1] - 1)
    return mask[np.ix_(src_rows, src_cols)]


def boxes_mask(boxes: Sequence[Box], width: float, height: float, size: tuple[int, int]) -> np.ndarray:
    """The union of (x, y, w, h) boxes of a ``width`` x ``height`` image as a bool mask of ``size`` = (rows, cols)."""
    rows, cols = size
    ys = (np.arange(rows) + 0.5) * height / rows
    xs = (np.arange(cols) + 0.5) * width / cols
    out = np.zeros((rows, cols), dtype=bool)
    for x, y, w, h in boxes:  # a handful of boxes per phrase
        out |= ((ys >= y) & (ys < y + h))[:, None] & ((xs >= x) & (xs < x + w))[None, :]
    return out
