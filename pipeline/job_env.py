"""The one owner of the job environment: who this process is in the job, how to reach rank 0, on what device.

Every launcher writes the same few facts in its own variables: torchrun and the DeepSpeed launcher
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), SLURM (``SLURM_PROCID``,
``SLURM_NTASKS``, ``SLURM_JOB_NODELIST``...), submitit (``submitit.JobEnvironment``), or nothing (one
process). :func:`discover` and :func:`from_submitit` read them into one :class:`JobEnv`; :func:`export`
writes it back as the torch-elastic variables; :func:`init_process_group` starts the default process
group from it. The losses, the trainer, evaluation and the launchers ask this module, and only this
module, for rank, world size, rendezvous port, a free port and the device.

Exposure: a job without a multi-host launcher never listens beyond the loopback. One process uses
an in-memory store; ranks rendezvousing at a loopback address use gloo on ``lo``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import multiprocessing
import os
import re
import signal
import socket
import zlib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from multiprocessing.synchronize import Event

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Rendezvous ports derived from a job id fall in [PORT_BASE, PORT_BASE + PORT_SPAN).
PORT_BASE = 20000
PORT_SPAN = 20000
LOOPBACK_ADDRS = frozenset({"127.0.0.1", "localhost", "::1"})
# Signals that ask a run to checkpoint and stop: scancel/timeout/SLURM's time limit (TERM), Ctrl-C (INT),
# and USR1 (a user's own "save and stop"). SLURM's preemption USR2 is relayed by launch.preemption.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class WorldSizeError(ValueError):
    """The job's number of processes does not match what a saved state or a config requires."""


@dataclass(frozen=True)
class JobEnv:
    """This process's place in the job and how to reach rank 0."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    job_id: str
    source: str  # torchrun | deepspeed | slurm | submitit | single

    @property
    def is_main(self) -> bool:
        """Rank 0 (writes the records)."""
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        """Number of nodes (hosts) of the job."""
        return max(1, self.world_size // max(1, self.local_world_size))

    @property
    def on_loopback(self) -> bool:
        """Whether the rendezvous stays on this host's loopback (no multi-host launcher)."""
        return self.master_addr in LOOPBACK_ADDRS

    def as_environ(self) -> dict[str, str]:
        """The torch-elastic environment variables of this process."""
        return {
            "RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank), "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.local_world_size), "NODE_RANK": str(self.node_rank),
            "GROUP_RANK": str(self.node_rank), "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port),
        }


def derive_master_port(job_id: str) -> int:
    """The rendezvous port every task of job ``job_id`` computes alike, spread over ``PORT_SPAN`` ports."""
    return PORT_BASE + zlib.crc32(str(job_id).encode()) % PORT_SPAN


def free_port() -> int:
    """A TCP port that is free on this host's loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[003-005,009],cpu1``."""
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(3)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    """``env[key]`` as an int (``default`` when absent), with a message naming the variable when it is not one."""
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {key}={raw!r} is not an integer") from None


def discover(environ: Mapping[str, str] | None = None) -> JobEnv:
    """This process's :class:`JobEnv`: torchrun/DeepSpeed variables, else SLURM's, else one process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE", 1)
        return JobEnv(
            rank=_int(env, "RANK", 0), local_rank=_int(env, "LOCAL_RANK", 0), world_size=world,
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", world), node_rank=_int(env, "GROUP_RANK",
                                                                                  _int(env, "NODE_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=_int(env, "MASTER_PORT", 29500),
            job_id=env.get("TORCHELASTIC_RUN_ID") or env.get("SLURM_JOB_ID", ""),
            source="torchrun" if "TORCHELASTIC_RUN_ID" in env else "deepspeed",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        job_id = env.get("SLURM_JOB_ID", "0")
        world, nodes = _int(env, "SLURM_NTASKS", 1), _int(env, "SLURM_JOB_NUM_NODES", _int(env, "SLURM_NNODES", 1))
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost"
        return JobEnv(
            rank=_int(env, "SLURM_PROCID", 0), local_rank=_int(env, "SLURM_LOCALID", 0), world_size=world,
            local_world_size=max(1, world // max(1, nodes)), node_rank=_int(env, "SLURM_NODEID", 0),
            master_addr=env.get("MASTER_ADDR") or first_slurm_host(nodelist),
            master_port=_int(env, "MASTER_PORT", derive_master_port(job_id)), job_id=job_id, source="slurm",
        )
    port = _int(env, "MASTER_PORT", 0) or free_port()
    return JobEnv(0, 0, 1, 1, 0, "127.0.0.1", port, "", "single")


def from_submitit(master_port: int | None = None) -> JobEnv:
    """This task's :class:`JobEnv` inside a running submitit job; the port is derived from the job id unless given."""
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks % job.num_nodes:
        raise WorldSizeError(f"{job.num_tasks} tasks do not spread evenly over {job.num_nodes} nodes (job {job.job_id})")
    # One node: loopback avoids depending on the host name resolving inside the allocation.
    master_addr = job.hostnames[0] if job.num_nodes > 1 else "127.0.0.1"
    return JobEnv(
        rank=job.global_rank, local_rank=job.local_rank, world_size=job.num_tasks,
        local_world_size=job.num_tasks // job.num_nodes, node_rank=job.node, master_addr=master_addr,
        master_port=master_port if master_port is not None else derive_master_port(job.job_id),
        job_id=str(job.job_id), source="submitit",
    )


