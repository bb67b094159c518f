"""The phantom MIMIC-CXR generator: layout, label/annotation/report agreement, DICOM encodings, determinism."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from data_prep.make_phantoms import make_phantoms
from data_prep.phantom.case import LABEL_NAMES, chexpert_labels, sample_case
from data_prep.phantom.cohort import StudyPlan, plan_cohort
from data_prep.phantom.dicom_io import Encoding, write_dicom
from data_prep.phantom.report import render_report
from data_prep.phantom.study import render_study, study_dir
from pipeline.shard_format.coco_rle import decode_rle, encode_rle, mask_bbox

SIDE_WORDS = {"left": ("left",), "right": ("right",), "bilateral": ("bilateral", "bibasilar")}
ZONE_WORDS = {"upper": ("upper",), "mid": ("mid", "middle"), "lower": ("lower", "base", "basilar")}
LUNG_LABELS = {"Pleural Effusion", "Consolidation", "Pneumonia", "Pneumothorax", "Lung Lesion", "Atelectasis", "Edema"}
NEGATION_CUES = ("no ", "normal", "not enlarged", "clear", "intact")


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a (gzipped) CSV."""
    raw = path.read_bytes()
    text = gzip.decompress(raw).decode("utf-8") if path.suffix == ".gz" else raw.decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def value(cell: str) -> float | None:
    """A CheXpert cell as a number or None."""
    return None if cell == "" else float(cell)


@pytest.fixture(scope="module")
def tables(phantom_root: Path) -> dict[str, list[dict[str, str]]]:
    """The three MIMIC CSVs of the session's phantom set."""
    return {k: read_csv(phantom_root / f"mimic-cxr-2.0.0-{k}.csv.gz") for k in ("metadata", "split", "chexpert")}


@pytest.fixture(scope="module")
def annotations(phantom_root: Path) -> dict:
    """``phantom_annotations.json`` of the session's phantom set."""
    return json.loads((phantom_root / "phantom_annotations.json").read_text(encoding="utf-8"))


def regenerate(annotations: dict) -> tuple[int, tuple[int, int], list[StudyPlan]]:
    """Seed, size range and study plans of the fixture, read from the generator arguments it recorded."""
    args = annotations["generator"]
    plans = plan_cohort(args["studies"], args["seed"], tuple(args["split_fractions"]))
    return args["seed"], tuple(args["image_size_range"]), plans


# --------------------------------------------------------------------------- layout


def test_every_row_has_its_file_and_every_file_its_row(phantom_root: Path, tables: dict, annotations: dict) -> None:
    meta = tables["metadata"]
    expected_dcm, expected_txt, expected_jpg = set(), set(), set()
    for row in meta:
        folder = Path("files") / f"p{row['subject_id'][:2]}" / f"p{row['subject_id']}" / f"s{row['study_id']}"
        expected_dcm.add(folder / f"{row['dicom_id']}.dcm")
        expected_jpg.add(folder / f"{row['dicom_id']}.jpg")
        expected_txt.add(folder.parent / f"{folder.name}.txt")
    on_disk = {p.relative_to(phantom_root) for p in (phantom_root / "files").rglob("*") if p.is_file()}
    assert on_disk == expected_dcm | expected_txt
    jpg_root = phantom_root / "jpg"
    assert {p.relative_to(jpg_root) for p in (jpg_root / "files").rglob("*") if p.is_file()} == expected_jpg
    for name in ("metadata", "split", "chexpert"):
        assert (jpg_root / f"mimic-cxr-2.0.0-{name}.csv.gz").read_bytes() == (
            phantom_root / f"mimic-cxr-2.0.0-{name}.csv.gz"
        ).read_bytes()
    assert {r["dicom_id"] for r in tables["split"]} == {r["dicom_id"] for r in meta}
    assert {(r["subject_id"], r["study_id"]) for r in tables["chexpert"]} == {(r["subject_id"], r["study_id"]) for r in meta}
    assert len(tables["chexpert"]) == len({r["study_id"] for r in meta}) == annotations["generator"]["studies"]


