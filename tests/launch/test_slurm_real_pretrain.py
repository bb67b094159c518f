"""Pre-training through real sbatch on the session's two-node SLURM (launch/local_slurm/cluster.sh)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from fake_slurm import EXAMPLE
from test_slurm_pretrain import TINY, train_overrides

from launch.pretrain_run import ATTEMPT_PARAM
from launch.slurm_config import load_slurm_config
from launch.slurm_preflight import preflight
from launch.slurm_pretrain import build_job, submit
from launch.slurm_submit import render_sbatch

MAX_STEPS = 8


def _two_nodes(tmp: Path):
    """The example SLURM config sized for the local cluster: 2 nodes x 1 CPU task, any partition."""
    return load_slurm_config(EXAMPLE, [
        "nodes=2", "gpus_per_node=0", "tasks_per_node=1", "cpus_per_task=1", "partition=null", "mem_gb=null",
        "exclusive=false", "time=10", "signal_delay_s=60", "setup=[]", f"log_dir={tmp}/slurm/%j",
    ])


@pytest.fixture(scope="module")
def task_env(repo_root: Path):
    """What sbatch exports to the tasks: the repo on PYTHONPATH, one thread, DeepSpeed on CPU."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1", "SISTA_LOG_LEVEL": "INFO",
                           "DS_ACCELERATOR": "cpu"}.items():
            patch.setenv(key, value)
        yield


def _start(tmp: Path, shards: Path, repo_root: Path):
    """Submit the tiny 2-node pre-training into its own run folder and MLflow store: (job, submitted, uri)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = [*train_overrides(shards, tmp / "runs", uri, max_steps=MAX_STEPS), "checkpoint.export_at_end=true"]
    slurm = _two_nodes(tmp)
    preflight(slurm, render_sbatch(slurm, repo_root))
    job = build_job(str(TINY), overrides, slurm)
    assert MlflowClient(uri).get_run(job.mlflow.run_id).info.status == "SCHEDULED"  # created at submission
    return job, submit(job, repo_root), uri


def _logs(submitted) -> dict[int, str]:
    paths = {k: Path(submitted.paths.folder, f"{submitted.job_id}_{k}_log.err") for k in (0, 1)}
    return {k: p.read_text() if p.is_file() else "" for k, p in paths.items()}


def _losses(uri: str, run_id: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, "loss")}


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, phantom_shards, tmp_path_factory, repo_root, task_env):
    """One uninterrupted 2-node run: (tmp, job, submitted, uri, results, logs)."""
    tmp = tmp_path_factory.mktemp("real_pretrain")
    job, submitted, uri = _start(tmp, phantom_shards[0], repo_root)
    try:
        results = submitted.results()
    finally:
        logs = _logs(submitted)
    return tmp, job, submitted, uri, results, logs


@pytest.mark.slurm
def test_two_node_pretrain_on_real_slurm(uninterrupted) -> None:
    """Ranks from SLURM's environment on node1/node2, gloo across them: trains, checkpoints, exports; MLflow run FINISHED."""
    from mlflow.tracking import MlflowClient

    tmp, job, submitted, uri, results, text = uninterrupted
    assert results == [0, 0], text
    for rank, node in ((0, "node1"), (1, "node2")):
        assert f"rank {rank}/2 (local 0) on {node}, rendezvous node1:" in text[rank], text[rank]
    assert "per-device 4 x 2 ranks" in text[0] and f"step {MAX_STEPS}/{MAX_STEPS}" in text[0]  # one gloo group
    run_dir = tmp / "runs" / "slurm"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step"))[-1] == (
        f"step{MAX_STEPS:09d}")
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, MAX_STEPS + 1))
    assert (run_dir / "export" / "model_config.yaml").is_file()
    run = MlflowClient(uri).get_run(job.mlflow.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["slurm.nodes"] == "2"
    assert sorted(_losses(uri, job.mlflow.run_id)) == steps


@pytest.mark.slurm
def test_usr2_checkpoints_requeues_and_resumes(uninterrupted, phantom_shards, tmp_path, repo_root) -> None:
    """scancel --signal=USR2 mid-run: both ranks checkpoint, same job id requeues, resumes; losses equal; one run."""
    from mlflow.tracking import MlflowClient

    _, ref_job, _, ref_uri, _, _ = uninterrupted
    job, submitted, uri = _start(tmp_path, phantom_shards[0], repo_root)
    try:
        marker = tmp_path / "runs" / "slurm" / "checkpoints" / "step000000002" / "COMPLETE.json"
        deadline = time.monotonic() + 120
        while not marker.is_file():
            assert time.monotonic() < deadline and not submitted.done(), _logs(submitted)
            time.sleep(0.1)
        subprocess.run(["scancel", "--signal=USR2", submitted.job_id], check=True)
        results = submitted.results()
    finally:
        if not submitted.done():
            submitted.cancel()
    text = _logs(submitted)
    assert results == [0, 0], text
    for rank in (0, 1):
        assert "caught SIGUSR2: asking the trainer to checkpoint and stop" in text[rank], text[rank]
    assert "requeueing as attempt 1" in text[0] and "resumed from" in text[0], text[0]
    assert f"job {submitted.job_id} attempt 1: rank 0/2" in text[0]
    steps = [json.loads(line)["step"] for line in (tmp_path / "runs" / "slurm" / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, MAX_STEPS + 1))
    losses, reference = _losses(uri, job.mlflow.run_id), _losses(ref_uri, ref_job.mlflow.run_id)
    assert sorted(losses) == sorted(reference) and losses == pytest.approx(reference, rel=1e-6)
    run = MlflowClient(uri).get_run(job.mlflow.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["slurm.attempts"] == "2"
    assert run.data.params[f"{ATTEMPT_PARAM}0"] == run.data.params[f"{ATTEMPT_PARAM}1"] == submitted.job_id
