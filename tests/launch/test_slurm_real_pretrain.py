"""Pre-training through real sbatch on the session's two-node SLURM (launch/local_slurm/cluster.sh)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_slurm import EXAMPLE
from test_slurm_pretrain import TINY, train_overrides

from launch.slurm_config import load_slurm_config
from launch.slurm_preflight import preflight
from launch.slurm_pretrain import build_job, submit
from launch.slurm_submit import render_sbatch


def _two_nodes(tmp: Path):
    """The example SLURM config sized for the local cluster: 2 nodes x 1 CPU task, any partition."""
    return load_slurm_config(EXAMPLE, [
        "nodes=2", "gpus_per_node=0", "tasks_per_node=1", "cpus_per_task=1", "partition=null", "mem_gb=null",
        "exclusive=false", "time=10", "signal_delay_s=60", "setup=[]", f"log_dir={tmp}/slurm/%j",
    ])


@pytest.mark.slurm
def test_two_node_pretrain_on_real_slurm(
    slurm_cluster: dict[str, str], phantom_shards: tuple[Path, dict], tmp_path: Path, repo_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ranks from SLURM's environment on node1/node2, gloo across them: trains, checkpoints, exports; MLflow run FINISHED."""
    from mlflow.tracking import MlflowClient

    for key, value in {"PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1", "SISTA_LOG_LEVEL": "INFO",
                       "DS_ACCELERATOR": "cpu"}.items():
        monkeypatch.setenv(key, value)  # sbatch exports the submitting environment to the tasks
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shards, _ = phantom_shards
    overrides = [*train_overrides(shards, tmp_path / "runs", uri, max_steps=2), "checkpoint.export_at_end=true"]
    slurm = _two_nodes(tmp_path)
    preflight(slurm, render_sbatch(slurm, repo_root))
    job = build_job(str(TINY), overrides, slurm)
    client = MlflowClient(uri)
    assert client.get_run(job.mlflow.run_id).info.status == "SCHEDULED"  # created at submission
    submitted = submit(job, repo_root)
    try:
        results = submitted.results()
    finally:
        logs = {k: Path(submitted.paths.folder, f"{submitted.job_id}_{k}_log.err") for k in (0, 1)}
        text = {k: p.read_text() if p.is_file() else "" for k, p in logs.items()}
    assert results == [0, 0], text
    for rank, node in ((0, "node1"), (1, "node2")):
        assert f"rank {rank}/2 (local 0) on {node}, rendezvous node1:" in text[rank], text[rank]
    assert "per-device 4 x 2 ranks" in text[0] and "step 2/2" in text[0]  # one gloo group across the nodes
    run_dir = tmp_path / "runs" / "slurm"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step")) == [
        "step000000001", "step000000002"]
    assert [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()] == [1, 2]
    assert (run_dir / "export" / "model_config.yaml").is_file()
    run = client.get_run(job.mlflow.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["slurm.nodes"] == "2"
    assert sorted(m.step for m in client.get_metric_history(job.mlflow.run_id, "loss")) == [1, 2]