def test_columns_ids_and_gzip_headers_look_like_mimic(phantom_root: Path, tables: dict) -> None:
    assert list(tables["metadata"][0]) == [
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
        "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ]  # fmt: skip
    assert list(tables["split"][0]) == ["dicom_id", "study_id", "subject_id", "split"]
    assert list(tables["chexpert"][0]) == ["subject_id", "study_id", *LABEL_NAMES]
    for row in tables["metadata"]:
        assert re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", row["dicom_id"]), row["dicom_id"]
        assert re.fullmatch(r"1\d{7}", row["subject_id"]) and re.fullmatch(r"5\d{7}", row["study_id"]), row
        assert re.fullmatch(r"2[12]\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])", row["StudyDate"]), row["StudyDate"]
        assert row["ViewPosition"] in ("PA", "AP", "LATERAL", "LL")
    assert {r["ViewPosition"] for r in tables["metadata"]} >= {"PA", "AP", "LATERAL"}
    for path in phantom_root.glob("*.csv.gz"):
        header = path.read_bytes()[:10]
        assert header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0", f"{path.name}: gzip name or mtime set"
    for row in tables["chexpert"]:
        assert all(row[n] in ("", "1.0", "0.0", "-1.0") for n in LABEL_NAMES), row


def test_splits_are_patient_disjoint(tables: dict) -> None:
    split_of_subject: dict[str, set[str]] = defaultdict(set)
    for row in tables["split"]:
        split_of_subject[row["subject_id"]].add(row["split"])
    assert all(len(s) == 1 for s in split_of_subject.values())
    assert Counter(next(iter(s)) for s in split_of_subject.values()).keys() == {"train", "validate", "test"}


def test_cohort_split_proportions_follow_the_fractions() -> None:
    plans = plan_cohort(2000, seed=3, split_fractions=(0.98, 0.01, 0.01))
    counts = Counter(p.split for p in plans)
    assert 0.96 < counts["train"] / len(plans) < 0.995 and counts["validate"] > 0 and counts["test"] > 0
    assert len({p.study_id for p in plans}) == len(plans)
    for subject in {p.subject_id for p in plans}:
        dates = [p.study_date for p in plans if p.subject_id == subject]
        assert dates == sorted(dates)


# --------------------------------------------------------------------------- agreement


def test_labels_annotations_and_report_words_agree(phantom_root: Path, tables: dict, annotations: dict) -> None:
    images_of: dict[str, list[dict]] = defaultdict(list)
    for ann in annotations["images"].values():
        images_of[str(ann["study_id"])].append(ann)
    drawn_kinds = Counter()
    for row in tables["chexpert"]:
        labels = {n: value(row[n]) for n in LABEL_NAMES}
        assert annotations["studies"][row["study_id"]]["labels"] == labels
        report = (phantom_root / "files" / f"p{row['subject_id'][:2]}" / f"p{row['subject_id']}" /
                  f"s{row['study_id']}.txt").read_text(encoding="utf-8")  # fmt: skip
        lowered = report.lower()
        images = images_of[row["study_id"]]
        assert images, row
        for image in images:
            drawn = {f["label"] for f in image["findings"]}
            for f in image["findings"]:
                drawn_kinds[f["label"]] += 1
                assert labels[f["label"]] == (1.0 if f["status"] == "present" else -1.0), (row["study_id"], f)
                assert f["phrase"] in report, (row["study_id"], f["phrase"])
                if f["side"] is not None:
                    assert any(w in f["phrase"] for w in SIDE_WORDS[f["side"]]), f
                    other = {"left": "right", "right": "left"}.get(f["side"])
                    assert other is None or other not in f["phrase"], f
                if f["label"] in ("Consolidation", "Pneumonia", "Lung Lesion"):
                    assert any(w in f["phrase"] for w in ZONE_WORDS[f["zone"]]), f
                if f["severity"] is not None:
                    assert f["severity"] in f["phrase"], f
            for name, v in labels.items():
                if v == 0.0:
                    assert name not in drawn, (row["study_id"], name)
                if v in (1.0, -1.0) and name != "No Finding":
                    assert name in drawn, (row["study_id"], name, image["view"])
            if labels["No Finding"] == 1.0:
                assert drawn <= {"Support Devices"}, row["study_id"]
        if any(v == 0.0 for v in labels.values()):
            assert any(cue in lowered for cue in NEGATION_CUES), report
        if all(v is None for v in labels.values()):
            assert "FINDINGS:" not in report and "IMPRESSION:" not in report
    assert len(drawn_kinds) >= 6, drawn_kinds


def test_case_and_report_language_over_many_studies() -> None:
    """Cheap (no images): every report style occurs, normals repeat verbatim, labels follow the words."""
    plan = StudyPlan(0, 10000032, 50414267, "train", 0, 1, "F", 50, 21800506, "213014.531")
    styles, impressions, non_ascii, uncertain = Counter(), Counter(), 0, 0
    for i in range(1500):
        rng = np.random.default_rng([7, i])
        case = sample_case(rng, prior=i % 2 == 1)
        report = render_report(rng, plan, case, non_ascii=i % 10 == 0)
        labels = chexpert_labels(case)
        styles[case.style] += 1
        non_ascii += any(ord(c) > 127 for c in report)
        uncertain += any(v == -1.0 for v in labels.values())
        for f in case.findings:
            assert f.phrase in report
        if case.style == "neither":
            assert all(v is None for v in labels.values()) and not case.findings
        if case.style == "short":
            assert len(report) < 300, report
        if case.impression_section:
            impressions[" ".join(s.text for s in case.impression_section)] += 1
        assert ("FINDINGS:" in report) == (case.findings_section is not None)
        assert ("IMPRESSION:" in report) == (case.impression_section is not None)
    assert set(styles) == {"full", "impression_only", "findings_only", "short", "neither"}
    assert impressions.most_common(1)[0][1] > 150  # canonical normal impressions shared by many patients
    assert non_ascii >= 100 and uncertain > 50


# --------------------------------------------------------------------------- images


def test_every_encoding_round_trips_losslessly(tmp_path: Path) -> None:
    plan = plan_cohort(1, 0, (1.0, 0.0, 0.0))[0]
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(40, 56), dtype=np.uint16)
    syntaxes = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless)
    for syntax in syntaxes:
        for photometric, voi in (("MONOCHROME2", "window"), ("MONOCHROME1", "lut")):
            enc = Encoding("DX", 12, photometric, syntax, None if voi == "lut" else (2.0, 0.0), voi)
            path = tmp_path / f"{syntax.name}-{photometric}.dcm"
            write_dicom(path, stored, enc, plan, seed=0, dicom_id="x", view="PA", exam="CHEST (PA)",
                        orientation="Erect", series_number=1, rng=rng)  # fmt: skip
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == syntax
            np.testing.assert_array_equal(ds.pixel_array, stored)
            out = pydicom.pixels.apply_voi_lut(pydicom.pixels.apply_modality_lut(ds.pixel_array, ds), ds)
            assert np.isfinite(out).all() and out.std() > 0


