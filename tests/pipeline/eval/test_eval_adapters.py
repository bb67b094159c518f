"""Each adapter on a small tree in its data set's real layout, built on the fly."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pipeline.eval.adapters import (
    decode_rle,
    load_chexpert,
    load_covidx,
    load_ms_cxr,
    load_phantom_grounding,
    load_rsna,
    load_shard_split,
    read_dicom,
)
from pipeline.shard_format import WindowSettings

WINDOW = WindowSettings(use_file_voi=True, percentile_low=0.5, percentile_high=99.5)  # a window as a manifest records it
CHEXPERT_LABELS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _gradient(rows: int, cols: int) -> np.ndarray:
    """An 8-bit image dark on the left, bright on the right."""
    return np.tile(np.linspace(0, 255, cols).astype(np.uint8), (rows, 1))


def _write_dicom(path: Path, stored: np.ndarray, photometric: str, **tags) -> None:
    """A minimal uncompressed 16-bit grey DICOM."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------- CheXpert


def _chexpert_tree(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    rows = [
        ("train/patient00001/study1/view1_frontal.jpg", "Frontal", {"Cardiomegaly": "1.0", "Edema": "-1.0"}),
        ("train/patient00001/study1/view2_lateral.jpg", "Lateral", {"Cardiomegaly": "1.0"}),
        ("train/patient00002/study1/view1_frontal.jpg", "Frontal", {"Edema": "0.0", "Atelectasis": "-1.0"}),
    ]
    root.mkdir(parents=True)
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS])
        for rel, view, labels in rows:
            _write_png(root / rel, _gradient(20, 24))
            writer.writerow(
                [f"CheXpert-v1.0-small/{rel}", "Female", 60, view, "AP"] + [labels.get(n, "") for n in CHEXPERT_LABELS]
            )
    return root


def test_chexpert_policies_frontal_filter_and_images(tmp_path: Path) -> None:
    root = _chexpert_tree(tmp_path)
    names = ["Atelectasis", "Cardiomegaly", "Edema"]
    ones = load_chexpert(root, "train", names, uncertain="ones", frontal_only=True)
    zeros = load_chexpert(root, "train", names, uncertain="zeros", frontal_only=False)
    assert len(ones) == 2 and len(zeros) == 3
    assert ones.labels.tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert zeros.labels[[0, 2]].tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    image = ones.loaders[0]()
    assert image.shape == (1, 20, 24) and float(image[0, :, 0].mean()) < 0.05 < 0.95 < float(image[0, :, -1].mean())


def test_chexpert_errors_name_the_row(tmp_path: Path) -> None:
    root = _chexpert_tree(tmp_path)
    text = (root / "train.csv").read_text().replace(",1.0,", ",2.0,", 1)
    (root / "train.csv").write_text(text)
    with pytest.raises(ValueError, match=r"train.csv:2 column 'Cardiomegaly'"):
        load_chexpert(root, "train", ["Cardiomegaly"], uncertain="ones", frontal_only=True)
    (root / "train/patient00002/study1/view1_frontal.jpg").unlink()
    (root / "train.csv").write_text(text.replace(",2.0,", ",1.0,", 1))
    with pytest.raises(FileNotFoundError, match=r"train.csv:4"):
        load_chexpert(root, "train", ["Cardiomegaly"], uncertain="ones", frontal_only=True)


# --------------------------------------------------------------------------- RSNA + DICOM


