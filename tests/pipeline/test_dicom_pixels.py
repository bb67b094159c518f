"""DICOM display pipeline: the lookup-table path against float64 references built from pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi, apply_windowing

from pipeline.dicom_pixels import (
    DicomReadError,
    WindowSettings,
    _window_to_unit,
    apply_lut,
    decode_pixels,
    dicom_to_image,
    display_lut,
    read_dicom,
    resize_short_side,
)
from tests.data_prep.mimic_layout import chest_brightness, write_dicom

FILE_VOI = WindowSettings(use_file_voi=True, percentile_low=0.5, percentile_high=99.5)
PERCENTILE = WindowSettings(use_file_voi=False, percentile_low=1.0, percentile_high=99.0)


def _mono_ds(bits: int = 12, signed: bool = False, **extra: object) -> Dataset:
    """A header-only grayscale dataset for the LUT functions."""
    ds = Dataset()
    ds.PhotometricInterpretation = extra.pop("photometric", "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


WINDOW_CASES = [
    (function, center, width)
    for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID")
    for center, width in ((2048.0, 4096.0), (600.5, 37.0), (100.0, 1.0))
    if not (function == "SIGMOID" and width == 1.0)  # exp overflows in pydicom's reference there
]


@pytest.mark.parametrize(("function", "center", "width"), WINDOW_CASES)
def test_window_matches_pydicom_float64(function: str, center: float, width: float) -> None:
    """Our [0, 1] window equals pydicom's apply_windowing rescaled by its output range."""
    ds = _mono_ds(bits=12, WindowCenter=center, WindowWidth=width, VOILUTFunction=function)
    values = np.arange(4096, dtype=np.float64)
    reference = (apply_windowing(values.copy(), ds) - 0.0) / 4095.0
    np.testing.assert_allclose(_window_to_unit(values, center, width, function), reference, atol=1e-12)


