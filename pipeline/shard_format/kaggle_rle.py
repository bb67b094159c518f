"""The SIIM-ACR (Kaggle) pneumothorax RLE: relative (start, length) pairs over the column-major flattened mask.

A run's start counts from the end of the previous run (the first from pixel 0), and pixels are
numbered down each column first, the way Kaggle's ``mask2rle``/``rle2mask`` do it
(``reshape(width, height).T``). ``-1`` means an empty mask.
"""

from __future__ import annotations

import numpy as np

EMPTY = "-1"


def encode_kaggle_rle(mask: np.ndarray) -> str:
    """Encode a 2-D bool mask ``[rows, cols]`` as the Kaggle relative RLE; an empty mask gives ``"-1"``."""
    if mask.ndim != 2:
        raise ValueError(f"encode_kaggle_rle expects a 2-D mask, got shape {mask.shape}")
    flat = np.concatenate(([False], np.asarray(mask, dtype=bool).ravel(order="F"), [False]))
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    if edges.size == 0:
        return EMPTY
    starts, ends = edges[0::2], edges[1::2]
    previous_end = np.concatenate(([0], ends[:-1]))
    pairs = np.stack([starts - previous_end, ends - starts], axis=1).ravel()
    return " ".join(str(int(v)) for v in pairs)


def parse_kaggle_rle(text: str) -> np.ndarray:
    """``[k, 2]`` absolute (start, length) runs of an RLE string; ValueError says what is wrong."""
    text = text.strip()
    if text == EMPTY or text == "":
        return np.zeros((0, 2), dtype=np.int64)
    try:
        values = np.asarray([int(v) for v in text.split()], dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"RLE holds a non-integer ({err})") from None
    if values.size % 2:
        raise ValueError(f"RLE has an odd number of values ({values.size}); it must be (start, length) pairs")
    pairs = values.reshape(-1, 2)
    if (pairs[:, 1] <= 0).any() or (pairs[:, 0] < 0).any() or (pairs[1:, 0] == 0).any():
        raise ValueError("RLE has a negative start, a non-positive length or two touching runs")
    lengths = pairs[:, 1]
    ends_before = np.concatenate(([0], np.cumsum(pairs[:-1, 0] + lengths[:-1])))
    return np.stack([ends_before + pairs[:, 0], lengths], axis=1)


def decode_kaggle_rle(text: str, rows: int, cols: int) -> np.ndarray:
    """Decode a Kaggle RLE to a bool mask ``[rows, cols]``; ValueError when a run passes the image's end."""
    runs = parse_kaggle_rle(text)
    total = rows * cols
    if runs.size and int(runs[-1].sum()) > total:
        raise ValueError(f"RLE runs to pixel {int(runs[-1].sum())} but the image has {rows} x {cols} = {total}")
    flat = np.zeros(total + 1, dtype=np.int32)
    np.add.at(flat, runs[:, 0], 1)
    np.add.at(flat, runs[:, 0] + runs[:, 1], -1)
    return (np.cumsum(flat[:-1]) > 0).reshape(cols, rows).T
