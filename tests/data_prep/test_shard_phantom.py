"""The sharder on the phantom MIMIC-CXR set: counts match the CSVs minus documented filters, images are right."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from data_prep.mimic_metadata import study_folder
from data_prep.reports import extract_sections
from data_prep.shard_mimic import ShardConfig, shard_mimic
from pipeline.config import load_config
from tests.data_prep.mimic_layout import comparable, output_files, read_samples

REPO = Path(__file__).resolve().parents[2]
PHANTOM_YAML = REPO / "configs" / "data" / "phantom.yaml"
SIZE = 64


def _csv(path: Path) -> list[dict[str, str]]:
    """Rows of a gzipped CSV."""
    return list(csv.DictReader(io.StringIO(gzip.decompress(path.read_bytes()).decode("utf-8"))))


def _config(phantom_root: Path, out: Path, *extra: str) -> ShardConfig:
    """configs/data/phantom.yaml pointed at the phantom set, small images."""
    return load_config(ShardConfig, PHANTOM_YAML, [f"mimic_root={phantom_root}", f"out={out}", f"image_size={SIZE}", *extra])


@pytest.fixture(scope="module")
def phantom_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The phantom set sharded with the phantom config (two workers)."""
    out = tmp_path_factory.mktemp("phantom_shards") / "out"
    return out, shard_mimic(_config(phantom_root, out, "shard_size=8"))


def test_counts_match_csvs_minus_documented_filters(phantom_root: Path, phantom_run: tuple[Path, dict]) -> None:
    """Per split: frontal rows of the CSVs, minus reports with neither FINDINGS nor IMPRESSION, are the samples."""
    out, manifest = phantom_run
    split_of = {r["dicom_id"]: r["split"] for r in _csv(phantom_root / "mimic-cxr-2.0.0-split.csv.gz")}
    frontal: dict[str, set[str]] = {"train": set(), "validate": set(), "test": set()}
    lateral, unusable = set(), set()
    for row in _csv(phantom_root / "mimic-cxr-2.0.0-metadata.csv.gz"):
        if row["ViewPosition"] not in ("PA", "AP"):
            lateral.add(row["dicom_id"])
            continue
        frontal[split_of[row["dicom_id"]]].add(row["dicom_id"])
        folder = study_folder(int(row["subject_id"]), int(row["study_id"]))
        sections = extract_sections((phantom_root / folder.parent / f"{folder.name}.txt").read_text(encoding="utf-8"))
        if sections["findings"] is None and sections["impression"] is None:
            unusable.add(row["dicom_id"])
    assert manifest["candidates"] == {s: len(ids) for s, ids in frontal.items()}
    assert manifest["filtered"]["view_not_selected"] == len(lateral)
    assert set(manifest["skipped"]) <= {"no_usable_section", "too_few_words"}
    written: dict[str, set[str]] = {s: set() for s in frontal}
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            samples = read_samples(out, shard["path"])  # every shard readable with webdataset
            assert len(samples) == shard["num_samples"]
            written[split] |= {s["__key__"] for s in samples}
        assert info["num_samples"] == len(written[split])
    skipped = {row["id"]: row["reason"] for row in csv.DictReader(io.StringIO((out / "skipped.csv").read_text()))}
    assert {i for i, r in skipped.items() if r == "no_usable_section"} == unusable
    for split, ids in frontal.items():
        assert written[split] == ids - set(skipped), split
    assert not set().union(*written.values()) & lateral


def test_images_have_the_right_size_and_polarity(phantom_root: Path, phantom_run: tuple[Path, dict]) -> None:
    """Each image has short side SIZE, the original aspect, and the polarity of the phantom's JPG (air dark)."""
    out, manifest = phantom_run
    annotations = json.loads((phantom_root / "phantom_annotations.json").read_text())["images"]
    inverted = 0
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            for sample in read_samples(out, shard["path"]):
                meta = json.loads(sample["json"])
                truth = annotations[meta["dicom_id"]]
                assert truth["view"] in ("PA", "AP") and meta["original_size"] == [truth["rows"], truth["cols"]]
                image = np.asarray(Image.open(io.BytesIO(sample["png"])), dtype=np.float64)
                assert min(image.shape) == SIZE
                assert abs(image.shape[0] / image.shape[1] - truth["rows"] / truth["cols"]) < 0.03
                folder = study_folder(meta["subject_id"], meta["study_id"])
                with Image.open(phantom_root / "jpg" / folder / f"{meta['dicom_id']}.jpg") as jpg:
                    reference = np.asarray(jpg.convert("L").resize(image.shape[::-1], Image.Resampling.BILINEAR), dtype=np.float64)
                correlation = np.corrcoef(image.ravel(), reference.ravel())[0, 1]
                assert correlation > 0.8, (meta["dicom_id"], meta["transform"], correlation)
                inverted += meta["transform"]["inverted"]
    assert inverted > 0  # MONOCHROME1 films were among them


def test_jpg_source_and_single_worker_agree(phantom_root: Path, phantom_run: tuple[Path, dict], tmp_path: Path) -> None:
    """One worker writes the same bytes as two; the JPG mirror gives the same sample counts."""
    out, manifest = phantom_run
    single = shard_mimic(_config(phantom_root, tmp_path / "one", "shard_size=8", "workers=1"))
    assert comparable(single) == comparable(manifest) and output_files(tmp_path / "one") == output_files(out)
    jpg = shard_mimic(_config(phantom_root, tmp_path / "jpg", "shard_size=8", "image_source=jpg",
                              f"jpg_root={phantom_root / 'jpg'}"))
    assert {s: i["num_samples"] for s, i in jpg["splits"].items()} == {s: i["num_samples"] for s, i in manifest["splits"].items()}
