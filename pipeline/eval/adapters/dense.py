"""What the segmentation and detection adapters return: images with masks and/or boxes, read lazily."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.dicom_pixels import read_dicom as read_dicom_file
from pipeline.eval.adapters.base import ImageLoader

MaskLoader = Callable[[], np.ndarray]  # -> bool [rows, cols] at the image's own size


@dataclass
class DenseImages:
    """Images of one split with their regions: ``boxes[i]`` ``[k, 4]`` (x1, y1, x2, y2 in the image's pixels)
    and/or ``masks[i]`` (a loader of the bool mask at the image's size). ``skipped`` counts dropped rows/objects."""

    name: str
    ids: list[str]
    loaders: list[ImageLoader]
    sizes: list[tuple[int, int]]  # (rows, cols) of each image as stored
    boxes: list[np.ndarray] | None = None
    masks: list[MaskLoader] | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for what, items in (("images", self.loaders), ("sizes", self.sizes), ("boxes", self.boxes),
                            ("masks", self.masks)):  # fmt: skip
            if items is not None and len(items) != n:
                raise ValueError(f"{self.name}: {len(items)} {what} for {n} ids")
        if len(set(self.ids)) != n:
            raise ValueError(f"{self.name}: duplicate image ids")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def positive(self) -> np.ndarray:
        """``[n]`` bool: does the image hold at least one box (or, without boxes, a non-empty mask)?"""
        if self.boxes is not None:
            return np.asarray([len(b) > 0 for b in self.boxes], dtype=bool)
        return np.asarray([m().any() for m in self.masks], dtype=bool)

    def subset(self, indices: Sequence[int] | np.ndarray) -> DenseImages:
        """The images at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        pick = (lambda items: None if items is None else [items[i] for i in idx])  # noqa: E731
        return DenseImages(self.name, pick(self.ids), pick(self.loaders), pick(self.sizes), pick(self.boxes),
                           pick(self.masks), dict(self.skipped))  # fmt: skip

    def by_ids(self, ids: Sequence[str]) -> DenseImages:
        """The images named by ``ids``."""
        position = {sample_id: i for i, sample_id in enumerate(self.ids)}
        return self.subset([position[i] for i in ids])


def dicom_size(path: Path) -> tuple[int, int]:
    """(Rows, Columns) from a DICOM header (pixels not read)."""
    ds = read_dicom_file(path, header_only=True)
    return int(ds.Rows), int(ds.Columns)


def boxes_mask(boxes: np.ndarray, size: tuple[int, int]) -> MaskLoader:
    """A mask loader: the union of ``[k, 4]`` x1, y1, x2, y2 boxes rasterised at ``size`` (pixel centres inside)."""

    def mask() -> np.ndarray:
        rows, cols = size
        ys, xs = np.arange(rows) + 0.5, np.arange(cols) + 0.5
        inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] < boxes[:, 3:4])  # [k, rows]
        inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] < boxes[:, 2:3])  # [k, cols]
        return (inside_y[:, :, None] & inside_x[:, None, :]).any(axis=0)

    return mask


def check_box(box: Sequence[float], size: tuple[int, int], where: str) -> np.ndarray | None:
    """A box as float64 x1, y1, x2, y2, or None when it lies outside ``size`` = (rows, cols) or is empty.

    A box crossing the border by up to one pixel is clipped (rounding in the published CSVs).
    """
    rows, cols = size
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(np.isfinite([x1, y1, x2, y2])):
        raise ValueError(f"{where}: box {box} is not finite")
    if x2 <= x1 or y2 <= y1 or x1 < -1 or y1 < -1 or x2 > cols + 1 or y2 > rows + 1:
        return None
    return np.asarray([max(x1, 0.0), max(y1, 0.0), min(x2, cols), min(y2, rows)], dtype=np.float64)