def slurm_restart_count(environ: Mapping[str, str] | None = None) -> int:
    """How often SLURM has requeued this job (``SLURM_RESTART_COUNT``: 0 on the first run, 1 after one requeue)."""
    return _int(os.environ if environ is None else environ, "SLURM_RESTART_COUNT", 0)


def export(env: JobEnv, environ: MutableMapping[str, str] | None = None) -> None:
    """Write ``env`` as the torch-elastic variables into ``environ`` (``os.environ`` by default)."""
    (os.environ if environ is None else environ).update(env.as_environ())


def select_device(kind: str, local_rank: int = 0) -> torch.device:
    """``cuda:<local rank>`` when asked for (or ``auto`` and a GPU is present), else the CPU."""
    if kind not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {kind!r}")
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device is 'cuda' but no CUDA device is visible: set it to cpu or auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def prepare_accelerator_env(device_kind: str) -> None:
    """Tell DeepSpeed to use its CPU accelerator when no GPU will be used (call before deepspeed is imported)."""
    if device_kind == "cpu" or (device_kind == "auto" and not torch.cuda.is_available()):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_process_group(env: JobEnv, device: torch.device, timeout_s: int) -> None:
    """Start the default process group (NCCL on GPU, gloo on CPU) with a timeout on every collective.

    One process: an in-memory store, nothing listens. Ranks meeting at a loopback address: gloo on ``lo``.
    Then DeepSpeed adopts the group.
    """
    import deepspeed

    export(env)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if env.on_loopback and backend == "gloo":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if not dist.is_initialized():
        if env.world_size == 1:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        else:
            dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                                    timeout=timeout)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout,
                               rank=env.rank, world_size=env.world_size)


def is_distributed() -> bool:
    """True when a default process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks of the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if is_distributed():
        dist.barrier()


def require_world(expected: int, what: str, hint: str = "", actual: int | None = None) -> None:
    """Raise :class:`WorldSizeError` unless the job has ``expected`` ranks (``actual``, default: this process group's).

    ``what`` names the thing written by ``expected`` ranks (a checkpoint); ``hint`` says what to do.
    """
    actual = world_size() if actual is None else actual
    if actual != expected:
        raise WorldSizeError(f"{what} was written by {expected} ranks but this job has {actual}" + (f"; {hint}" if hint else ""))


_helper_release: Event | None = None


def helper_release() -> Event:
    """This process's release flag for its helpers that ignore stop signals: set when it exits.

    ``multiprocessing`` ends daemonic children at exit with SIGTERM, then joins them; a helper that
    ignored the TERM would hang that join forever, so helpers honour it once this flag is set.
    """
    global _helper_release
    if _helper_release is None:
        _helper_release = multiprocessing.get_context().Event()
        atexit.register(_helper_release.set)  # registered after multiprocessing's own: runs before it
    return _helper_release


def ignore_stop_signals(release: Event | None = None) -> None:
    """Leave the stop signals to the main process (call in helper processes such as loader workers).

    With ``release`` (from the parent's :func:`helper_release`), a stop signal that arrives once the
    parent is exiting ends the helper as usual.
    """
    def on_stop(signum: int, _frame: object) -> None:
        if release is not None and release.is_set():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN if release is None else on_stop)
    # Started inside stop_signals_held(): a signal held since the fork reaches on_stop now, not before.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold the stop signals in this thread while it starts helpers that call :func:`ignore_stop_signals`.

    A forked helper keeps the signal mask of its parent's thread until it ignores the signals itself.
    Without this, a signal to the process group in between meets whatever handler the helper has
    then: a torch DataLoader worker installs one that dies of a SIGTERM not sent by its parent, and
    the rank fails before it can checkpoint. This process gets its held signals on leaving.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
