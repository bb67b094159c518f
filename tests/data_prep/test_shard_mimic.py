"""The sharder end to end on small MIMIC layouts: counts, format, determinism, slicing, skips, CLI, encoder."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate

from data_prep.mimic_metadata import CHEXPERT_LABELS
from data_prep.shard_manifest import outcome_problem
from data_prep.shard_mimic import ShardConfig, build_parser, main, merge_manifests, shard_mimic
from pipeline.config import load_config
from tests.data_prep.mimic_layout import (
    REPO,
    SECRET_BIRTH,
    SECRET_NAME,
    SmallMimic,
    build_small_mimic,
    chest_brightness,
    comparable,
    copy_layout,
    lung_and_bone_masks,
    output_files,
    read_samples,
    shard_config,
    write_dicom,
)


@pytest.fixture(scope="module")
def small_mimic(tmp_path_factory: pytest.TempPathFactory) -> SmallMimic:
    """Eight subjects, one frontal + one lateral each, varied encodings, one blank ViewPosition."""
    return build_small_mimic(tmp_path_factory.mktemp("small") / "mimic", subjects=8)


@pytest.fixture(scope="module")
def reference_run(small_mimic: SmallMimic, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One clean single-worker run that other tests compare against."""
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, shard_mimic(shard_config(small_mimic.root, out, workers=1))


def test_end_to_end_counts_format_polarity_and_no_phi(small_mimic: SmallMimic, reference_run: tuple[Path, dict]) -> None:
    """Every frontal image is a readable sample of the right size and polarity; laterals and PHI are absent."""
    out, manifest = reference_run
    assert {s: info["num_samples"] for s, info in manifest["splits"].items()} == {
        s: len(ids) for s, ids in small_mimic.frontal.items()
    }
    assert manifest["skipped"] == {} and manifest["filtered"]["view_not_selected"] == len(small_mimic.lateral)
    assert manifest["label_names"] == list(CHEXPERT_LABELS) and manifest["report_encoder"] is None
    seen = set()
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            data = (out / shard["path"]).read_bytes()
            assert len(data) == shard["bytes"] and SECRET_NAME.encode() not in data and SECRET_BIRTH.encode() not in data
            samples = read_samples(out, shard["path"])
            assert len(samples) == shard["num_samples"]
            for sample in samples:
                meta = json.loads(sample["json"])
                assert set(meta) == {"subject_id", "study_id", "dicom_id", "view", "split", "sections", "text_source",
                                     "labels", "transform", "original_size"}
                assert meta["split"] == split and meta["view"] in ("PA", "AP") and sample["__key__"] == meta["dicom_id"]
                assert sample["txt"].decode().startswith("No acute intrathoracic process.")
                image = np.asarray(Image.open(io.BytesIO(sample["png"])))
                rows, cols = meta["original_size"]
                assert min(image.shape) == 32 and image.dtype == np.uint8
                assert abs(image.shape[0] / image.shape[1] - rows / cols) < 0.05
                lung, bone = lung_and_bone_masks(*image.shape)
                assert image[lung].mean() + 80 < image[bone].mean(), meta["transform"]
                seen.add(meta["dicom_id"])
    assert seen == {i for ids in small_mimic.frontal.values() for i in ids}
    assert not seen & set(small_mimic.lateral)


