"""The typed manifest: round trip, schema versions (older upgraded, newer refused) and the upgrade command."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data.shards import resolve_shards
from pipeline.eval.adapters import load_shard_split
from pipeline.shard_format import (
    SCHEMA_VERSION,
    ImageInfo,
    ReportEncoderInfo,
    ShardFormatError,
    ShardManifest,
    ShardRecord,
    SplitEntry,
    WindowSettings,
    read_manifest,
)
from pipeline.shard_format.__main__ import main as shard_format_main

WINDOW = {"use_file_voi": True, "percentile_low": 1.0, "percentile_high": 99.0}


def _schema1(source: str = "dicom") -> dict:
    """A manifest as the sharder wrote it before schema versions (no schema_version, no image.window)."""
    return {
        "splits": {"train": {"num_samples": 3, "shards": [
            {"path": "train/train-000000.tar", "num_samples": 3, "bytes": 10240, "sha256": "ab" * 32}]}},
        "label_names": ["Edema"], "image": {"format": "png", "bits": 8, "size": 32, "source": source},
        "report_encoder": None, "skipped": {}, "filtered": {}, "candidates": {"train": 3},
        "args": {"window": WINDOW, "image_size": 32}, "versions": {"python": "3.11"}, "seconds": 1.5,
    }


def test_round_trip_keeps_every_field() -> None:
    manifest = ShardManifest(
        splits={"test": SplitEntry(2, (ShardRecord("test/test-000000.tar", 2, 4096, "cd" * 32),))},
        label_names=("Edema", "Cardiomegaly"),
        image=ImageInfo("png", 16, 64, "dicom", WindowSettings(True, 0.5, 99.5)),
        report_encoder=ReportEncoderInfo("minilm", 384, "mean"),
        skipped={"too_few_words": 1}, candidates={"test": 3}, seconds=2.0,
    )
    data = json.loads(json.dumps(manifest.to_json()))
    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert ShardManifest.from_json(data, "m") == manifest


def test_schema_1_is_read_upgraded_with_the_window_of_its_args(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(_schema1()))
    with caplog.at_level(logging.WARNING):
        manifest = read_manifest(path)
    assert manifest.schema_version == 2 and manifest.image.window == WindowSettings(True, 1.0, 99.0)
    assert "python -m pipeline.shard_format upgrade" in caplog.text
    assert ShardManifest.from_json(_schema1("jpg"), "m").image.window is None  # JPGs come windowed already


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, "2", 0])
def test_newer_or_malformed_versions_are_refused_by_every_reader(tmp_path: Path, version: object) -> None:
    data = {**_schema1(), "schema_version": version}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    match = "newer sharder" if version == SCHEMA_VERSION + 1 else "not a positive integer"
    with pytest.raises(ShardFormatError, match=match):
        resolve_shards("train", manifest=str(tmp_path / "manifest.json"), check=False)
    with pytest.raises(ShardFormatError, match=match):
        load_shard_split(tmp_path, "train", uncertain="ignore")


def test_upgrade_command_rewrites_and_keeps_the_old_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(_schema1()))
    assert shard_format_main(["upgrade", str(tmp_path)]) == 0
    upgraded = json.loads((tmp_path / "manifest.json").read_text())
    assert upgraded["schema_version"] == 2 and upgraded["image"]["window"] == WINDOW
    assert json.loads((tmp_path / "manifest.schema1.json").read_text()) == _schema1()
    assert {k: v for k, v in upgraded.items() if k != "schema_version" and k != "image"} == {
        k: v for k, v in _schema1().items() if k != "image"}
    result = subprocess.run([sys.executable, "-m", "pipeline.shard_format", "upgrade", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "already schema_version 2" in result.stdout
    assert shard_format_main(["upgrade", str(tmp_path / "nowhere")]) == 1
    assert "no manifest to upgrade" in capsys.readouterr().err
