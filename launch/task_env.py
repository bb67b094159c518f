"""Inside a submitit job: each task's rank, local rank, world size and rendezvous address.

The values come from ``submitit.JobEnvironment`` (which reads ``SLURM_PROCID``, ``SLURM_LOCALID``,
``SLURM_NTASKS``, ``SLURM_JOB_NODELIST``... on a cluster, ``SUBMITIT_LOCAL_*`` locally) and are
exported as the torch-elastic variables every launcher-agnostic trainer reads.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import submitit

# Rendezvous ports derived from the job id fall in [PORT_BASE, PORT_BASE + PORT_SPAN).
PORT_BASE = 20000
PORT_SPAN = 20000


@dataclasses.dataclass(frozen=True)
class TaskEnv:
    """One task's place in the job."""

    job_id: str
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int

    def as_environ(self) -> dict[str, str]:
        """The torch-elastic environment variables for this task."""
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "NODE_RANK": str(self.node_rank),
            "GROUP_RANK": str(self.node_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def derive_master_port(job_id: str) -> int:
    """A rendezvous port every task of job ``job_id`` computes alike, spread over 20000 ports."""
    return PORT_BASE + zlib.crc32(job_id.encode()) % PORT_SPAN


def current_task_env(master_port: int | None = None) -> TaskEnv:
    """This task's ``TaskEnv`` from the running submitit job; the port is derived from the job id unless given."""
    env = submitit.JobEnvironment()
    num_nodes = env.num_nodes
    world_size = env.num_tasks
    if world_size % num_nodes:
        raise RuntimeError(f"{world_size} tasks do not spread evenly over {num_nodes} nodes (job {env.job_id})")
    # One node: loopback avoids depending on the host name resolving inside the allocation.
    master_addr = env.hostnames[0] if num_nodes > 1 else "127.0.0.1"
    return TaskEnv(
        job_id=env.job_id,
        rank=env.global_rank,
        local_rank=env.local_rank,
        world_size=world_size,
        local_world_size=world_size // num_nodes,
        node_rank=env.node,
        num_nodes=num_nodes,
        master_addr=master_addr,
        master_port=master_port if master_port is not None else derive_master_port(env.job_id),
    )


def export_task_env(task: TaskEnv) -> None:
    """Export ``task`` into ``os.environ`` for the trainer (and DeepSpeed / torch.distributed) to find."""
    os.environ.update(task.as_environ())
