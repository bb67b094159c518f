"""What every data-set adapter returns: labelled images and grounding phrases, read lazily."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.data.transforms import decode_image

Task = Literal["multilabel", "binary", "multiclass"]
ImageLoader = Callable[[], torch.Tensor]  # -> float32 [1, H, W] in [0, 1], air dark


def read_image_file(path: Path) -> torch.Tensor:
    """Read a PNG/JPG file to float32 ``[1, H, W]`` in [0, 1] (0 = dark), via the training decoder."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return decode_image(path.read_bytes(), path.suffix.lstrip("."))
    except Exception as err:  # PIL raises several unrelated types for broken files
        raise ValueError(f"{path}: not a readable grey PNG/JPG image ({err})") from err


def file_loader(path: Path) -> ImageLoader:
    """A zero-argument loader for one PNG/JPG file (read when called)."""
    return lambda: read_image_file(path)


@dataclass
class LabelledImages:
    """Images with labels for one split of one data set.

    ``labels`` is ``[n, K]`` float (1/0, NaN = missing) for ``multilabel`` and ``binary``
    (K = 1) tasks, and ``[n]`` int64 class indices into ``label_names`` for ``multiclass``.
    """

    name: str
    ids: list[str]
    loaders: list[ImageLoader]
    labels: np.ndarray
    label_names: list[str]
    task: Task
    texts: list[str] | None = None
    meta: list[dict] | None = None  # per-sample metadata where the source has it (shard json)

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.loaders) == len(self.labels)):
            raise ValueError(
                f"{self.name}: {len(self.ids)} ids, {len(self.loaders)} images and {len(self.labels)} labels differ"
            )
        if self.texts is not None and len(self.texts) != len(self.ids):
            raise ValueError(f"{self.name}: {len(self.texts)} texts for {len(self.ids)} images")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"{self.name}: duplicate sample ids")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledImages:
        """The samples at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return LabelledImages(
            name=self.name,
            ids=[self.ids[i] for i in idx],
            loaders=[self.loaders[i] for i in idx],
            labels=self.labels[idx],
            label_names=list(self.label_names),
            task=self.task,
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            meta=None if self.meta is None else [self.meta[i] for i in idx],
        )


@dataclass
class GroundingPhrase:
    """One finding phrase of one image with its ground-truth region (``mask`` in the image's pixels)."""

    image_id: str
    phrase: str
    label: str
    mask: Callable[[tuple[int, int]], np.ndarray]  # (rows, cols) of the loaded image -> bool [rows, cols]


@dataclass
class GroundingSet:
    """Images and the phrases to ground in them."""

    name: str
    loaders: dict[str, ImageLoader]
    phrases: list[GroundingPhrase] = field(default_factory=list)
