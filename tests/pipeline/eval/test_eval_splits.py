"""Split files: committed ones (BenchX layout) read as given, seeded ones written once and reused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.eval.adapters import LabelledImages
from pipeline.eval.config import EvalConfig
from pipeline.eval.linear_probe import load_probe_data
from pipeline.eval.splits import fraction_split, read_committed_splits

REPO = Path(__file__).resolve().parents[3]


def _pool(count: int = 20) -> LabelledImages:
    """``count`` binary-labelled samples named s00, s01, ... whose images are never read."""
    ids = [f"s{i:02d}" for i in range(count)]
    return LabelledImages("toy", ids, [lambda: None] * count, np.zeros((count, 1)), ["Finding"], "binary")


def _write(folder: Path, name: str, ids: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(f"{i}\n" for i in ids))
    return folder / name


def test_committed_splits_and_fractions_are_read_as_given(tmp_path: Path) -> None:
    pool, committed = _pool(), tmp_path / "benchx"
    _write(committed, "train.txt", [f"s{i:02d}" for i in range(12)])
    _write(committed, "val.txt", ["s12", "s13", "s14"])
    _write(committed, "test.txt", ["s19", "s15", "s16", "s17", "s18"])  # order kept
    _write(committed, "train_1.txt", ["images/s03", "s07"])  # BenchX names COVIDx images folder/file
    train, valid, test = read_committed_splits(committed, pool.ids)
    assert train == [f"s{i:02d}" for i in range(12)] and valid == ["s12", "s13", "s14"]
    assert test == ["s19", "s15", "s16", "s17", "s18"]

    seeded = tmp_path / "seeded"
    ids, source = fraction_split(train, 0.01, seed=0, minimum=2, split_dir=seeded, committed=committed)
    assert (ids, source) == (["s03", "s07"], committed / "train_1.txt")
    ids, source = fraction_split(train, 1.0, seed=0, minimum=2, split_dir=seeded, committed=committed)
    assert ids == train and source == committed / "train.txt"
    # no train_10.txt: a seeded file is written once, then reused
    ids, source = fraction_split(train, 0.1, seed=0, minimum=4, split_dir=seeded, committed=committed)
    assert source == seeded / "train_10pct_seed0.txt" and len(ids) == 4 and set(ids) <= set(train)
    source.write_text("s00\ns01\n")
    again, _ = fraction_split(train, 0.1, seed=0, minimum=4, split_dir=seeded, committed=committed)
    assert again == ["s00", "s01"]


def test_committed_split_errors_name_the_file_and_line(tmp_path: Path) -> None:
    pool, committed = _pool(), tmp_path / "benchx"
    _write(committed, "train.txt", ["s00", "s01"])
    _write(committed, "valid.txt", ["s02"])  # the other accepted name of the validation file
    with pytest.raises(FileNotFoundError, match=r"benchx: missing test.txt"):
        read_committed_splits(committed, pool.ids)
    _write(committed, "test.txt", ["s03", "", "nope"])
    with pytest.raises(ValueError, match=r"test.txt:3: id 'nope' is not in the data set"):
        read_committed_splits(committed, pool.ids)
    _write(committed, "test.txt", ["s03", "s03"])
    with pytest.raises(ValueError, match=r"test.txt:2: id 's03' is listed twice"):
        read_committed_splits(committed, pool.ids)
    _write(committed, "test.txt", ["s03", "s01"])
    with pytest.raises(ValueError, match=r"train.txt and .*test.txt share 1 ids"):
        read_committed_splits(committed, pool.ids)
    _write(committed, "test.txt", ["s03"])
    train, _, _ = read_committed_splits(committed, pool.ids)
    _write(committed, "train_1.txt", ["s05"])  # not in train.txt
    with pytest.raises(ValueError, match=r"train_1.txt:1: id 's05' is not in the data set"):
        fraction_split(train, 0.01, seed=0, minimum=1, split_dir=tmp_path / "s", committed=committed)


def _covidx_tree(root: Path) -> None:
    """COVIDx's published layout: 10 training and 3 test PNGs, classes alternating."""
    for split, count in (("train", 10), ("test", 3)):
        lines = []
        for i in range(count):
            name = f"{split}{i}.png"
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 20 * i, dtype=np.uint8)).save(root / split / name)
            lines.append(f"p{i} {name} {('negative', 'positive')[i % 2]} src\n")
        (root / f"{split}.txt").write_text("".join(lines))


def test_probe_reads_a_data_sets_committed_splits(tmp_path: Path) -> None:
    """With data.covidx.split_files set, train / valid / test are exactly the committed files (BenchX's names)."""
    _covidx_tree(tmp_path / "covidx")
    committed = tmp_path / "covidx_splits"
    _write(committed, "train.txt", [f"train/train{i}.png" for i in range(7)])
    _write(committed, "val.txt", ["train/train7.png", "train/train8.png", "test/test2.png"])
    _write(committed, "test.txt", ["test/test0.png", "test/test1.png", "train/train9.png"])

    def probe_data(*overrides: str):
        cfg = load_config(EvalConfig, REPO / "configs/eval/linear_probe.yaml", [
            "checkpoint=unused", f"data.covidx.root={tmp_path / 'covidx'}", f"linear_probe.split_dir={tmp_path / 's'}",
            *overrides,
        ])
        return load_probe_data(SimpleNamespace(cfg=cfg), "covidx")

    data = probe_data(f"data.covidx.split_files={committed}")
    assert data.train.ids == [f"train{i}.png" for i in range(7)] and data.committed == committed
    assert data.valid.ids == ["train7.png", "train8.png", "test2.png"]
    assert data.test.ids == ["test0.png", "test1.png", "train9.png"]
    assert data.test.labels.tolist() == [0, 1, 1]
    seeded = probe_data()  # without: train.txt's pool with a seeded validation part, test.txt as the test set
    assert seeded.committed is None and [len(seeded.train), len(seeded.valid), len(seeded.test)] == [9, 1, 3]
