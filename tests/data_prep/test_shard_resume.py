"""Crash safety: a sharding run killed with SIGKILL, then resumed, ends byte-identical to a clean run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.shard_mimic import shard_mimic
from data_prep.shard_writer import STATE_DIR, state_path
from tests.data_prep.mimic_layout import SmallMimic, build_small_mimic, comparable, output_files, shard_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def resume_mimic(tmp_path_factory: pytest.TempPathFactory) -> SmallMimic:
    """Sixteen subjects with films large enough that a run takes a noticeable time."""
    return build_small_mimic(tmp_path_factory.mktemp("resume") / "mimic", subjects=16, size=(420, 380))


@pytest.fixture(scope="module")
def clean_run(resume_mimic: SmallMimic, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The uninterrupted run every resumed run must equal."""
    out = tmp_path_factory.mktemp("clean") / "out"
    return out, shard_mimic(shard_config(resume_mimic.root, out, image_size=64, shard_size=1, workers=1))


def _command(mimic: Path, out: Path, *extra: str) -> list[str]:
    """The sharder's command line as a user types it (the script itself, two workers)."""
    return [sys.executable, str(REPO / "data_prep" / "shard_mimic.py"), "--mimic-root", str(mimic), "--out", str(out),
            "--image-size", "64", "--shard-size", "1", "--workers", "2", *extra]


@pytest.mark.parametrize("shards_before_kill", [1, 5])
def test_sigkill_then_resume_is_byte_identical(
    resume_mimic: SmallMimic, clean_run: tuple[Path, dict], tmp_path: Path, shards_before_kill: int
) -> None:
    """SIGKILL the main process mid-run (its workers die with it), then --resume: same bytes as a clean run."""
    clean_out, clean_manifest = clean_run
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_command(resume_mimic.root, out), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        done = list((out / STATE_DIR).glob("*.json")) if (out / STATE_DIR).is_dir() else []
        if len(done) >= shards_before_kill:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed; make the fixture larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)  # workers receive SIGKILL through PR_SET_PDEATHSIG
    assert not (out / "manifest.json").exists()
    killed_state = sorted(p.name for p in (out / STATE_DIR).glob("*"))
    assert len(killed_state) < sum(len(v) for v in resume_mimic.frontal.values())
    result = subprocess.run(_command(resume_mimic.root, out, "--resume"), cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert output_files(out) == output_files(clean_out)
    assert comparable(json.loads((out / "manifest.json").read_text())) == comparable(clean_manifest)
    assert not [p for p in out.rglob("*") if ".tmp." in p.name]


def test_resume_repairs_every_partial_state(resume_mimic: SmallMimic, clean_run: tuple[Path, dict], tmp_path: Path) -> None:
    """Truncated shard, shard without record, record without shard, stale temp files: all redone; good shards kept."""
    clean_out, _ = clean_run
    out = tmp_path / "out"
    shutil.copytree(clean_out, out)
    (out / "manifest.json").unlink()
    shards = sorted(out.glob("*/*.tar"))
    relative = [p.relative_to(out).as_posix() for p in shards]
    shards[0].write_bytes(shards[0].read_bytes()[:1000])  # a damaged shard (checksum mismatch)
    state_path(out, relative[1]).unlink()  # killed between rename and record
    shards[2].unlink()  # record without shard
    (shards[3].parent / (shards[3].name + ".tmp.12345")).write_bytes(b"half a shard")
    (state_path(out, relative[4]).parent / (state_path(out, relative[4]).name + ".tmp.999")).write_text("{")
    untouched = shards[-1]
    before = untouched.stat().st_mtime_ns
    shard_mimic(shard_config(resume_mimic.root, out, image_size=64, shard_size=1, workers=1, resume=True))
    assert output_files(out) == output_files(clean_out)
    assert untouched.stat().st_mtime_ns == before
    assert not [p for p in out.rglob("*") if ".tmp." in p.name]


def test_a_dying_worker_fails_the_run_and_resume_completes_it(
    resume_mimic: SmallMimic, clean_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed mid-shard (e.g. a decoder crash) stops the run with an error, never a hang; --resume finishes."""
    import data_prep.shard_mimic as sharder

    real_build = sharder.build_shard

    def crash_on_third(job, settings, out_dir, tick):  # noqa: ANN001, ANN202 - same signature as build_shard
        if job.index == 2 and job.split == "train":
            os._exit(3)
        return real_build(job, settings, out_dir, tick)

    monkeypatch.setattr(sharder, "build_shard", crash_on_third)
    out = tmp_path / "out"
    cfg = shard_config(resume_mimic.root, out, image_size=64, shard_size=1, workers=2)
    with pytest.raises(Exception, match="terminated abruptly|BrokenProcessPool|process pool"):
        shard_mimic(cfg)
    monkeypatch.setattr(sharder, "build_shard", real_build)
    shard_mimic(shard_config(resume_mimic.root, out, image_size=64, shard_size=1, workers=2, resume=True))
    assert output_files(out) == output_files(clean_run[0])


def test_resume_with_other_settings_redoes_every_shard(resume_mimic: SmallMimic, clean_run: tuple[Path, dict],
                                                       tmp_path: Path) -> None:
    """Shards made with other settings are never kept: --resume with another image size rewrites them all."""
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    shutil.copytree(clean_run[0], out)
    shard_mimic(shard_config(resume_mimic.root, out, image_size=48, shard_size=1, workers=1, resume=True))
    shard_mimic(shard_config(resume_mimic.root, fresh, image_size=48, shard_size=1, workers=1))
    assert output_files(out) == output_files(fresh) != output_files(clean_run[0])


def test_resume_redoes_the_shards_whose_inputs_changed(tmp_path: Path) -> None:
    """An edited report (same mtime), a touched DICOM and a changed CSV label each get their shard redone."""
    mimic = build_small_mimic(tmp_path / "mimic", subjects=4)  # one shard per candidate: train 0, 1, validate 0, test 0
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    shard_mimic(shard_config(mimic.root, out, shard_size=1, workers=1))
    stamps = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.glob("*/*.tar")}
    report = mimic.report_path(mimic.frontal["train"][0])
    kept = report.stat()
    report.write_text(report.read_text().replace("No acute intrathoracic process.", "New small left effusion."))
    os.utime(report, ns=(kept.st_atime_ns, kept.st_mtime_ns))  # the content alone changed
    dicom = mimic.dicom_path(mimic.frontal["validate"][0])
    os.utime(dicom, ns=(dicom.stat().st_atime_ns, dicom.stat().st_mtime_ns + 10**9))
    test_subject = int(next(r for r in mimic.meta_rows if r["dicom_id"] == mimic.frontal["test"][0])["subject_id"])
    next(r for r in mimic.label_rows if r["subject_id"] == test_subject)["Edema"] = 1.0
    mimic.write_csvs()
    shard_mimic(shard_config(mimic.root, out, shard_size=1, workers=1, resume=True))
    shard_mimic(shard_config(mimic.root, fresh, shard_size=1, workers=1))
    assert output_files(out) == output_files(fresh)
    rewritten = {rel for rel, ns in stamps.items() if (out / rel).stat().st_mtime_ns != ns}
    assert rewritten == {"train/train-000000.tar", "validate/validate-000000.tar", "test/test-000000.tar"}
