"""Who am I in the job: rank, local rank, world size and master from torchrun, DeepSpeed, SLURM or nothing."""

from __future__ import annotations

import datetime
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    """The process's place in the job and how to reach rank 0."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | deepspeed | slurm | single


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[003-005,009],cpu1``."""
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(3)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _free_port() -> int:
    """A free TCP port on this host (single-process runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def discover_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables: torchrun/DeepSpeed (RANK...), SLURM (SLURM_PROCID...), else one process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "deepspeed"
        return DistEnv(
            int(env["RANK"]),
            int(env.get("LOCAL_RANK", "0")),
            int(env["WORLD_SIZE"]),
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", "29500")),
            launcher,
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        job = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(
            int(env["SLURM_PROCID"]),
            int(env.get("SLURM_LOCALID", "0")),
            int(env["SLURM_NTASKS"]),
            env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "localhost"))),
            int(env.get("MASTER_PORT") or 20000 + job % 20000),
            "slurm",
        )
    return DistEnv(0, 0, 1, "127.0.0.1", int(env.get("MASTER_PORT") or _free_port()), "single")


def select_device(kind: str, local_rank: int) -> torch.device:
    """``cuda:<local rank>`` when asked for (or ``auto`` and a GPU is present), else CPU."""
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("engine.device is 'cuda' but no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def prepare_accelerator_env(device_kind: str) -> None:
    """Tell DeepSpeed to use its CPU accelerator when no GPU will be used (before deepspeed is imported)."""
    if device_kind == "cpu" or (device_kind == "auto" and not torch.cuda.is_available()):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_distributed(env: DistEnv, device: torch.device, timeout_s: int) -> None:
    """Start the default process group (NCCL on GPU, gloo on CPU) with a timeout on every collective."""
    import deepspeed

    for key, value in (
        ("RANK", env.rank), ("LOCAL_RANK", env.local_rank), ("WORLD_SIZE", env.world_size),
        ("MASTER_ADDR", env.master_addr), ("MASTER_PORT", env.master_port),
    ):
        os.environ[key] = str(value)
    backend = "nccl" if device.type == "cuda" else "gloo"
    deepspeed.init_distributed(
        dist_backend=backend,
        auto_mpi_discovery=False,
        timeout=datetime.timedelta(seconds=timeout_s),
        rank=env.rank,
        world_size=env.world_size,
    )
