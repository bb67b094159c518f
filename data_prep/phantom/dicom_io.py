"""Pixels to files: the DICOM encodings real radiographs use, and the 8-bit JPG rendering.

A presentation image (float in [0, 1], bright = dense) becomes stored values with 12-16 bits,
MONOCHROME2 or inverted MONOCHROME1, optional Rescale Slope/Intercept, an optional VOI window or
VOI LUT, and one of four transfer syntaxes (two uncompressed, RLE Lossless, JPEG 2000 Lossless).
Every UID is derived from the seed, so a file's bytes depend only on its inputs.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from data_prep.phantom.case import pick
from data_prep.phantom.cohort import StudyPlan, make_uid

SOP_CLASS = {"CR": UID("1.2.840.10008.5.1.4.1.1.1"), "DX": UID("1.2.840.10008.5.1.4.1.1.1.1")}
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless)
TRANSFER_WEIGHTS = (0.6, 0.1, 0.06, 0.24)  # pydicom's RLE encoder is slow
VIEW_CODES = {
    "PA": ("R-10214", "postero-anterior"),
    "AP": ("R-10206", "antero-posterior"),
    "LATERAL": ("R-10232", "lateral"),
    "LL": ("R-10236", "left lateral"),
}
ORIENTATION = {"PA": ["L", "F"], "AP": ["L", "F"], "LATERAL": ["P", "F"], "LL": ["P", "F"]}
MANUFACTURERS = ("Agfa", "FUJIFILM Corporation", "Carestream Health", "GE Healthcare", "Philips Medical Systems")
IMPLEMENTATION_UID = make_uid("sista-phantom-implementation")
JPEG_QUALITY = 95
logging.getLogger("openjpeg").setLevel(logging.WARNING)  # it logs every tile at INFO


@dataclass(frozen=True)
class Encoding:
    """How one image is stored: modality, bit depth, polarity, rescale, VOI and transfer syntax."""

    modality: str
    bits_stored: int
    photometric: str
    transfer_syntax: UID
    rescale: tuple[float, float] | None
    voi: str  # "none" | "window" | "lut"


def sample_encoding(rng: np.random.Generator) -> Encoding:
    """Draw an encoding with the variety of a real archive."""
    rescale = pick(rng, (None, (1.0, -1024.0), (2.0, 0.0), (0.5, 100.0)), (0.7, 0.1, 0.1, 0.1))
    voi = pick(rng, ("none", "window", "lut"), (0.3, 0.5, 0.2))
    if voi == "lut":
        rescale = None  # keep the LUT's first mapped value an unsigned stored value
    return Encoding(
        modality=pick(rng, ("CR", "DX")),
        bits_stored=int(pick(rng, (12, 13, 14, 15, 16), (0.35, 0.1, 0.25, 0.1, 0.2))),
        photometric=pick(rng, ("MONOCHROME2", "MONOCHROME1"), (0.75, 0.25)),
        transfer_syntax=pick(rng, TRANSFER_SYNTAXES, TRANSFER_WEIGHTS),
        rescale=rescale,
        voi=voi,
    )


def presentation_image(rng: np.random.Generator, density: np.ndarray) -> np.ndarray:
    """Density map -> float32 presentation image in [0, 1]: random contrast, heel effect and quantum noise."""
    rows, cols = density.shape
    gamma = rng.uniform(0.8, 1.25)
    heel = 1.0 + rng.uniform(-0.06, 0.06) * np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
    image = np.clip(density, 0, 1) ** gamma * heel
    image += rng.normal(0.0, rng.uniform(0.01, 0.025), size=(rows, cols)).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def to_jpg_pixels(presentation: np.ndarray) -> np.ndarray:
    """The 8-bit display image (uint8 in [0, 255], bright = dense) of MIMIC-CXR-JPG: percentile window."""
    lo, hi = np.percentile(presentation, [0.5, 99.5])
    return np.round(255 * np.clip((presentation - lo) / max(hi - lo, 1e-6), 0, 1)).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    """Baseline 8-bit grayscale JPEG of ``pixels`` (deterministic for a given Pillow)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def stored_pixels(rng: np.random.Generator, presentation: np.ndarray, enc: Encoding) -> np.ndarray:
    """Stored values (uint16 within ``bits_stored``); MONOCHROME1 is inverted, so air is bright."""
    top = (1 << enc.bits_stored) - 1
    lo, hi = top * rng.uniform(0.0, 0.05), top * rng.uniform(0.7, 0.98)
    raw = np.round(lo + presentation * (hi - lo))
    if enc.photometric == "MONOCHROME1":
        raw = top - raw
    return np.clip(raw, 0, top).astype(np.uint16)


