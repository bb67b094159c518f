"""DICOM radiographs of downstream data sets (RSNA Pneumonia ships DICOMs), through the sharder's display chain.

``pipeline.dicom_pixels`` is the one implementation of the DICOM grayscale pipeline (modality LUT,
VOI LUT or window, else a percentile window, MONOCHROME1 inverted so that air is dark); the
evaluation reads with the sharder's defaults, so a film looks the same in training and evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.dicom_pixels import WindowSettings, dicom_to_unit
from pipeline.eval.adapters.base import ImageLoader

# The sharder's default window settings (configs/data/mimic.yaml: window.*); a test keeps the two equal.
EVAL_WINDOW = WindowSettings(use_file_voi=True, percentile_low=0.5, percentile_high=99.5)


def read_dicom(path: Path, window: WindowSettings | None = None) -> torch.Tensor:
    """Read a single-frame grayscale DICOM to float32 ``[1, H, W]`` in [0, 1], air dark (``window`` None: the default).

    Raises FileNotFoundError for a missing file, ValueError naming the file for one that cannot be read.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such DICOM file")
    unit, _, _ = dicom_to_unit(path, window or EVAL_WINDOW)
    return torch.from_numpy(unit).unsqueeze(0)


def dicom_loader(path: Path, window: WindowSettings | None = None) -> ImageLoader:
    """A zero-argument loader for one DICOM file (read when called; ``window`` None: :data:`EVAL_WINDOW`)."""
    return lambda: read_dicom(path, window)
