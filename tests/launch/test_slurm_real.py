"""The launchers against a real SLURM: the session's two-node cluster from launch/local_slurm/cluster.sh."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from fake_slurm import EXAMPLE_SHARD

from launch.slurm_config import load_slurm_config
from launch.slurm_preflight import check_signal_margin
from launch.slurm_shard import main as shard_main

PHANTOM_YAML = Path(__file__).resolve().parents[2] / "configs" / "data" / "phantom.yaml"


def _shard_argv(tmp: Path, *slurm_overrides: str) -> list[str]:
    """slurm_shard.py's command line sized for the local cluster, plus ``slurm_overrides``."""
    return ["--config", str(PHANTOM_YAML), "--slurm", str(EXAMPLE_SHARD), f"mimic_root={tmp / 'mimic'}",
            f"out={tmp / 'out'}", "slurm.partition=null", "slurm.mem_gb=null", "slurm.cpus_per_task=1",
            "slurm.time=10", f"slurm.log_dir={tmp / 'slurm'}/%j", "slurm.array_tasks=2", *slurm_overrides]


def test_time_limit_too_close_to_the_signal_is_refused() -> None:
    """USR2 can arrive ~60 s before signal_delay_s: a limit that leaves no work time is refused with the fix."""
    cfg = load_slurm_config(EXAMPLE_SHARD, ["time=2", "signal_delay_s=90"])
    with pytest.raises(ValueError, match=r"too close to signal_delay_s=90.*set time >= 4 minutes"):
        check_signal_margin(cfg)
    check_signal_margin(load_slurm_config(EXAMPLE_SHARD, ["time=4", "signal_delay_s=90"]))


@pytest.mark.slurm
@pytest.mark.parametrize("request_override, message", [
    ("slurm.mem_gb=100000", "Requested node configuration is not available"),
    ("slurm.cpus_per_task=64", "Requested node configuration is not available"),
    ("slurm.gpus_per_node=1", "gres"),
    ("slurm.partition=no-such-partition", "invalid partition"),
], ids=["memory", "cpus", "gpus", "partition"])
def test_unsatisfiable_request_is_refused_at_submission(
    slurm_cluster: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    request_override: str, message: str,
) -> None:
    """sbatch --test-only refuses what the partition can never meet: exit 2, the reason, nothing queued."""
    before = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, check=True).stdout
    assert shard_main(_shard_argv(tmp_path, request_override)) == 2
    err = capsys.readouterr().err
    assert "SLURM refuses job 'sista-shard'" in err and message.lower() in err.lower()
    after = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, check=True).stdout
    assert after == before
    assert not (tmp_path / "slurm").exists() or not any((tmp_path / "slurm").rglob("*.pkl"))


@pytest.mark.slurm
def test_time_limit_refusal_reaches_the_launcher(slurm_cluster: dict[str, str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The launcher refuses a 2-minute limit with a 90 s signal delay before asking the scheduler."""
    assert shard_main(_shard_argv(tmp_path, "slurm.time=2", "slurm.signal_delay_s=90")) == 2
    assert "too close to signal_delay_s=90" in capsys.readouterr().err


def _real_shard_argv(phantom_root: Path, tmp: Path, out: Path) -> list[str]:
    """A two-slice sharding of the phantom set on the local cluster, waited for."""
    return ["--wait", "--config", str(PHANTOM_YAML), "--slurm", str(EXAMPLE_SHARD), f"mimic_root={phantom_root}",
            f"out={out}", "shard_size=8", "workers=1", "slurm.partition=null", "slurm.mem_gb=null",
            "slurm.cpus_per_task=1", "slurm.time=10", f"slurm.log_dir={tmp / 'slurm'}/%j", "slurm.array_tasks=2",
            "slurm.setup=[]"]


@pytest.mark.slurm
def test_shard_array_on_real_slurm_without_accounting(
    slurm_cluster: dict[str, str], phantom_root: Path, phantom_shards: tuple[Path, dict], tmp_path: Path,
    repo_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Array + afterany merge through real sbatch, sacct failing: shards byte-identical, same manifest; a failed
    slice fails the merge, naming a rerun command that, once the cause is gone, completes the same shards."""
    monkeypatch.setenv("PYTHONPATH", str(repo_root))
    assert subprocess.run(["sacct", "-j", "1"], capture_output=True).returncode != 0  # no accounting here
    out = tmp_path / "array"
    assert shard_main(_real_shard_argv(phantom_root, tmp_path, out)) == 0, capsys.readouterr().err
    _assert_same_as_one_process(out, phantom_shards)

    broken = tmp_path / "broken"
    obstacle = broken / "train" / "train-000001.tar"  # shard 1 is slice 1's: a folder in its way fails the slice
    obstacle.mkdir(parents=True)
    capsys.readouterr()
    assert shard_main(_real_shard_argv(phantom_root, tmp_path, broken)) == 1
    err = capsys.readouterr().err
    assert "array slice(s) 1 of 2 failed" in err and "nothing merged" in err, err
    assert not (broken / "manifest.json").exists()
    rerun = re.search(r"Rerun them with: (.+)$", err, re.MULTILINE)
    assert rerun and rerun.group(1).endswith(" resume=true"), err

    obstacle.rmdir()  # the cause is gone: the printed command (waited for) completes the job
    done = subprocess.run([*shlex.split(rerun.group(1)), "--wait"], capture_output=True, text=True, timeout=600,
                          cwd=repo_root)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_same_as_one_process(broken, phantom_shards)


def _assert_same_as_one_process(out: Path, phantom_shards: tuple[Path, dict]) -> None:
    """``out`` holds the one-process run's shards byte for byte, and its manifest apart from timing and arguments."""
    single_dir, single = phantom_shards
    merged = json.loads((out / "manifest.json").read_text())
    drop = ("seconds", "args", "created")
    assert {k: v for k, v in merged.items() if k not in drop} == {k: v for k, v in single.items() if k not in drop}
    shards = sorted(p.relative_to(single_dir) for p in single_dir.rglob("*.tar"))
    assert shards and sorted(p.relative_to(out) for p in out.rglob("*.tar")) == shards
    for shard in shards:
        assert (out / shard).read_bytes() == (single_dir / shard).read_bytes(), shard
