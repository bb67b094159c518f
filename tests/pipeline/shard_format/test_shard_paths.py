"""Manifest paths and pipe: templates: no path can run a command, no template can undo the quoting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data.shards import ShardError, resolve_shards
from pipeline.eval.adapters import load_shard_split
from pipeline.shard_format import (
    ShardFormatError,
    check_template,
    shard_index,
    shard_path,
    shard_url,
    validate_relative_path,
)


def test_shard_path_pattern_round_trips() -> None:
    assert shard_path("validate", 12) == "validate/validate-000012.tar"
    assert shard_index("validate", "validate-000012.tar") == 12
    assert shard_index("train", "validate-000012.tar") is None and shard_index("train", "train-1.tar") is None


@pytest.mark.parametrize("path", [
    "/etc/passwd", "../outside.tar", "train/../../x.tar", "train//a.tar", "./train/a.tar", "train/-rf.tar",
    "train/a.tar; touch MARKER #", "train/$(id).tar", "train/a`id`.tar", "train/a b.tar", "train/a\nb.tar",
    "train/a\x1b[2J.tar", "train/a'.tar", "", 7,
])
def test_unsafe_manifest_paths_are_refused(path: object) -> None:
    with pytest.raises(ShardFormatError, match="shard path"):
        validate_relative_path(path, "manifest.json")


def test_safe_paths_pass_unchanged() -> None:
    assert validate_relative_path("train/train-000000.tar", "m") == "train/train-000000.tar"
    assert shard_url("train/x-1.tar", "pipe:cat m", "pipe:cat /s/{path}") == "pipe:cat /s/train/x-1.tar"


@pytest.mark.parametrize("template", ["pipe:cat '{path}'", 'pipe:cat "/s/{path}"', "pipe:cat '/a b'/\"x{path}\""])
def test_a_template_that_quotes_the_path_itself_is_refused(template: str) -> None:
    with pytest.raises(ShardFormatError, match="inside . quotes"):
        check_template(template)


@pytest.mark.parametrize("template", ["pipe:cat {path}", "pipe:sh -c 'cat \"$0\"' /s/{path}", "pipe:cat \\'{path}"])
def test_templates_with_an_unquoted_path_are_accepted(template: str) -> None:
    check_template(template)


def _manifest_with_path(folder: Path, relative: str) -> Path:
    """A schema-2 manifest whose one training shard is at ``relative``."""
    data = {"schema_version": 2, "label_names": ["Edema"],
            "splits": {"train": {"num_samples": 1, "shards": [{"path": relative, "num_samples": 1}]}}}
    path = folder / "manifest.json"
    path.write_text(json.dumps(data))
    return path


def test_a_path_that_injects_a_command_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented pipe: template with a hostile manifest path: refused by training and evaluation, nothing runs."""
    monkeypatch.chdir(tmp_path)
    manifest = _manifest_with_path(tmp_path, "train/train-000000.tar; touch MARKER #")
    template = f"pipe:cat {tmp_path}/{{path}}"
    with pytest.raises(ShardError, match="touch MARKER"):
        shards = resolve_shards("train", manifest=str(manifest), shard_root=template)
        import webdataset as wds  # what training does with the URL

        list(wds.WebDataset(list(shards.urls), shardshuffle=False, empty_check=False, handler=wds.ignore_and_continue))
    with pytest.raises(ShardFormatError, match="touch MARKER"):
        load_shard_split(manifest, "train", uncertain="ignore", shard_root=template, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "MARKER").exists()