def test_rsna_labels_per_patient_and_dicom_pixels(tmp_path: Path) -> None:
    root = tmp_path / "rsna"
    stored = np.tile(np.linspace(0, 4000, 16), (12, 1))  # dark left, bright right in MONOCHROME2
    _write_dicom(root / "stage_2_train_images" / "aaa.dcm", stored, "MONOCHROME2")
    _write_dicom(
        root / "stage_2_train_images" / "bbb.dcm", stored, "MONOCHROME1", WindowCenter=2000, WindowWidth=4000
    )
    (root / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n"
        "aaa,,,,,0\n"
        "bbb,10,20,30,40,1\n"
        "bbb,50,20,30,40,1\n"
    )
    data = load_rsna(root, WINDOW)
    assert data.ids == ["aaa", "bbb"] and data.labels.tolist() == [[0.0], [1.0]] and data.task == "binary"
    plain, inverted = data.loaders[0](), data.loaders[1]()
    assert plain.shape == (1, 12, 16)
    assert float(plain[0, :, 0].mean()) < 0.1 and float(plain[0, :, -1].mean()) > 0.9
    # MONOCHROME1: high stored values are dark
    assert float(inverted[0, :, 0].mean()) > 0.9 and float(inverted[0, :, -1].mean()) < 0.1


def test_rsna_missing_image_is_named(tmp_path: Path) -> None:
    root = tmp_path / "rsna"
    (root / "stage_2_train_images").mkdir(parents=True)
    (root / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\nzzz,,,,,0\n")
    with pytest.raises(FileNotFoundError, match="zzz"):
        load_rsna(root, WINDOW)


def test_dicom_rescale_and_voi_lut(tmp_path: Path) -> None:
    stored = np.tile(np.arange(0, 16) * 100, (4, 1))
    lut = pydicom.Dataset()
    lut.LUTDescriptor = [16, 0, 8]  # 16 entries from input 0, 8-bit output
    lut.add_new(0x00283006, "US", list(range(0, 256, 16)))  # LUT Data
    path = tmp_path / "lut.dcm"
    _write_dicom(path, stored, "MONOCHROME2", RescaleSlope=0.01, RescaleIntercept=0, VOILUTSequence=[lut])
    image = read_dicom(path, WINDOW)[0].numpy()
    # modality values 0..15 index the LUT directly: output 16*k / 255
    assert np.allclose(image[0], np.arange(16) * 16 / 255, atol=1e-6)
    corrupt = tmp_path / "bad.dcm"
    corrupt.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ValueError, match="bad.dcm"):
        read_dicom(corrupt, WINDOW)


# --------------------------------------------------------------------------- COVIDx


def test_covidx_split_file(tmp_path: Path) -> None:
    for split, name in (("train", "a.png"), ("train", "b.jpg"), ("test", "c.png")):
        _write_png(tmp_path / split / name, _gradient(8, 8))
    (tmp_path / "train.txt").write_text("p1 a.png positive cohen\np2 b.jpg negative rsna\n\n")
    (tmp_path / "test.txt").write_text("p3 c.png Negative sirm\n")
    train = load_covidx(tmp_path, "train", ["negative", "positive"])
    test = load_covidx(tmp_path, "test", ["negative", "positive"])
    assert train.labels.tolist() == [1, 0] and test.labels.tolist() == [0] and train.task == "multiclass"
    assert train.loaders[1]().shape == (1, 8, 8)
    (tmp_path / "test.txt").write_text("p3 c.png COVID-19 sirm\n")
    with pytest.raises(ValueError, match=r"test.txt:1: label 'COVID-19'"):
        load_covidx(tmp_path, "test", ["negative", "positive"])