def _voi_tags(ds: Dataset, stored: np.ndarray, enc: Encoding) -> None:
    """Add a VOI window (in rescaled units) or a sigmoid VOI LUT spanning the stored range."""
    if enc.voi == "none":
        return
    slope, intercept = enc.rescale or (1.0, 0.0)
    lo, hi = np.percentile(stored, [1.0, 99.5]) * slope + intercept
    if slope < 0:
        lo, hi = hi, lo
    if enc.voi == "window":
        ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
        ds.WindowWidth = f"{max(hi - lo, 1.0):.1f}"
        ds.WindowCenterWidthExplanation = "NORMAL"
        return
    first, last = int(stored.min()), int(stored.max())
    count = last - first + 1
    inputs = np.arange(first, last + 1, dtype=np.float64)
    lut = 4095.0 / (1.0 + np.exp(-(inputs - (lo + hi) / 2) / max((hi - lo) / 8, 1.0)))
    item = Dataset()
    item.add_new(0x00283002, "US", [count if count < 65536 else 0, first, 12])
    item.add_new(0x00283003, "LO", "PHANTOM SIGMOID")
    item.add_new(0x00283006, "OW", np.round(lut).astype("<u2").tobytes())
    ds.VOILUTSequence = [item]


def _code(value: str, meaning: str, scheme: str = "SRT") -> Dataset:
    """One code sequence item."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def write_dicom(
    path: Path,
    stored: np.ndarray,
    enc: Encoding,
    plan: StudyPlan,
    *,
    seed: int,
    dicom_id: str,
    view: str,
    exam: str,
    orientation: str,
    series_number: int,
    rng: np.random.Generator,
) -> None:
    """Write one de-identified CR/DX radiograph with the given encoding; UIDs are derived from ``seed``."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = SOP_CLASS[enc.modality]
    ds.SOPInstanceUID = make_uid(seed, "sop", dicom_id)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = str(plan.study_date)
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = plan.study_time
    ds.AccessionNumber = ""
    ds.Modality = enc.modality
    ds.Manufacturer = pick(rng, MANUFACTURERS)
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = exam
    ds.SeriesDescription = f"CHEST {view}"
    ds.ProcedureCodeSequence = [_code("71020", exam, "CPT4")]
    ds.PatientName = ""
    ds.PatientID = str(plan.subject_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = plan.sex
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "SISTA phantom: synthetic image, no patient data"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = f"{rng.uniform(80, 125):.0f}"
    ds.DistanceSourceToDetector = "1000" if view == "AP" else "1800"
    ds.ExposureTime = str(int(rng.integers(4, 40)))
    ds.XRayTubeCurrent = str(int(rng.integers(100, 500)))
    spacing = f"{430.0 / stored.shape[1]:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.ViewPosition = view
    ds.ViewCodeSequence = [_code(*VIEW_CODES[view])]
    ds.PatientOrientationCodeSequence = [_code("F-10440" if orientation == "Erect" else "F-10450", orientation)]
    ds.StudyInstanceUID = make_uid(seed, "study", plan.study_id)
    ds.SeriesInstanceUID = make_uid(seed, "series", dicom_id)
    ds.StudyID = ""
    ds.SeriesNumber = str(series_number)
    ds.InstanceNumber = "1"
    ds.PatientOrientation = ORIENTATION[view]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if enc.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "INVERSE" if enc.photometric == "MONOCHROME1" else "IDENTITY"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = enc.photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, enc.bits_stored, enc.bits_stored - 1
    ds.PixelRepresentation = 0
    if enc.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{enc.rescale[0]:g}", f"{enc.rescale[1]:g}"
        ds.RescaleType = "US"
    _voi_tags(ds, stored, enc)
    _save(ds, path, stored, enc.transfer_syntax)


def write_rsna_dicom(path: Path, pixels: np.ndarray, *, seed: int, patient_id: str, view: str, sex: str, age: int) -> None:
    """An RSNA-Pneumonia-style file: 8-bit MONOCHROME2 secondary capture, JPEG Baseline encapsulated."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = make_uid(seed, "rsna-sop", patient_id)
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientSex = sex
    ds.PatientAge = f"{min(age, 999):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = make_uid(seed, "rsna-study", patient_id)
    ds.SeriesInstanceUID = make_uid(seed, "rsna-series", patient_id)
    ds.SeriesNumber, ds.InstanceNumber = "1", "1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([jpeg_bytes(pixels)])
    _finish(ds, path, JPEGBaseline8Bit)


def _save(ds: Dataset, path: Path, stored: np.ndarray, syntax: UID) -> None:
    """Attach the pixels in ``syntax`` (compressing when needed) and write the file."""
    if syntax.is_compressed:
        ds.file_meta = FileMetaDataset()
        ds.compress(syntax, np.ascontiguousarray(stored), generate_instance_uid=False)
    else:
        ds.PixelData = stored.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    _finish(ds, path, syntax)


def _finish(ds: Dataset, path: Path, syntax: UID) -> None:
    """File meta with our fixed implementation UID, then a DICOM Part 10 file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SISTA_PHANTOM"
    ds.file_meta = meta
    if syntax.is_encapsulated:
        ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
