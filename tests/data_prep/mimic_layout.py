"""Small MIMIC-CXR layouts built on the fly for the sharder's tests, and helpers to run and compare runs."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import webdataset as wds
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from data_prep.mimic_metadata import CHEXPERT_LABELS, study_folder
from data_prep.shard_config import ShardConfig
from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[2]
MIMIC_YAML = REPO / "configs" / "data" / "mimic.yaml"


def shard_config(mimic: Path, out: Path, **overrides: Any) -> ShardConfig:
    """The default YAML config pointed at ``mimic`` / ``out`` with small images, plus ``overrides``."""
    values = {"mimic_root": str(mimic), "out": str(out), "image_size": 32, "shard_size": 2, **overrides}
    return load_config(ShardConfig, MIMIC_YAML, [f"{k}={json.dumps(v)}" for k, v in values.items()])


def output_files(out: Path) -> dict[str, bytes]:
    """Every shard and skipped.csv of an output directory (what must be byte-identical)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/*.tar"))}
    files["skipped.csv"] = (out / "skipped.csv").read_bytes()
    return files


def comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest without what legitimately differs between equivalent runs."""
    return {k: v for k, v in manifest.items() if k not in ("args", "seconds", "versions")}


def read_samples(out: Path, relative: str) -> list[dict[str, Any]]:
    """All samples of a shard, read with webdataset."""
    dataset = wds.WebDataset(str(out / relative), shardshuffle=False, empty_check=False)
    return list(dataset)


CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SECRET_NAME = "SECRETNAME^PATIENT"  # must never appear in a shard
SECRET_BIRTH = "19230405"

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old woman with cough  // eval for pneumonia

 COMPARISON:  None.

 FINDINGS:
{blank}
 PA and lateral views of the chest provided.  The lungs are clear without focal
 consolidation.  No pleural effusion or pneumothorax.  Heart size is normal.

 IMPRESSION:
{blank}
 No acute intrathoracic process.
""".replace("{blank}", " ")  # whitespace-only lines, as in MIMIC


def chest_brightness(rows: int, cols: int, seed: int) -> np.ndarray:
    """A radiograph-like display image in [0, 1]: dark air and lungs, bright mediastinum and bones."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    y, x = y / rows, x / cols
    img = np.full((rows, cols), 0.03)
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1
    img[body] = 0.55
    for cx in (0.3, 0.7):
        lung = ((x - cx) / 0.15) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1
        img[lung] = 0.18
    img[(np.abs(x - 0.5) < 0.07) & (y > 0.15) & (y < 0.85)] = 0.92  # spine / mediastinum
    img += rng.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1)


def lung_and_bone_masks(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (core of the right lung, core of the mediastinum) in a ``rows x cols`` image."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    y, x = y / rows, x / cols
    lung = ((x - 0.3) / 0.08) ** 2 + ((y - 0.45) / 0.15) ** 2 < 1
    bone = (np.abs(x - 0.5) < 0.03) & (y > 0.3) & (y < 0.7)
    return lung, bone


def write_dicom(
    path: Path, brightness: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
    view: str | None = "PA", rescale: tuple[float, float] | None = None, window: tuple[float, float] | None = None,
) -> None:
    """Write a CR DICOM whose display image (after windowing, polarity) is ``brightness``."""
    top = 2**bits_stored - 1
    values = brightness if photometric == "MONOCHROME2" else 1.0 - brightness
    stored = np.rint(values * top).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path.name)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName, ds.PatientBirthDate, ds.PatientID = SECRET_NAME, SECRET_BIRTH, "PHI-ID-777"
    ds.InstitutionName = "SECRET GENERAL HOSPITAL"
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_csv_gz(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    """A gzipped CSV (gzip mtime 0)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    path.write_bytes(gzip.compress(buf.getvalue().encode("utf-8"), mtime=0))


@dataclass
class SmallMimic:
    """What a built layout holds: the frontal dicom_ids per split and all metadata rows."""

    root: Path
    frontal: dict[str, list[str]] = field(default_factory=dict)
    lateral: list[str] = field(default_factory=list)
    meta_rows: list[dict[str, object]] = field(default_factory=list)
    split_rows: list[dict[str, object]] = field(default_factory=list)
    label_rows: list[dict[str, object]] = field(default_factory=list)

    def write_csvs(self) -> None:
        """(Re)write the three CSVs from the rows."""
        write_csv_gz(self.root / "mimic-cxr-2.0.0-metadata.csv.gz",
                     ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"], self.meta_rows)
        write_csv_gz(self.root / "mimic-cxr-2.0.0-split.csv.gz",
                     ["dicom_id", "study_id", "subject_id", "split"], self.split_rows)
        write_csv_gz(self.root / "mimic-cxr-2.0.0-chexpert.csv.gz",
                     ["subject_id", "study_id", *CHEXPERT_LABELS], self.label_rows)

    def dicom_path(self, dicom_id: str) -> Path:
        """Where a dicom_id's file lives."""
        row = next(r for r in self.meta_rows if r["dicom_id"] == dicom_id)
        return self.root / study_folder(int(row["subject_id"]), int(row["study_id"])) / f"{dicom_id}.dcm"

    def report_path(self, dicom_id: str) -> Path:
        """Where a dicom_id's report lives."""
        folder = self.dicom_path(dicom_id).parent
        return folder.parent / f"{folder.name}.txt"


def build_small_mimic(root: Path, subjects: int = 6, size: tuple[int, int] = (72, 60)) -> SmallMimic:
    """A MIMIC layout: each subject has one study with a frontal (PA/AP, varied encodings) and a lateral."""
    layout = SmallMimic(root=root, frontal={"train": [], "validate": [], "test": []})
    splits = ["train", "train", "validate", "test"]
    variants = [
        {"photometric": "MONOCHROME2", "bits_stored": 12},
        {"photometric": "MONOCHROME1", "bits_stored": 15},
        {"photometric": "MONOCHROME2", "bits_stored": 16, "rescale": (2.0, -100.0)},
        {"photometric": "MONOCHROME1", "bits_stored": 12, "window": (2048.0, 4096.0)},
    ]
    for i in range(subjects):
        subject, study = 10000100 + i, 50000100 + i
        split = splits[i % len(splits)]
        folder = root / study_folder(subject, study)
        for kind in ("frontal", "lateral"):
            dicom_id = f"{i:08x}-{'f' if kind == 'frontal' else 'l'}{i:07x}-0000aaaa-0000bbbb-0000cccc"
            view = ("PA" if i % 3 else "AP") if kind == "frontal" else "LATERAL"
            csv_view = "" if (kind == "frontal" and i == 1) else view  # one blank ViewPosition: DICOM fallback
            rows, cols = (size[0] + i, size[1] + 2 * i)
            write_dicom(folder / f"{dicom_id}.dcm", chest_brightness(rows, cols, seed=i), view=view,
                        **variants[i % len(variants)])
            layout.meta_rows.append({"dicom_id": dicom_id, "subject_id": subject, "study_id": study,
                                     "ViewPosition": csv_view, "Rows": rows, "Columns": cols})
            layout.split_rows.append({"dicom_id": dicom_id, "study_id": study, "subject_id": subject, "split": split})
            (layout.frontal[split] if kind == "frontal" else layout.lateral).append(dicom_id)
        (folder.parent / f"{folder.name}.txt").write_text(REPORT.replace("cough", f"cough {i}"), encoding="utf-8")
        labels = dict.fromkeys(CHEXPERT_LABELS)
        labels["No Finding"] = 1.0
        labels["Pleural Effusion"] = 0.0
        layout.label_rows.append({"subject_id": subject, "study_id": study, **labels})
    layout.write_csvs()
    return layout


def copy_layout(layout: SmallMimic, dest: Path) -> SmallMimic:
    """A copy of a layout in ``dest`` (tests that corrupt inputs work on a copy)."""
    shutil.copytree(layout.root, dest)
    return SmallMimic(root=dest, frontal={k: list(v) for k, v in layout.frontal.items()}, lateral=list(layout.lateral),
                      meta_rows=[dict(r) for r in layout.meta_rows], split_rows=[dict(r) for r in layout.split_rows],
                      label_rows=[dict(r) for r in layout.label_rows])


def read_dicom_header(path: Path) -> Dataset:
    """A DICOM header (for tests that rewrite files)."""
    return pydicom.dcmread(path)