def test_dicoms_decode_exactly_and_monochrome1_is_inverted(phantom_root: Path, tables: dict, annotations: dict) -> None:
    seed, sizes, plans = regenerate(annotations)
    assert sorted(p.study_id for p in plans) == sorted({int(r["study_id"]) for r in tables["metadata"]})
    seen = Counter()
    for plan in plans:
        study = render_study(seed, plan, sizes)
        for image in study.images:
            ds = pydicom.dcmread(phantom_root / study_dir(plan) / f"{image.dicom_id}.dcm")
            pixels = ds.pixel_array
            np.testing.assert_array_equal(pixels, image.stored, err_msg=image.dicom_id)
            assert 12 <= ds.BitsStored <= 16 and pixels.max() < (1 << ds.BitsStored)
            assert ds.PatientID == str(plan.subject_id) and ds.ViewPosition == image.view
            lungs = image.anatomy.lung_mask("bilateral") & ~image.anatomy.heart_mask()
            heart = image.anatomy.heart_mask() & (image.anatomy.grid.y < 0.2)
            lung_mean, heart_mean = pixels[lungs].mean(), pixels[heart].mean()
            if ds.PhotometricInterpretation == "MONOCHROME1":
                assert lung_mean > heart_mean, image.dicom_id  # air bright in stored values
            else:
                assert lung_mean < heart_mean, image.dicom_id
            seen[ds.file_meta.TransferSyntaxUID.name] += 1
            seen[ds.PhotometricInterpretation] += 1
            seen["rescale"] += "RescaleSlope" in ds
            seen["window"] += "WindowCenter" in ds
            seen["voi_lut"] += "VOILUTSequence" in ds
            seen[ds.Modality] += 1
    for key in ("MONOCHROME1", "MONOCHROME2", "rescale", "window", "voi_lut", "CR", "DX", JPEG2000Lossless.name,
                ExplicitVRLittleEndian.name):  # fmt: skip
        assert seen[key] > 0, (key, seen)


