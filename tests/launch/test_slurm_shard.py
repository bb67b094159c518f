"""The sharding job array: 3 slices + merge (submitit's local executor) == one process, byte for byte."""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import pytest
from fake_slurm import (
    EXAMPLE_SHARD,
    install_fake_slurm,
    path_with,
    recorded,
    recorded_env,
    recorded_script,
    sbatch_options,
)
from shard_fixtures import PHANTOM_YAML, phantom_shard_config

from data_prep.shard_config import ShardConfig
from launch.slurm_config import load_slurm_config
from launch.slurm_shard import ShardTask, main, submit_shard_array
from pipeline.config import load_config


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` except manifests, by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("manifest")
    }


def _comparable(manifest: dict) -> dict:
    """A manifest without what legitimately differs between runs: timing, and the slicing arguments."""
    args = {k: v for k, v in manifest["args"].items() if k not in ("num_tasks", "task_index", "out")}
    return {**{k: v for k, v in manifest.items() if k not in ("seconds", "args")}, "args": args}


@pytest.mark.slow
def test_array_of_three_merges_to_the_single_process_result(
    phantom_root: Path, phantom_shards: tuple[Path, dict], tmp_path: Path, repo_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(repo_root))  # the local executor's tasks unpickle launch.*
    single_dir, single = phantom_shards
    slurm = load_slurm_config(EXAMPLE_SHARD, ["executor=local", "array_tasks=3", f"log_dir={tmp_path}/logs/%j", "time=10"])
    array, merge = submit_shard_array(phantom_shard_config(phantom_root, tmp_path / "array"), slurm, repo_root, "rerun")
    merged = merge.result()
    parts = [job.result() for job in array]

    assert sorted(p["task_index"] for p in parts) == [0, 1, 2]
    written = [{s["path"] for s in p["shards"]} for p in parts]
    assert all(written) and sum(len(w) for w in written) == len(set().union(*written))  # disjoint, none empty
    assert _comparable(merged) == _comparable(single)
    assert json.loads((tmp_path / "array" / "manifest.json").read_text())["splits"] == single["splits"]
    single_files, array_files = _tree(single_dir), _tree(tmp_path / "array")
    assert any(name.endswith(".tar") for name in single_files)
    assert single_files.keys() == array_files.keys()
    assert all(single_files[name] == array_files[name] for name in single_files)


def test_array_and_merge_through_fake_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    install_fake_slurm(bin_dir, record)
    monkeypatch.setenv("PATH", path_with(bin_dir))
    (tmp_path / "mimic").mkdir()
    cfg = load_config(ShardConfig, PHANTOM_YAML, [f"mimic_root={tmp_path / 'mimic'}", f"out={tmp_path / 'out'}"])
    slurm = load_slurm_config(EXAMPLE_SHARD, ["array_tasks=3", "array_parallelism=2", f"log_dir={tmp_path}/logs/%j",
                                              "python=apptainer exec sista.sif python"])
    array, merge = submit_shard_array(cfg, slurm, tmp_path, "rerun")

    assert [job.job_id for job in array] == ["4242_0", "4242_1", "4242_2"] and merge.job_id == "4243"
    calls = recorded(record, "sbatch")
    assert len(calls) == 2 and all(Path(call[-1]).suffix == ".sh" for call in calls)
    array_options, merge_options = (sbatch_options(recorded_script(record, i)) for i in (0, 1))
    assert array_options["array"] == "0-2%2" and "dependency" not in array_options
    assert merge_options["dependency"] == "afterany:4242" and "array" not in merge_options
    for index, job in enumerate(array):
        with job.paths.submitted_pickle.open("rb") as f:
            delayed = pickle.load(f)
        assert isinstance(delayed.function, ShardTask) and delayed.args == (index,)
        assert delayed.function.cfg.num_tasks == 3 and delayed.function.cfg.out == tmp_path / "out"

    # Run the array's script as SLURM would for task 1: setup lines, then srun with submitit's runner.
    env = {"PATH": path_with(bin_dir), "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "4245"}
    subprocess.run(["bash", str(record / "sbatch-0.sh")], env=env, check=True)
    (srun_args,) = recorded(record, "srun")
    assert srun_args[:2] == ["--unbuffered", "--output"] and srun_args[2].endswith("%A_%a_%t_log.out")
    # The array keeps the configured python command (submitit's own array path would drop it).
    assert srun_args[-8:] == ["apptainer", "exec", "sista.sif", "python", "-u", "-m", "submitit.core._submit",
                              f"{tmp_path}/logs/%j"]
    assert recorded_env(record, "srun", 0)["SUBMITIT_EXECUTOR"] == "slurm"


def test_dry_run_prints_both_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    install_fake_slurm(bin_dir, record)
    (tmp_path / "mimic").mkdir()
    code = main(["--config", str(PHANTOM_YAML), "--slurm", str(EXAMPLE_SHARD), f"mimic_root={tmp_path / 'mimic'}",
                 f"out={tmp_path / 'out'}", "slurm.array_tasks=4", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "#SBATCH --array=0-3%4" in out and "#SBATCH --dependency='afterany:<array job id>'" in out
    assert "num_tasks: 4" in out and not (record / "sbatch-0.args").exists()


def test_merge_after_a_failed_slice_names_it_and_the_rerun_and_merges_nothing(
    phantom_root: Path, tmp_path: Path
) -> None:
    """Under afterany the merge runs after a failed slice: it fails naming the slice and the rerun, writing no manifest."""
    from data_prep.shard_manifest import part_name
    from launch.slurm_shard import merge_and_check

    out = tmp_path / "array"
    out.mkdir()
    (out / part_name(0, 3)).write_text("{}")
    with pytest.raises(RuntimeError, match=r"slice\(s\) 1, 2 of 3 failed.*Rerun them with: CMD resume=true"):
        merge_and_check(out, 3, 0.1, "CMD resume=true")
    assert not (out / "manifest.json").exists()