# --------------------------------------------------------------------------- shards + phantom grounding


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _shard_tree(tmp_path: Path) -> tuple[Path, Path]:
    """Two test samples in one shard (8x12 PNGs) and the phantom annotations of their 16x24 originals."""
    root = tmp_path / "shards"
    (root / "test").mkdir(parents=True)
    names = CHEXPERT_LABELS
    annotations = {"label_names": names, "images": {}, "studies": {}}
    with tarfile.open(root / "test" / "test-000000.tar", "w") as tar:
        for i, (values, text) in enumerate(
            [
                ([1.0 if n == "Pleural Effusion" else None for n in names], "Small right pleural effusion."),
                ([-1.0 if n == "Edema" else 0.0 if n == "Pneumothorax" else None for n in names], "Possible edema."),
            ]
        ):
            key = f"dicom-{i}"
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 12), 40 * (i + 1), dtype=np.uint8)).save(buf, format="PNG")
            meta = {"dicom_id": key, "labels": {"names": names, "values": values}, "original_size": [16, 24]}
            _tar_add(tar, f"{key}.png", buf.getvalue())
            _tar_add(tar, f"{key}.txt", text.encode())
            _tar_add(tar, f"{key}.json", json.dumps(meta).encode())
            mask = np.zeros((16, 24), dtype=bool)
            mask[8:, :12] = True  # lower left quarter of the original
            flat = mask.ravel(order="F")
            counts = np.diff(np.flatnonzero(np.diff(np.r_[-1, flat.astype(int), -1]) != 0)).tolist()
            annotations["images"][key] = {
                "findings": [
                    {"label": "Pleural Effusion" if i == 0 else "Edema", "status": "present" if i == 0 else "uncertain",
                     "phrase": text.rstrip("."), "mask_rle": {"size": [16, 24], "counts": counts}},
                ]
            }
    manifest = {
        "splits": {"test": {"num_samples": 2, "shards": [{"path": "test/test-000000.tar", "num_samples": 2}]}},
        "label_names": names,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "phantom_annotations.json").write_text(json.dumps(annotations))
    return root, tmp_path / "phantom_annotations.json"


def test_shard_split_labels_texts_and_lazy_images(tmp_path: Path) -> None:
    root, _ = _shard_tree(tmp_path)
    data = load_shard_split(root, "test", uncertain="ignore")
    assert data.ids == ["dicom-0", "dicom-1"] and data.texts == ["Small right pleural effusion.", "Possible edema."]
    effusion, edema, ptx = (CHEXPERT_LABELS.index(n) for n in ("Pleural Effusion", "Edema", "Pneumothorax"))
    assert data.labels[0, effusion] == 1.0 and data.labels[1, ptx] == 0.0 and np.isnan(data.labels[1, edema])
    assert load_shard_split(root, "test", uncertain="ones").labels[1, edema] == 1.0
    assert data.labels[0].sum() == 1.0  # null (not mentioned) is negative
    image = data.loaders[1]()
    assert image.shape == (1, 8, 12) and float(image.mean()) == pytest.approx(80 / 255)
    assert data.meta[0]["original_size"] == [16, 24]
    with pytest.raises(ValueError, match="no split 'validate'"):
        load_shard_split(root, "validate", uncertain="ignore")


def test_shard_count_mismatch_is_an_error(tmp_path: Path) -> None:
    root, _ = _shard_tree(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"]["test"]["shards"][0]["num_samples"] = 3
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="2 samples, manifest says 3"):
        load_shard_split(root, "test", uncertain="ignore")


def test_phantom_grounding_masks_follow_the_resized_image(tmp_path: Path) -> None:
    root, annotations = _shard_tree(tmp_path)
    images = load_shard_split(root, "test", uncertain="ignore")
    present = load_phantom_grounding(annotations, images, statuses=["present"])
    assert [p.phrase for p in present.phrases] == ["Small right pleural effusion"]
    both = load_phantom_grounding(annotations, images, statuses=["present", "uncertain"])
    assert len(both.phrases) == 2 and set(both.loaders) == {"dicom-0", "dicom-1"}
    mask = present.phrases[0].mask((8, 12))
    expected = np.zeros((8, 12), dtype=bool)
    expected[4:, :6] = True
    assert np.array_equal(mask, expected)


def test_decode_rle_column_major() -> None:
    # 2 x 3 mask, column-major runs: 1 zero, 2 ones, 3 zeros -> (1,0), (0,1) set
    mask = decode_rle({"size": [2, 3], "counts": [1, 2, 3]})
    assert mask.tolist() == [[False, True, False], [True, False, False]]
    with pytest.raises(ValueError, match="expected 2 x 3"):
        decode_rle({"size": [2, 3], "counts": [1, 2]})


# --------------------------------------------------------------------------- MS-CXR