def test_masks_lie_in_their_anatomy_and_match_the_annotation_file(annotations: dict) -> None:
    seed, sizes, plans = regenerate(annotations)
    checked = Counter()
    for plan in plans:
        study = render_study(seed, plan, sizes)
        for image in study.images:
            entry = annotations["images"][image.dicom_id]
            listed = [(f["label"], f) for f in entry["findings"]]
            expected = [(label, mask, finding) for finding, mask in image.masks for label in finding.labels]
            assert [x[0] for x in listed] == [x[0] for x in expected]
            frontal = image.view in ("PA", "AP")
            for (label, ann), (_, mask, finding) in zip(listed, expected):
                np.testing.assert_array_equal(decode_rle(ann["mask_rle"]), mask)
                assert ann["bbox"] == mask_bbox(mask) and mask.sum() > 0
                if label in LUNG_LABELS:
                    side = finding.side if frontal and finding.side else "bilateral"
                    assert not (mask & ~image.anatomy.lung_mask(side)).any(), (image.dicom_id, label, side)
                if frontal and finding.side in ("left", "right") and finding.kind != "device":
                    # Frontal convention: the patient's left is on the image's right.
                    lungs = np.flatnonzero(image.anatomy.lung_mask("bilateral").any(axis=0))
                    centre = (lungs[0] + lungs[-1]) / 2
                    column = np.nonzero(mask)[1].mean()
                    assert (column > centre) == (finding.side == "left"), (image.dicom_id, label, finding.side)
                if label == "Cardiomegaly":
                    assert not (mask & ~image.anatomy.heart_mask()).any()
                    if frontal:
                        thorax = np.flatnonzero(image.anatomy.lung_mask("bilateral").any(axis=0))
                        heart = np.flatnonzero(mask.any(axis=0))
                        assert (heart[-1] - heart[0]) / (thorax[-1] - thorax[0]) > 0.5, image.dicom_id
                checked[label] += 1
            if frontal:  # the heart bulges to the image's right (the patient's left)
                lungs = np.flatnonzero(image.anatomy.lung_mask("bilateral").any(axis=0))
                assert np.nonzero(image.anatomy.heart_mask())[1].mean() > (lungs[0] + lungs[-1]) / 2, image.dicom_id
            if frontal and not any(f.kind == "cardiomegaly" for f in study.case.findings):
                thorax = np.flatnonzero(image.anatomy.lung_mask("bilateral").any(axis=0))
                heart = np.flatnonzero((image.anatomy.heart_mask() & (image.anatomy.grid.y < 0.3)).any(axis=0))
                assert (heart[-1] - heart[0]) / (thorax[-1] - thorax[0]) < 0.5, image.dicom_id
    assert len(checked) >= 6, checked