def test_workers_and_task_slicing_are_byte_identical(
    small_mimic: SmallMimic, reference_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """--workers 2 and a 3-task job array + merge write exactly the bytes of the single-worker run."""
    reference_out, reference = reference_run
    expected = output_files(reference_out)
    two = tmp_path / "two"
    assert comparable(shard_mimic(shard_config(small_mimic.root, two, workers=2))) == comparable(reference)
    assert output_files(two) == expected
    sliced = tmp_path / "sliced"
    for index in range(3):
        part = shard_mimic(shard_config(small_mimic.root, sliced, num_tasks=3, task_index=index))
        assert all(int(s["path"][-10:-4]) % 3 == index for s in part["shards"])
    assert not (sliced / "manifest.json").exists()
    merged = merge_manifests(sliced, 3)
    assert comparable(merged) == comparable(reference)
    assert output_files(sliced) == expected
    assert json.loads((sliced / "manifest.json").read_text()) == merged
    assert main(["--merge", "--num-tasks", "3", "--out", str(sliced)]) == 0  # the command-line merge, idempotent
    assert output_files(sliced) == expected
    (sliced / "manifest.part-00001-of-00003.json").unlink()
    with pytest.raises(FileNotFoundError, match="task 1 of 3"):
        merge_manifests(sliced, 3)


def test_corrupt_inputs_are_skipped_with_their_reason(small_mimic: SmallMimic, tmp_path: Path) -> None:
    """Each kind of bad input is skipped and counted with its reason; everything else is written."""
    layout = copy_layout(build_small_mimic(tmp_path / "base", subjects=12), tmp_path / "mimic")
    frontal = sorted(i for ids in layout.frontal.values() for i in ids)
    expected: dict[str, str] = {}

    def corrupt(reason: str) -> str:
        dicom_id = frontal[len(expected)]
        expected[dicom_id] = reason
        return dicom_id

    path = layout.dicom_path(corrupt("unreadable_dicom"))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    layout.dicom_path(corrupt("unreadable_dicom")).write_bytes(b"\0" * 50 + b"garbage")
    ds = pydicom.dcmread(layout.dicom_path(dicom_id := corrupt("unsupported_transfer_syntax")))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom has no decoder
    ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(layout.dicom_path(dicom_id))
    layout.report_path(corrupt("missing_report")).unlink()
    layout.report_path(corrupt("empty_report")).write_text("  \n\n", encoding="utf-8")
    layout.report_path(corrupt("no_usable_section")).write_text("INDICATION: ___\nCOMPARISON: None.\n", encoding="utf-8")
    layout.report_path(corrupt("too_few_words")).write_text("IMPRESSION: Normal.\n", encoding="utf-8")
    layout.dicom_path(corrupt("missing_file")).unlink()
    no_split = corrupt("missing_split_row")
    layout.split_rows = [r for r in layout.split_rows if r["dicom_id"] != no_split]
    extra = layout.dicom_path(frontal[-1]).parent / "ffffffff-orphan.dcm"
    write_dicom(extra, chest_brightness(40, 40, 9))
    expected["ffffffff-orphan"] = "file_without_csv_row"
    layout.write_csvs()

    out = tmp_path / "out"
    manifest = shard_mimic(shard_config(layout.root, out, max_skip_fraction=1.0))
    rows = (out / "skipped.csv").read_text(encoding="utf-8").splitlines()
    got = {line.split(",")[0]: line.split(",")[2] for line in rows[1:]}
    assert rows[0] == "id,split,reason,detail" and got == expected
    written = {json.loads(s["json"])["dicom_id"] for split in manifest["splits"].values()
               for shard in split["shards"] for s in read_samples(out, shard["path"])}
    assert written == set(frontal) - set(expected)
    counts: dict[str, int] = {}
    for reason in expected.values():
        counts[reason] = counts.get(reason, 0) + 1
    assert manifest["skipped"] == dict(sorted(counts.items()))
    assert "max_skip_fraction" in (outcome_problem(manifest, 0.05) or "")


def test_exit_codes_and_messages(small_mimic: SmallMimic, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Exit 0 on a clean run; non-zero with a reason when nothing is written or too much is skipped."""
    base = ["--mimic-root", str(small_mimic.root), "--image-size", "16"]
    assert main([*base, "--out", str(tmp_path / "ok"), "--splits", "validate"]) == 0
    assert main([*base, "--out", str(tmp_path / "none"), "--views", "LL"]) == 1
    assert "nothing was written" in caplog.text
    broken = copy_layout(small_mimic, tmp_path / "broken")
    broken.report_path(broken.frontal["train"][0]).unlink()
    assert main(["--mimic-root", str(broken.root), "--image-size", "16", "--out", str(tmp_path / "b")]) == 1
    assert "max_skip_fraction" in caplog.text and "missing_report: 1" in caplog.text
    assert main(["--mimic-root", str(broken.root), "--image-size", "16", "--out", str(tmp_path / "c"),
                 "--max-skip-fraction", "0.5"]) == 0


def test_cli_flags_have_no_defaults_and_override_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    """Argparse carries no defaults (YAML does); flags, overrides and the phantom config resolve."""
    args = build_parser().parse_args([])
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "overrides", "print_config", "merge")}
    assert flags and all(v is None for v in flags.values())
    assert main(["--print-config", "--views", "PA", "--workers", "3", "window.percentile_low=1.0"]) == 0
    printed = capsys.readouterr().out
    assert "- PA\n" in printed and "workers: 3" in printed and "percentile_low: 1.0" in printed
    assert "max_skip_fraction: 0.05" in printed and "image_size: 512" in printed
    phantom = load_config(ShardConfig, REPO / "configs" / "data" / "phantom.yaml")
    assert phantom.image_size == 256 and phantom.views == ["PA", "AP"]
    assert main(["--print-config", "--splits", "train,bogus"]) == 2


def test_jpg_source(small_mimic: SmallMimic, tmp_path: Path) -> None:
    """MIMIC-CXR-JPG images (with the CSVs beside them) shard like the DICOMs."""
    jpg_root = tmp_path / "jpg"
    for dicom in small_mimic.root.glob("files/**/*.dcm"):
        target = jpg_root / dicom.relative_to(small_mimic.root).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        ds = pydicom.dcmread(dicom)
        Image.fromarray(chest_brightness(ds.Rows, ds.Columns, 0).__mul__(255).astype(np.uint8)).save(target)
    for csv_file in small_mimic.root.glob("*.csv.gz"):
        shutil.copy(csv_file, jpg_root / csv_file.name)
    out = tmp_path / "out"
    manifest = shard_mimic(shard_config(small_mimic.root, out, image_source="jpg", jpg_root=str(jpg_root),
                                        image_format="jpg"))
    assert {s: i["num_samples"] for s, i in manifest["splits"].items()} == {s: len(v) for s, v in small_mimic.frontal.items()}
    sample = read_samples(out, manifest["splits"]["test"]["shards"][0]["path"])[0]
    assert json.loads(sample["json"])["transform"]["source"] == "jpg" and min(Image.open(io.BytesIO(sample["jpg"])).size) == 32


def test_png16_output(small_mimic: SmallMimic, tmp_path: Path) -> None:
    """--image-format png16 stores 16-bit grayscale PNGs (extension png)."""
    manifest = shard_mimic(shard_config(small_mimic.root, tmp_path / "out", image_format="png16", splits=["test"]))
    window = {"use_file_voi": True, "percentile_low": 0.5, "percentile_high": 99.5}  # configs/data/mimic.yaml
    assert manifest["image"] == {"format": "png", "bits": 16, "size": 32, "source": "dicom", "window": window}
    sample = read_samples(tmp_path / "out", manifest["splits"]["test"]["shards"][0]["path"])[0]
    image = np.asarray(Image.open(io.BytesIO(sample["png"])))
    assert image.dtype in (np.uint16, np.int32) and image.max() > 255