def test_ms_cxr_boxes_and_metadata_lookup(tmp_path: Path) -> None:
    jpg_root = tmp_path / "mimic-cxr-jpg"
    image_path = jpg_root / "files" / "p10" / "p10000032" / "s50414267" / "abc-123.jpg"
    _write_png(image_path.with_suffix(".png"), _gradient(40, 20))
    image_path.with_suffix(".png").rename(image_path)  # PIL sniffs the format; MIMIC-CXR-JPG names it .jpg
    with gzip.open(jpg_root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as handle:
        handle.write("dicom_id,subject_id,study_id,ViewPosition\nabc-123,10000032,50414267,PA\n")
    csv_path = tmp_path / "MS_CXR_Local_Alignment_v1.0.0.csv"
    csv_path.write_text(
        "dicom_id,label_text,category_name,x,y,w,h,image_width,image_height\n"
        "abc-123,bilateral effusions,Pleural effusion,0,200,100,200,200,400\n"
        "abc-123,bilateral effusions,Pleural effusion,100,300,100,100,200,400\n"
        "abc-123,right upper lobe opacity,Pneumonia,0,0,100,100,200,400\n"
    )
    data = load_ms_cxr(csv_path, jpg_root)
    assert [p.phrase for p in data.phrases] == ["bilateral effusions", "right upper lobe opacity"]
    image = data.loaders["abc-123"]()
    assert image.shape == (1, 40, 20)
    mask = data.phrases[0].mask((40, 20))  # the loaded image is 10x smaller than the box coordinates
    expected = np.zeros((40, 20), dtype=bool)
    expected[20:40, 0:10] = True
    expected[30:40, 10:20] = True
    assert np.array_equal(mask, expected)


# --------------------------------------------------------------------------- the phantom generator's downstream layouts


def test_phantom_downstream_chexpert(phantom_root: Path) -> None:
    root = phantom_root / "downstream" / "chexpert"
    rows = list(csv.DictReader((root / "train.csv").open()))
    frontal = [r for r in rows if r["Frontal/Lateral"] == "Frontal"]
    data = load_chexpert(root, "train", ["Cardiomegaly", "Pleural Effusion"], uncertain="ones", frontal_only=True)
    assert len(data) == len(frontal)
    expected = [[1.0 if r[n] in ("1.0", "-1.0") else 0.0 for n in ("Cardiomegaly", "Pleural Effusion")] for r in frontal]
    assert data.labels.tolist() == expected
    image = data.loaders[0]()
    assert image.ndim == 3 and image.shape[0] == 1 and 0.0 <= float(image.min()) < float(image.max()) <= 1.0
    test = load_chexpert(root, "valid", ["Cardiomegaly"], uncertain="zeros", frontal_only=True)
    assert len(test) > 0


def sharder_window(repo_root: Path) -> WindowSettings:
    """The sharder's window settings as shipped (configs/data/mimic.yaml, ``window:``)."""
    from pipeline.config import load_yaml_tree

    tree, _ = load_yaml_tree(repo_root / "configs/data/mimic.yaml")
    return WindowSettings(**tree["window"])


def test_phantom_downstream_rsna_matches_the_sharders_dicom_pipeline(phantom_root: Path, repo_root: Path) -> None:
    from pipeline.dicom_pixels import display_lut
    from pipeline.dicom_pixels import read_dicom as read_ds

    root = phantom_root / "downstream" / "rsna"
    data = load_rsna(root, sharder_window(repo_root))
    rows = list(csv.DictReader((root / "stage_2_train_labels.csv").open()))
    assert len(data) == len({r["patientId"] for r in rows})
    positives = {r["patientId"] for r in rows if r["Target"] == "1"}
    assert {i for i, y in zip(data.ids, data.labels[:, 0]) if y == 1.0} == positives
    for pid in data.ids[:4]:
        path = root / "stage_2_train_images" / f"{pid}.dcm"
        ds = read_ds(path)
        stored = ds.pixel_array
        lut, offset, _ = display_lut(ds, stored, sharder_window(repo_root))
        reference = lut[stored.astype(np.int64) + offset]
        ours = read_dicom(path, sharder_window(repo_root))[0].numpy()
        np.testing.assert_array_equal(ours, reference)  # one display chain for sharding and evaluation