def test_rle_round_trip_and_coco_convention() -> None:
    rng = np.random.default_rng(1)
    for shape in ((1, 1), (5, 7), (33, 20)):
        mask = rng.random(shape) < 0.4
        assert np.array_equal(decode_rle(encode_rle(mask)), mask)
    mask = np.array([[1, 0], [1, 1]], dtype=bool)
    assert encode_rle(mask) == {"size": [2, 2], "counts": [0, 2, 1, 1]}  # column-major, starts with zeros
    with pytest.raises(ValueError, match="sum"):
        decode_rle({"size": [2, 2], "counts": [1, 1]})


# --------------------------------------------------------------------------- downstream


def test_downstream_layouts(phantom_root: Path, annotations: dict) -> None:
    chexpert = phantom_root / "downstream" / "chexpert"
    rows = read_csv(chexpert / "train.csv") + read_csv(chexpert / "valid.csv")
    assert rows and list(rows[0])[:5] == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
    assert len(rows[0]) == 5 + 14
    for row in rows:
        assert (chexpert / row["Path"]).is_file(), row["Path"]
        assert all(row[n] in ("", "1.0", "0.0", "-1.0") for n in LABEL_NAMES)
    rsna = phantom_root / "downstream" / "rsna"
    boxes = read_csv(rsna / "stage_2_train_labels.csv")
    assert list(boxes[0]) == ["patientId", "x", "y", "width", "height", "Target"]
    assert {r["Target"] for r in boxes} == {"0", "1"}
    for row in boxes:
        ds = pydicom.dcmread(rsna / "stage_2_train_images" / f"{row['patientId']}.dcm")
        assert ds.pixel_array.dtype == np.uint8 and ds.PatientID == row["patientId"]
        if row["Target"] == "1":
            x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
            assert 0 <= x and 0 <= y and x + w <= ds.Columns and y + h <= ds.Rows and w > 0 and h > 0
    # new chests (downstream_images of them, not one per MIMIC study); their pixels: test_dense_adapters.py
    assert len({r["patientId"] for r in boxes}) == len(list((rsna / "stage_2_train_images").glob("*.dcm"))) == 60


# --------------------------------------------------------------------------- determinism and entry points


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    kwargs = dict(studies=6, seed=11, jpg=True, image_size_range=(96, 128), split_fractions=(0.5, 0.25, 0.25),
                  downstream=True)  # fmt: skip
    one = make_phantoms(tmp_path / "one", workers=1, **kwargs)
    two = make_phantoms(tmp_path / "two", workers=2, **kwargs)
    files_one = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    files_two = sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert files_one == files_two and len(files_one) > 20
    for rel in files_one:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    other = make_phantoms(tmp_path / "other", workers=1, **dict(kwargs, seed=12))
    assert (other / "phantom_annotations.json").read_bytes() != (one / "phantom_annotations.json").read_bytes()


def test_refuses_a_foreign_non_empty_folder_and_replaces_an_old_phantom_set(tmp_path: Path) -> None:
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        make_phantoms(tmp_path / "foreign", studies=1, seed=0, image_size_range=(96, 96))
    out = make_phantoms(tmp_path / "again", studies=3, seed=0, image_size_range=(96, 96), split_fractions=(1, 0, 0))
    make_phantoms(out, studies=1, seed=0, image_size_range=(96, 96), split_fractions=(1, 0, 0))
    assert len(list((out / "files").rglob("*.txt"))) == 1


def test_script_runs_from_the_repo_root(repo_root: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "data_prep/make_phantoms.py", "--out", str(tmp_path / "cli"), "--studies", "2",
           "--seed", "5", "--image-size-range", "96,112", "--split-fractions", "1,0,0", "--workers", "2"]  # fmt: skip
    done = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(read_csv(tmp_path / "cli" / "mimic-cxr-2.0.0-chexpert.csv.gz")) == 2
    bad = subprocess.run([*cmd[:2], "--out", str(tmp_path / "x"), "--studies", "2", "--seed", "1",
                          "--image-size-range", "96"], cwd=repo_root, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "comma-separated" in bad.stderr
