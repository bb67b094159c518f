"""Each task's rank, local rank, world size and rendezvous address from submitit's job environment."""

from __future__ import annotations

import os

import pytest

from launch.task_env import PORT_BASE, PORT_SPAN, current_task_env, derive_master_port, export_task_env

SLURM_TASK_9_OF_32 = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "731",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "32",
    "SLURM_JOB_NUM_NODES": "4",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "gpu[003-005],gpu010",
}


def test_slurm_task_of_a_4_node_job(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SLURM_TASK_9_OF_32.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    task = current_task_env()
    assert (task.job_id, task.rank, task.local_rank, task.world_size) == ("731", 9, 1, 32)
    assert (task.local_world_size, task.node_rank, task.num_nodes) == (8, 1, 4)
    assert task.master_addr == "gpu003"
    assert task.master_port == derive_master_port("731") and PORT_BASE <= task.master_port < PORT_BASE + PORT_SPAN
    export_task_env(task)
    assert {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "32", "MASTER_ADDR": "gpu003",
        "MASTER_PORT": str(task.master_port),
    }
    assert current_task_env(master_port=29511).master_port == 29511


def test_array_task_and_single_node(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**SLURM_TASK_9_OF_32, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "cpu7",
           "SLURM_ARRAY_JOB_ID": "700", "SLURM_ARRAY_TASK_ID": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    task = current_task_env()
    assert task.job_id == "700_2" and task.world_size == 1 and task.master_addr == "127.0.0.1"


def test_uneven_tasks_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**SLURM_TASK_9_OF_32, "SLURM_NTASKS": "30"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RuntimeError, match="30 tasks do not spread evenly over 4 nodes"):
        current_task_env()


def test_derived_ports_differ_between_jobs() -> None:
    ports = {derive_master_port(str(job)) for job in range(1000, 1100)}
    assert len(ports) > 95
