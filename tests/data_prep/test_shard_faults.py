"""Hostile inputs and faults of the sharder: malformed/duplicate CSV rows, FIFOs, extreme aspect ratios,
a second sharder on one --out, a full disk and a killed worker. Each ends in a skip or one line + exit code."""

from __future__ import annotations

import csv
import errno
import gzip
import io
import json
import logging
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from data_prep import shard_mimic as sharder
from data_prep.shard_lock import ShardLocks
from data_prep.shard_writer import load_complete_state
from tests.data_prep.mimic_layout import (
    SmallMimic,
    build_small_mimic,
    chest_brightness,
    copy_layout,
    write_dicom,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SmallMimic:
    """Four subjects (one frontal + one lateral each)."""
    return build_small_mimic(tmp_path_factory.mktemp("faults") / "mimic", subjects=4)


def _skips(out: Path) -> dict[str, str]:
    """skipped.csv as {id: reason}."""
    return {r["id"]: r["reason"] for r in csv.DictReader(io.StringIO((out / "skipped.csv").read_text()))}


def _rewrite_gz(path: Path, edit) -> None:
    """Apply ``edit`` to the lines of a gzipped CSV."""
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    path.write_bytes(gzip.compress(("\n".join(edit(lines)) + "\n").encode(), mtime=0))


def _args(layout: SmallMimic, out: Path, *extra: str) -> list[str]:
    return ["--mimic-root", str(layout.root), "--out", str(out), "--image-size", "32", "--shard-size", "2",
            "--max-skip-fraction", "1.0", *extra]


def test_short_malformed_and_duplicate_rows_are_skips(small, tmp_path):
    """A short chexpert row, a one-column split row and a repeated metadata row: each a skip, nothing else changes."""
    layout = copy_layout(small, tmp_path / "m")
    short_study, one_col, dup = layout.frontal["train"][0], layout.frontal["train"][1], layout.frontal["test"][0]
    study_of_short = next(r["study_id"] for r in layout.meta_rows if r["dicom_id"] == short_study)
    _rewrite_gz(layout.root / "mimic-cxr-2.0.0-chexpert.csv.gz",
                lambda ls: [",".join(line.split(",")[:5]) if f",{study_of_short}," in line else line for line in ls])
    _rewrite_gz(layout.root / "mimic-cxr-2.0.0-split.csv.gz",
                lambda ls: [one_col if line.startswith(one_col) else line for line in ls])
    _rewrite_gz(layout.root / "mimic-cxr-2.0.0-metadata.csv.gz",
                lambda ls: ls + [line for line in ls if line.startswith(dup)])
    out = tmp_path / "out"
    assert sharder.main(_args(layout, out)) == 0
    skips = _skips(out)
    assert skips[short_study] == "bad_csv_row" and skips[one_col] == "bad_csv_row"
    assert skips[dup] == "duplicate_csv_row"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["test"]["num_samples"] == 1  # the duplicated row wrote its sample once


def test_fifo_and_extreme_aspect_ratio_are_skipped(small, tmp_path):
    """A .dcm or a report that is a FIFO never blocks; a 1 x 200 px image is skipped with the limit named."""
    layout = copy_layout(small, tmp_path / "m")
    fifo_id, thin_id, fifo_report_id = layout.frontal["train"][0], layout.frontal["train"][1], layout.frontal["test"][0]
    for fifo in (layout.dicom_path(fifo_id), layout.report_path(fifo_report_id)):
        fifo.unlink()
        os.mkfifo(fifo)
    write_dicom(layout.dicom_path(thin_id), chest_brightness(4, 200, seed=1))
    out = tmp_path / "out"
    assert sharder.main(_args(layout, out, "max_aspect_ratio=4.0")) == 0
    skips = _skips(out)
    assert skips[fifo_id] == "not_regular_file" and skips[thin_id] == "extreme_aspect_ratio"
    assert skips[fifo_report_id] == "not_regular_file"
    detail = next(r["detail"] for r in csv.DictReader(io.StringIO((out / "skipped.csv").read_text())) if r["id"] == thin_id)
    assert "max_aspect_ratio 4.0" in detail


def _hold_locks(out: Path, shards, ready, done) -> None:
    locks = ShardLocks(out)
    locks.acquire(shards)
    ready.set()
    done.wait(30)


def test_second_sharder_on_one_out_is_refused_but_array_slices_are_not(small, tmp_path, caplog):
    """Another process holds shard train-000000: a full run is refused (exit 5, names it); task 1 of 2 runs."""
    out = tmp_path / "out"
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_locks, args=(out, [("train", 0, "train/train-000000.tar")], ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        with caplog.at_level(logging.ERROR):
            assert sharder.main(_args(small, out)) == sharder.EXIT_LOCKED
        assert "train/train-000000.tar" in caplog.text and f"process {holder.pid}" in caplog.text
        assert not (out / "manifest.json").exists()
        assert sharder.main(_args(small, out, "--num-tasks", "2", "--task-index", "1")) == 0  # disjoint shards
    finally:
        done.set()
        holder.join(30)
    locks = ShardLocks(out)  # the holder is gone: its lock went with it
    locks.acquire([("train", 0, "train/train-000000.tar")])
    locks.release()


def test_full_disk_names_the_folder_and_keeps_finished_shards(small, tmp_path, monkeypatch, caplog):
    """ENOSPC on the second shard: exit 3, one line naming the folder; the first shard stays valid for --resume."""
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr("data_prep.shard_writer.os.fsync", fsync)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        code = sharder.main(_args(small, out, "--workers", "1"))
    assert code == sharder.EXIT_WRITE_FAILED
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "no space left on the device" in errors[0] and str(out) in errors[0]
    finished = [p.relative_to(out).as_posix() for p in out.rglob("*.tar")]
    assert len(finished) == 1 and load_complete_state(out, finished[0]) is not None
    assert not list(out.rglob("*.tmp.*"))


def _die_on_second_shard(job, settings, out_dir):
    if job.split == "validate":
        os.kill(os.getpid(), 9)
    return sharder.build_shard(job, settings, out_dir, sharder._tick_shared)


def test_killed_worker_is_one_line_and_exit_4(small, tmp_path, monkeypatch, caplog):
    """A pool worker SIGKILLed mid-run: exit 4 with a line saying to rerun with --resume (no traceback)."""
    monkeypatch.setattr(sharder, "_run_job", _die_on_second_shard)
    with caplog.at_level(logging.ERROR):
        code = sharder.main(_args(small, tmp_path / "out", "--workers", "2"))
    assert code == sharder.EXIT_WORKER_DIED
    assert "worker process died" in caplog.text and "--resume" in caplog.text
