"""DICOM radiograph -> display image: modality LUT, VOI LUT / window / percentile window, polarity, resize.

The order follows the DICOM grayscale pipeline (PS3.3 C.11): stored values -> modality LUT (or
Rescale Slope/Intercept) -> VOI LUT (or Window Center/Width; else a robust percentile window)
-> MONOCHROME1 inversion so that air is always dark -> [0, 1]. For integer pixel data the whole
chain is evaluated once per possible stored value and applied as one lookup table (exact, and
fast on 2500 x 3000 films); the percentile window comes from the histogram of stored values.
The [0, 1] image is resized (short side to the target, aspect kept, Lanczos with antialiasing)
and then quantised to the output bit depth. Every step is recorded in a ``transform`` dict.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut, apply_voi

from pipeline.shard_format.manifest import WindowSettings

RESIZE_FILTER = "lanczos"
_MAX_LUT_BITS = 16
# glibc mallopt parameters (malloc.h) and the values tune_allocator sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 512 << 20
_TRIM_THRESHOLD_BYTES = 1 << 30


class DicomReadError(ValueError):
    """A DICOM file that cannot be read or decoded; ``reason`` is a short skip reason."""

    def __init__(self, path: str | Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {reason}: {detail}")
        self.path, self.reason, self.detail = str(path), reason, detail


def tune_allocator() -> bool:
    """Keep a film's large buffers on the heap for reuse (glibc only); True when the setting took.

    An 8 MP film passes through ~10 arrays of 15-60 MB (stored values, display values, resize
    copies). glibc serves blocks that large with a fresh ``mmap`` and unmaps them on ``free``, so
    every film page-faults its ~100 MB in again (~14,000 faults, ~35 ms of kernel time per film,
    more than the LUT and PNG together). Raising the mmap and trim thresholds lets each process
    reuse one warm heap. It costs memory only up to the process's peak (a few hundred MB).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
        )
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the defaults
        return False


def read_dicom(path: str | Path, header_only: bool = False) -> Dataset:
    """Read a DICOM file; raise :class:`DicomReadError` (reason ``unreadable_dicom``) naming the file."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DicomReadError(path, "unreadable_dicom", f"{type(err).__name__}: {err}") from err


def decode_pixels(ds: Dataset, path: str | Path) -> np.ndarray:
    """The stored pixel values of a single-frame grayscale image (2-D array), via pydicom's pixel handlers."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown"))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomReadError(path, "unsupported_image", f"PhotometricInterpretation {photometric!r}")
    try:
        arr = ds.pixel_array
    except NotImplementedError as err:
        raise DicomReadError(path, "unsupported_transfer_syntax", f"{syntax}: {err}") from err
    except RuntimeError as err:
        if "missing dependencies" in str(err) or "no pixel data handler" in str(err).lower():
            raise DicomReadError(path, "unsupported_transfer_syntax", f"{syntax}: {err}") from err
        raise DicomReadError(path, "unreadable_dicom", f"{syntax}: {type(err).__name__}: {err}") from err
    except Exception as err:  # noqa: BLE001 - any decoder failure is a skip naming the file
        raise DicomReadError(path, "unreadable_dicom", f"{syntax}: {type(err).__name__}: {err}") from err
    if arr.ndim != 2:
        raise DicomReadError(path, "unsupported_image", f"expected one 2-D frame, got shape {arr.shape}")
    return arr


def _window_to_unit(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Window Center/Width per PS3.3 C.11.2.1.2-3, mapped onto [0, 1] (float64)."""
    values = values.astype(np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"Window Width {width} must be > 0 for SIGMOID")
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"Window Width {width} must be >= 1 for LINEAR")
        center, width = center - 0.5, width - 1.0
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"Window Width {width} must be > 0 for LINEAR_EXACT")
    else:
        raise ValueError(f"unsupported VOI LUT Function {function!r}")
    if width == 0:  # LINEAR with width 1: a threshold
        return (values > center).astype(np.float64)
    out = (values - center) / width + 0.5
    out[values <= center - width / 2] = 0.0
    out[values > center + width / 2] = 1.0
    return np.clip(out, 0.0, 1.0)


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DS element."""
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, (str, bytes)):
        return float(value[0])
    return float(value)


def _weighted_percentiles(values: np.ndarray, counts: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    """Percentiles (inverted-CDF, as ``np.percentile(method="inverted_cdf")``) of values with multiplicities."""
    order = np.argsort(values, kind="stable")
    values, counts = values[order], counts[order]
    cum = np.cumsum(counts, dtype=np.int64)
    total = cum[-1]
    out = []
    for pct in q:
        rank = max(int(np.ceil(pct / 100.0 * total)), 1)
        out.append(float(values[np.searchsorted(cum, rank)]))
    return out[0], out[1]


def stored_histogram(stored: np.ndarray, offset: int, size: int, rows_per_chunk: int = 256) -> np.ndarray:
    """Counts of each stored value (+ offset), in row chunks (no full-size index array)."""
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, stored.shape[0], rows_per_chunk):
        chunk = stored[start : start + rows_per_chunk].ravel()
        counts += np.bincount(chunk.astype(np.int32) + offset if offset else chunk, minlength=size)
    return counts


