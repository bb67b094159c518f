"""The job environment: every launcher's variables read into one JobEnv, exported back, and device choice."""

from __future__ import annotations

import os

import pytest

from pipeline.job_env import (
    PORT_BASE,
    PORT_SPAN,
    WorldSizeError,
    derive_master_port,
    discover,
    export,
    first_slurm_host,
    from_submitit,
    select_device,
)

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
    task = from_submitit()
    assert (task.job_id, task.rank, task.local_rank, task.world_size) == ("731", 9, 1, 32)
    assert (task.local_world_size, task.node_rank, task.num_nodes) == (8, 1, 4)
    assert task.master_addr == "gpu003"
    assert task.master_port == derive_master_port("731") and PORT_BASE <= task.master_port < PORT_BASE + PORT_SPAN
    export(task)
    assert {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "32", "MASTER_ADDR": "gpu003",
        "MASTER_PORT": str(task.master_port),
    }
    assert from_submitit(master_port=29511).master_port == 29511


def test_array_task_and_single_node(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**SLURM_TASK_9_OF_32, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "cpu7",
           "SLURM_ARRAY_JOB_ID": "700", "SLURM_ARRAY_TASK_ID": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    task = from_submitit()
    assert task.job_id == "700_2" and task.world_size == 1 and task.master_addr == "127.0.0.1"


def test_uneven_tasks_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**SLURM_TASK_9_OF_32, "SLURM_NTASKS": "30"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(WorldSizeError, match="30 tasks do not spread evenly over 4 nodes"):
        from_submitit()


def test_derived_ports_differ_between_jobs() -> None:
    ports = {derive_master_port(str(job)) for job in range(1000, 1100)}
    assert len(ports) > 95


def test_discovery_for_each_launcher():
    """torchrun, the deepspeed launcher, srun and a plain process are recognised, with one port formula."""
    torchrun = discover({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "n1",
                         "MASTER_PORT": "1234", "TORCHELASTIC_RUN_ID": "x"})
    assert (torchrun.rank, torchrun.local_rank, torchrun.world_size, torchrun.source) == (3, 1, 8, "torchrun")
    assert discover({"RANK": "0", "WORLD_SIZE": "2"}).source == "deepspeed"
    slurm = discover({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "77",
                      "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[003-004,009]"})
    assert (slurm.rank, slurm.local_rank, slurm.world_size, slurm.master_addr, slurm.source) == (
        5, 1, 8, "gpu003", "slurm")
    assert (slurm.local_world_size, slurm.node_rank, slurm.master_port) == (4, 1, derive_master_port("77"))
    single = discover({})
    assert (single.rank, single.world_size, single.source) == (0, 1, "single") and single.master_port > 0
    assert single.on_loopback
    assert first_slurm_host("nodeA,nodeB") == "nodeA" and first_slurm_host("c[1-2]") == "c1"


def test_bad_variables_and_device_are_named():
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        discover({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="'gpu'"):
        select_device("gpu")
    assert select_device("cpu").type == "cpu"


LISTENING_PROBE = r"""
import json, os, sys
import torch
from pipeline import job_env

env = job_env.discover({})
job_env.init_process_group(env, torch.device("cpu"), 30)
inodes = set()
for fd in os.listdir("/proc/self/fd"):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        continue
    if target.startswith("socket:["):
        inodes.add(target[8:-1])
listening = []
for table in ("tcp", "tcp6"):
    for line in open(f"/proc/self/net/{table}").read().splitlines()[1:]:
        cols = line.split()
        if cols[3] == "0A" and cols[9] in inodes:  # state LISTEN, one of our sockets
            listening.append(cols[1].rsplit(":", 1)[0])
json.dump(listening, sys.stdout)
"""
LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1 as /proc/net writes them


def test_one_process_run_listens_only_on_loopback(tmp_path):
    """A one-process job (no launcher) must not open its rendezvous or gloo to the network."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                                            "GLOO_SOCKET_IFNAME")}
    env["DS_ACCELERATOR"] = "cpu"
    out = subprocess.run([sys.executable, "-c", LISTENING_PROBE], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    listening = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(addr in LOOPBACK_HEX for addr in listening), listening