def _direct_display(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Float64 reference: pydicom modality LUT, then window / VOI LUT, then MONOCHROME1 inversion, in [0, 1]."""
    modality = apply_modality_lut(stored.astype(np.float64), ds)
    if ds.get("VOILUTSequence"):
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        unit = apply_voi(np.rint(modality).astype(np.int64), ds).astype(np.float64) / (2**depth - 1)
    else:
        lo, hi = (0, 2**ds.BitsStored - 1)
        if "RescaleSlope" in ds:
            lo, hi = lo * ds.RescaleSlope + ds.RescaleIntercept, hi * ds.RescaleSlope + ds.RescaleIntercept
        unit = (apply_windowing(modality.copy(), ds) - lo) / (hi - lo)
    return 1.0 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit


@pytest.mark.parametrize(
    "extra",
    [
        {"WindowCenter": 1500.0, "WindowWidth": 2000.0},
        {"WindowCenter": [900.0, 1500.0], "WindowWidth": [800.0, 2000.0], "photometric": "MONOCHROME1"},
        {"RescaleSlope": 2.0, "RescaleIntercept": -1024.0, "WindowCenter": 1000.0, "WindowWidth": 3000.0},
        {"WindowCenter": 2000.0, "WindowWidth": 1500.0, "VOILUTFunction": "SIGMOID", "photometric": "MONOCHROME1"},
    ],
)
def test_lookup_table_equals_direct_pipeline(extra: dict[str, object]) -> None:
    """lut[stored] is the float64 direct pipeline (to float32 precision) for windows, rescale and polarity."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(37, 53)).astype(np.uint16)
    ds = _mono_ds(bits=12, **dict(extra))
    lut, offset, transform = display_lut(ds, stored, FILE_VOI)
    np.testing.assert_allclose(lut[stored.astype(np.int64) + offset], _direct_display(ds, stored), atol=2e-7)
    assert transform["inverted"] == (ds.PhotometricInterpretation == "MONOCHROME1")


def test_voi_lut_sequence_is_preferred_and_exact() -> None:
    """A VOI LUT Sequence is used over a window, normalised by its entry bit depth."""
    ds = _mono_ds(bits=12, WindowCenter=10.0, WindowWidth=5.0)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = [int(v) for v in (np.sqrt(np.arange(4096) / 4095.0) * 4095).astype(int)]
    ds.VOILUTSequence = [item]
    stored = np.random.default_rng(1).integers(0, 4096, size=(20, 30)).astype(np.uint16)
    lut, offset, transform = display_lut(ds, stored, FILE_VOI)
    assert transform["voi"]["kind"] == "voi_lut"
    np.testing.assert_allclose(lut[stored.astype(np.int64) + offset], _direct_display(ds, stored), atol=2e-7)


def test_percentile_window_matches_numpy_and_signed_data() -> None:
    """Without VOI the window is np.percentile(inverted_cdf) of the modality values, signed data included."""
    rng = np.random.default_rng(2)
    stored = rng.integers(-2000, 2000, size=(64, 48)).astype(np.int16)
    ds = _mono_ds(bits=16, signed=True, RescaleSlope=0.5, RescaleIntercept=10.0)
    lut, offset, transform = display_lut(ds, stored, PERCENTILE)
    modality = stored.astype(np.float64) * 0.5 + 10.0
    low, high = np.percentile(modality, [1.0, 99.0], method="inverted_cdf")
    assert transform["voi"]["values"] == [low, high]
    expected = np.clip((modality - low) / (high - low), 0, 1)
    np.testing.assert_allclose(lut[stored.astype(np.int64) + offset], expected, atol=2e-7)


def test_resize_keeps_aspect_and_antialiases() -> None:
    """Short side becomes the target; a fine checkerboard averages to grey instead of aliasing."""
    board = (np.indices((300, 450)).sum(axis=0) % 2).astype(np.float32)
    small = resize_short_side(board, 60)
    assert small.shape == (60, 90)
    assert abs(float(small[5:-5, 5:-5].mean()) - 0.5) < 0.01 and float(small[5:-5, 5:-5].std()) < 0.02


def test_polarity_and_bit_depth(tmp_path: Path) -> None:
    """MONOCHROME1 and MONOCHROME2 encodings of one picture render the same (air dark), at 8 and 16 bits."""
    picture = chest_brightness(90, 70, seed=3)
    write_dicom(tmp_path / "m2.dcm", picture, photometric="MONOCHROME2", bits_stored=12, window=(2048.0, 4096.0))
    write_dicom(tmp_path / "m1.dcm", picture, photometric="MONOCHROME1", bits_stored=12, window=(2048.0, 4096.0))
    m2, _, size = dicom_to_image(tmp_path / "m2.dcm", 35, 8, FILE_VOI)
    m1, t1, _ = dicom_to_image(tmp_path / "m1.dcm", 35, 8, FILE_VOI)
    assert size == (90, 70) and m2.shape == (45, 35) and m2.dtype == np.uint8
    assert t1["inverted"] and np.abs(m1.astype(int) - m2.astype(int)).max() <= 1
    deep, _, _ = dicom_to_image(tmp_path / "m1.dcm", 35, 16, FILE_VOI)
    assert deep.dtype == np.uint16 and np.abs(deep.astype(np.int64) // 257 - m1).max() <= 1


def test_bad_files_raise_errors_naming_the_file(tmp_path: Path) -> None:
    """Garbage, truncated pixel data and unknown transfer syntaxes each give a reason and the file name."""
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom at all" * 10)
    with pytest.raises(DicomReadError, match="garbage.dcm") as err:
        read_dicom(garbage)
    assert err.value.reason == "unreadable_dicom"
    write_dicom(tmp_path / "ok.dcm", chest_brightness(40, 40, 0))
    ds = pydicom.dcmread(tmp_path / "ok.dcm")
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(DicomReadError, match="short.dcm") as err:
        decode_pixels(ds, tmp_path / "short.dcm")
    assert err.value.reason == "unreadable_dicom"
    ds = pydicom.dcmread(tmp_path / "ok.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    with pytest.raises(DicomReadError, match="mpeg.dcm") as err:
        decode_pixels(ds, tmp_path / "mpeg.dcm")
    assert err.value.reason == "unsupported_transfer_syntax"


@pytest.mark.parametrize(("dtype", "offset"), [(np.uint16, 0), (np.int16, 32768)])
def test_chunked_lookup_equals_fancy_indexing(dtype: type, offset: int) -> None:
    """The chunked np.take path gives exactly lut[stored + offset], for unsigned and signed data."""
    rng = np.random.default_rng(4)
    info = np.iinfo(dtype)
    stored = rng.integers(info.min, info.max, size=(131, 77), endpoint=True).astype(dtype)
    lut = rng.random(65536).astype(np.float32)
    np.testing.assert_array_equal(apply_lut(lut, stored, offset, rows_per_chunk=10), lut[stored.astype(np.int64) + offset])


def test_lookup_out_of_table_is_an_error() -> None:
    """A table shorter than the dtype's range keeps bounds checking: a value past its end raises, never wraps."""
    stored = np.array([[0, 255], [256, 3]], dtype=np.uint16)
    with pytest.raises(IndexError):
        apply_lut(np.linspace(0, 1, 256, dtype=np.float32), stored, 0)
