"""Checkpoints: DeepSpeed tags plus our own per-rank state, a completion marker, rotation, safe loading.

Layout: ``<dir>/step000000120/`` holds DeepSpeed's files for that tag, ``trainer_rank00000.json``
(epoch, step, samples seen, data position, Python/NumPy RNG, MLflow run id) and ``rng_rank00000.pt``
(torch RNG tensors) per rank, and — written by rank 0 only after every rank finished —
``COMPLETE.json``. A folder without the marker (the job died while writing) is never resumed from.
Every ``torch.load`` runs with ``weights_only=True``; DeepSpeed's own files are loaded through the
same restricted unpickler with an explicit allow-list of the few DeepSpeed types they contain.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import job_env
from pipeline.data import DataPosition
from pipeline.train.checkpoint_verify import file_digests, first_intact
from pipeline.train.config import PretrainConfig, checkpoint_dir

log = logging.getLogger(__name__)
TAG_PATTERN = re.compile(r"^step(\d{9})$")
COMPLETE = "COMPLETE.json"


@dataclass
class TrainState:
    """What the trainer needs besides the engine to continue exactly where it stopped."""

    epoch: int
    step: int  # optimizer steps taken (including skipped ones)
    samples_seen: int
    skipped_steps: int
    mlflow_run_id: str | None
    data: DataPosition


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint as its files describe it (no tensors loaded)."""

    folder: Path
    step: int
    epoch: int
    world_size: int
    mlflow_run_id: str | None


def tag_for(step: int) -> str:
    """The checkpoint tag (folder name) of ``step``."""
    return f"step{step:09d}"


def rank_state_file(folder: Path, rank: int) -> Path:
    """The JSON file of ``rank``'s trainer state (and Python/NumPy RNG) in a checkpoint folder."""
    return folder / f"trainer_rank{rank:05d}.json"


def describe(folder: Path) -> CheckpointInfo:
    """Step, epoch, world size and MLflow run of the complete checkpoint ``folder``."""
    marker = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))
    state = json.loads(rank_state_file(folder, 0).read_text(encoding="utf-8"))["state"]
    return CheckpointInfo(folder, int(marker["step"]), int(marker["epoch"]), int(marker["world_size"]),
                          state.get("mlflow_run_id"))


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _python_rng() -> dict[str, Any]:
    """Python and NumPy global RNG states as JSON-able data."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _restore_python_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`_python_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _torch_rng() -> dict[str, torch.Tensor]:
    """Torch CPU (and CUDA) RNG states."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint folders under ``ckpt_dir``, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if TAG_PATTERN.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_resume_point(ckpt_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from: None, the newest complete one (``latest``) or a named folder."""
    if resume is None:
        return None
    if resume == "latest":
        complete = complete_checkpoints(ckpt_dir)
        return complete[-1] if complete else None
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"checkpoint.resume={resume}: not a complete checkpoint folder ({COMPLETE} missing)")
    return path


def resume_checkpoint(cfg: PretrainConfig, rank: int = 0, world_size: int = 1) -> Path | None:
    """The folder the trainer of ``cfg`` resumes from (``checkpoint.resume`` in its checkpoint dir), None: fresh.

    With ``latest``, a checkpoint with a broken file is passed over for the previous complete one (all ranks agree).
    """
    chosen = find_resume_point(checkpoint_dir(cfg), cfg.checkpoint.resume)
    if chosen is None:
        return None
    older = [p for p in reversed(complete_checkpoints(checkpoint_dir(cfg))) if p.name < chosen.name]
    return first_intact([chosen, *(older if cfg.checkpoint.resume == "latest" else [])], rank, world_size)


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and incomplete ones older than those."""
    complete = complete_checkpoints(ckpt_dir)
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    newest = complete[-1].name if complete else None
    for path in ckpt_dir.iterdir():
        if TAG_PATTERN.match(path.name) and not (path / COMPLETE).is_file() and newest and path.name < newest:
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(engine: Any, ckpt_dir: Path, state: TrainState, rank: int, world_size: int, keep_last: int) -> Path:
    """Save DeepSpeed's tag and this rank's state; rank 0 marks it complete once every rank is done."""
    tag = tag_for(state.step)
    folder = ckpt_dir / tag
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={}, save_latest=False)
    folder.mkdir(parents=True, exist_ok=True)
    mine = {"state": {**asdict(state), "data": state.data.to_dict()}, "rng": _python_rng(), "world_size": world_size}
    _write_atomic(rank_state_file(folder, rank), json.dumps(mine))
    torch.save(_torch_rng(), folder / f"rng_rank{rank:05d}.pt")
    job_env.barrier()
    if rank == 0:
        marker = {"step": state.step, "epoch": state.epoch, "world_size": world_size, "time": time.time(),
                  "files": file_digests(folder)}
        _write_atomic(folder / COMPLETE, json.dumps(marker))
        prune(ckpt_dir, keep_last)
        log.info("checkpoint %s complete (step %d)", folder, state.step)
    job_env.barrier()
    return folder


# --------------------------------------------------------------------------- safe loading


def _deepspeed_safe_globals() -> list[Any]:
    """The few non-tensor types DeepSpeed writes into its checkpoint files."""
    from deepspeed.runtime.fp16 import loss_scaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    scalers = [getattr(loss_scaler, name) for name in ("LossScaler", "DynamicLossScaler", "LossScaleProfile",
                                                        "LossScaleConfig") if hasattr(loss_scaler, name)]
    return [ZeroStageEnum, fragment_address, set, *scalers]


def safe_torch_load(path: str, map_location: Any = None) -> Any:
    """``torch.load(weights_only=True)`` with DeepSpeed's few types allow-listed; anything else is refused."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def use_safe_loading(engine: Any) -> None:
    """Make the engine's checkpoint engine load through :func:`safe_torch_load`."""
    engine.checkpoint_engine.load = safe_torch_load


def load_checkpoint(engine: Any, folder: Path, rank: int, world_size: int) -> TrainState:
    """Load DeepSpeed's tag and this rank's state and RNG; the world size must match the saving run."""
    job_env.require_world(
        describe(folder).world_size, f"checkpoint {folder}",
        "resume with the same number of processes (each rank's data position is saved), or export it and start "
        "a new run from the weights",
    )
    use_safe_loading(engine)
    path, _ = engine.load_checkpoint(
        str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {folder}")
    mine = json.loads(rank_state_file(folder, rank).read_text())
    _restore_python_rng(mine["rng"])
    rng = torch.load(folder / f"rng_rank{rank:05d}.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    raw = mine["state"]
    return TrainState(
        int(raw["epoch"]), int(raw["step"]), int(raw["samples_seen"]), int(raw["skipped_steps"]),
        raw["mlflow_run_id"], DataPosition.from_dict(raw["data"]),
    )
