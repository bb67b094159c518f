"""A small DICOM radiograph reader for downstream data sets (RSNA Pneumonia ships DICOMs).

Pixels are processed in the standard order: modality LUT (rescale slope/intercept), the VOI LUT
or window when the file has one (else a percentile window), MONOCHROME1 inversion so that air
is always dark, then scaling to [0, 1]. The sharder's reader (``data_prep.dicom_pixels``) follows the
same order with more options; ``pipeline`` may not import ``data_prep`` (data flows one way),
so this one stays small and is kept consistent with it by tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from pipeline.eval.adapters.base import ImageLoader

PERCENTILE_WINDOW = (0.5, 99.5)


def read_dicom(path: Path) -> torch.Tensor:
    """Read a single-frame grayscale DICOM to float32 ``[1, H, W]`` in [0, 1], air dark."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except FileNotFoundError:
        raise
    except Exception as err:  # pydicom raises many types for broken or unsupported files
        raise ValueError(f"{path}: cannot decode DICOM pixels ({err})") from err
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or pixels.ndim != 2:
        raise ValueError(
            f"{path}: expected a single-frame MONOCHROME1/2 image, got {photometric} with shape {pixels.shape}"
        )
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds and "VOILUTSequence" not in ds:
        # A window maps onto a fixed output range; probing it with extremes recovers that range.
        low, high = np.asarray(apply_voi_lut(np.array([-1e30, 1e30]), ds, index=0), dtype=np.float64)
        values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
    elif "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0), dtype=np.float64)
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    else:
        low, high = np.percentile(values, PERCENTILE_WINDOW)
    span = high - low
    scaled = np.clip((values - low) / span, 0.0, 1.0) if span > 0 else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return torch.from_numpy(scaled.astype(np.float32)).unsqueeze(0)


def dicom_loader(path: Path) -> ImageLoader:
    """A zero-argument loader for one DICOM file (read when called)."""
    return lambda: read_dicom(path)
