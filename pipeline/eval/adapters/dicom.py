"""DICOM radiographs of downstream data sets (RSNA Pneumonia ships DICOMs), through the sharder's display chain.

``pipeline.dicom_pixels`` is the one implementation of the DICOM grayscale pipeline (modality LUT,
VOI LUT or window, else a percentile window, MONOCHROME1 inverted so that air is dark); the
caller passes the display window the training shards were made with (their manifest's
``image.window``), so a film looks the same in training and evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.dicom_pixels import dicom_to_unit
from pipeline.eval.adapters.base import ImageLoader
from pipeline.shard_format import WindowSettings


def read_dicom(path: Path, window: WindowSettings) -> torch.Tensor:
    """Read a single-frame grayscale DICOM to float32 ``[1, H, W]`` in [0, 1], air dark, with ``window``.

    Raises FileNotFoundError for a missing file, ValueError naming the file for one that cannot be read.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such DICOM file")
    unit, _, _ = dicom_to_unit(path, window)
    return torch.from_numpy(unit).unsqueeze(0)


def dicom_loader(path: Path, window: WindowSettings) -> ImageLoader:
    """A zero-argument loader for one DICOM file (read when called)."""
    return lambda: read_dicom(path, window)
