"""The real CR chest film RG1 (pydicom-data; MONOCHROME1, 15 bits) in every encoding, through the sharder."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from data_prep.mimic_metadata import CHEXPERT_LABELS, study_folder
from data_prep.shard_mimic import shard_mimic
from tests.data_prep.mimic_layout import REPORT, read_samples, shard_config, write_csv_gz

# UNCR is the original, J2KR its lossless JPEG 2000; J2KI a lossy JPEG 2000 and UNCI its decompressed pixels.
ENCODINGS = ("RG1_UNCR", "RG1_J2KR", "RG1_J2KI", "RG1_UNCI")
SUBJECT, STUDY = 19999999, 59999999


def _film(name: str) -> Path:
    """Path of one RG1 file from the pydicom-data package (installed with the dev extras)."""
    path = get_testdata_file(f"{name}.dcm")
    assert path is not None, f"{name}.dcm not found: install the dev extras (pydicom-data)"
    return Path(path)


@pytest.fixture(scope="module")
def rg1_samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict]]:
    """RG1 in all encodings as four PA images of one study; sharded with the file's window and a percentile window."""
    root = tmp_path_factory.mktemp("rg1") / "mimic"
    folder = root / study_folder(SUBJECT, STUDY)
    folder.mkdir(parents=True)
    meta, split = [], []
    for name in ENCODINGS:
        shutil.copy(_film(name), folder / f"{name.lower()}.dcm")
        meta.append({"dicom_id": name.lower(), "subject_id": SUBJECT, "study_id": STUDY, "ViewPosition": "PA"})
        split.append({"dicom_id": name.lower(), "study_id": STUDY, "subject_id": SUBJECT, "split": "test"})
    (folder.parent / f"{folder.name}.txt").write_text(REPORT, encoding="utf-8")
    write_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta)
    write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split)
    write_csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_LABELS],
                 [{"subject_id": SUBJECT, "study_id": STUDY}])
    out: dict[str, dict[str, dict]] = {}
    for mode, use_file_voi in (("file_window", True), ("percentile", False)):
        target = root.parent / mode
        manifest = shard_mimic(shard_config(root, target, image_size=256, shard_size=8, splits=["test"],
                                            **{"window.use_file_voi": use_file_voi}))
        assert manifest["splits"]["test"]["num_samples"] == len(ENCODINGS), manifest["skipped"]
        samples = read_samples(target, manifest["splits"]["test"]["shards"][0]["path"])
        out[mode] = {s["__key__"]: s for s in samples}
    return out


def _image(sample: dict) -> np.ndarray:
    """The stored 8-bit image of a sample."""
    return np.asarray(Image.open(io.BytesIO(sample["png"])), dtype=np.int16)


def _region(image: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> float:
    """Mean of a box given in fractions of the image."""
    rows, cols = image.shape
    return float(image[int(y0 * rows) : int(y1 * rows), int(x0 * cols) : int(x1 * cols)].mean())


@pytest.mark.parametrize("mode", ["file_window", "percentile"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_lungs_dark_bones_bright(rg1_samples: dict, mode: str, encoding: str) -> None:
    """MONOCHROME1 is inverted: both lung fields are darker than the spine and mediastinum."""
    sample = rg1_samples[mode][encoding.lower()]
    image = _image(sample)
    meta = json.loads(sample["json"])
    assert image.shape == (272, 256) and meta["original_size"] == [1955, 1841]
    assert meta["transform"]["photometric"] == "MONOCHROME1" and meta["transform"]["inverted"]
    assert meta["transform"]["voi"]["kind"] == ("window" if mode == "file_window" else "percentile")
    right_lung, left_lung = _region(image, 0.25, 0.45, 0.17, 0.33), _region(image, 0.25, 0.45, 0.65, 0.82)
    spine, mediastinum = _region(image, 0.1, 0.3, 0.47, 0.53), _region(image, 0.6, 0.9, 0.47, 0.53)
    assert max(right_lung, left_lung) + 40 < min(spine, mediastinum)


@pytest.mark.parametrize("mode", ["file_window", "percentile"])
def test_encodings_agree(rg1_samples: dict, mode: str) -> None:
    """Lossless pairs give identical PNG bytes; the lossy JPEG 2000 stays within a grey level of the original."""
    samples = rg1_samples[mode]
    assert samples["rg1_uncr"]["png"] == samples["rg1_j2kr"]["png"]
    assert samples["rg1_unci"]["png"] == samples["rg1_j2ki"]["png"]
    diff = np.abs(_image(samples["rg1_j2ki"]) - _image(samples["rg1_uncr"]))
    assert diff.mean() < 0.5 and diff.max() <= 3