def display_lut(ds: Dataset, stored: np.ndarray, window: WindowSettings) -> tuple[np.ndarray, int, dict[str, Any]]:
    """A float32 lookup table from stored value (+ offset) to display value in [0, 1] and the offset.

    ``lut[stored + offset]`` is the display value; air is dark (MONOCHROME1 inverted).
    """
    bits = int(ds.get("BitsAllocated", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if bits > _MAX_LUT_BITS or stored.dtype.kind not in "ui":
        raise ValueError(f"{bits}-bit {stored.dtype} pixel data has no lookup-table path")
    offset = 2 ** (bits - 1) if signed else 0
    domain = np.arange(2**bits, dtype=np.int64) - offset
    modality = apply_modality_lut(domain, ds)
    transform: dict[str, Any] = {}
    if ds.get("ModalityLUTSequence"):
        transform["modality"] = {"kind": "modality_lut"}
    elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
        transform["modality"] = {
            "kind": "rescale",
            "slope": float(ds.get("RescaleSlope", 1.0)),
            "intercept": float(ds.get("RescaleIntercept", 0.0)),
        }
    else:
        transform["modality"] = {"kind": "identity"}

    if window.use_file_voi and ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        depth = int(item.LUTDescriptor[2])
        unit = apply_voi(np.rint(modality).astype(np.int64), ds, index=0).astype(np.float64) / (2**depth - 1)
        transform["voi"] = {"kind": "voi_lut", "lut_bits": depth}
    elif window.use_file_voi and "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        unit = _window_to_unit(modality, center, width, function)
        transform["voi"] = {"kind": "window", "center": center, "width": width, "function": function}
    else:
        counts = stored_histogram(stored, offset, 2**bits)
        present = counts > 0
        low, high = _weighted_percentiles(
            modality[present], counts[present], (window.percentile_low, window.percentile_high)
        )
        if high <= low:
            raise ValueError(f"constant image: modality values {low}..{high} inside the percentile window")
        unit = np.clip((modality - low) / (high - low), 0.0, 1.0)
        transform["voi"] = {
            "kind": "percentile",
            "percentiles": [window.percentile_low, window.percentile_high],
            "values": [low, high],
        }
    photometric = str(ds.PhotometricInterpretation)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    transform["photometric"] = photometric
    transform["inverted"] = photometric == "MONOCHROME1"
    return unit.astype(np.float32), offset, transform


def apply_lut(lut: np.ndarray, stored: np.ndarray, offset: int, rows_per_chunk: int = 64) -> np.ndarray:
    """``lut[stored + offset]`` computed in row chunks (no full-size index array; ~2x faster on 8 MP films)."""
    info = np.iinfo(stored.dtype)
    # When every value of the dtype indexes the table, no index can be out of range and "wrap" is exact; it
    # skips the bounds check and the buffered copy of ``out`` that np.take makes in its default "raise" mode
    # (~25% of the lookup on a 2500 x 3000 film). Otherwise keep "raise", so a bad index is an error.
    mode = "wrap" if info.min + offset >= 0 and info.max + offset < lut.size else "raise"
    out = np.empty(stored.shape, dtype=lut.dtype)
    for start in range(0, stored.shape[0], rows_per_chunk):
        chunk = stored[start : start + rows_per_chunk]
        np.take(lut, chunk.astype(np.int32) + offset if offset else chunk, out=out[start : start + rows_per_chunk], mode=mode)
    return out


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a float32 2-D image so its short side is ``size`` (aspect kept, Lanczos, antialiased)."""
    rows, cols = image.shape
    scale = size / min(rows, cols)
    new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    if (new_rows, new_cols) == (rows, cols):
        return image.astype(np.float32, copy=False)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return np.asarray(pil.resize((new_cols, new_rows), Image.Resampling.LANCZOS), dtype=np.float32)


def quantize(unit: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] float image -> uint8 (bits=8) or uint16 (bits=16), rounded, clipped."""
    top = 2**bits - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.clip(np.rint(unit * top), 0, top).astype(dtype)


def dicom_to_unit(
    path: str | Path, window: WindowSettings, ds: Dataset | None = None
) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """Read one DICOM radiograph to display values: (float32 [H, W] in [0, 1], air dark; transform; stored pixels).

    Raises :class:`DicomReadError` with a skip reason for unreadable, undecodable or blank files.
    """
    ds = read_dicom(path) if ds is None else ds
    stored = decode_pixels(ds, path)
    try:
        lut, offset, transform = display_lut(ds, stored, window)
    except (ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as err:
        reason = "blank_image" if "constant image" in str(err) else "unsupported_image"
        raise DicomReadError(path, reason, str(err)) from err
    transform["bits_stored"] = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    return apply_lut(lut, stored, offset), transform, stored


def dicom_to_image(
    path: str | Path, size: int, bits: int, window: WindowSettings, ds: Dataset | None = None
) -> tuple[np.ndarray, dict[str, Any], tuple[int, int]]:
    """Read and render one DICOM radiograph: (uint8/uint16 image, transform, original (rows, cols)).

    Raises :class:`DicomReadError` with a skip reason for unreadable, undecodable or blank files.
    """
    unit, transform, stored = dicom_to_unit(path, window, ds)
    resized = resize_short_side(unit, size)
    transform["resize"] = {"from": list(stored.shape), "to": list(resized.shape), "filter": RESIZE_FILTER}
    transform["output_bits"] = bits
    return quantize(resized, bits), transform, (int(stored.shape[0]), int(stored.shape[1]))
