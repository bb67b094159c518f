"""PretrainConfig: the schema of ``configs/pretrain/*.yaml`` (defaults live in configs/pretrain/base.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from pipeline.config import require
from pipeline.data import DataConfig
from pipeline.losses import LossConfig
from pipeline.models.config import ModelConfig


@dataclass
class OptimConfig:
    """AdamW (torch implementation) with weight-decay exclusions, clipping and contrastive accumulation."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    grad_clip: float  # max global grad norm; 0 disables
    accumulation_steps: int  # micro-batches per step; the contrastive batch stays whole (see README)
    no_decay_patterns: list[str]  # name substrings without weight decay (besides every 0-/1-D parameter)

    def __post_init__(self) -> None:
        require([
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (all(0 <= b < 1 for b in self.betas), f"betas must be in [0, 1), got {list(self.betas)}"),
            (self.eps > 0, f"eps must be > 0, got {self.eps}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables), got {self.grad_clip}"),
            (self.accumulation_steps >= 1, f"accumulation_steps must be >= 1, got {self.accumulation_steps}"),
        ])


@dataclass
class ScheduleConfig:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``; length in epochs or steps."""

    epochs: int
    warmup_steps: int
    min_lr_ratio: float
    max_steps: Optional[int] = None  # stop (and end the schedule) after this many steps; 0: export the initial model

    def __post_init__(self) -> None:
        require([
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (self.max_steps is None or self.max_steps >= 0,
             f"max_steps must be null or >= 0 (0: export the initial model), got {self.max_steps}"),
        ])


# The DeepSpeed keys the trainer fills from this config (one source of truth: the YAML, not the JSON).
TRAINER_FILLED_DEEPSPEED_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                                 "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler")


@dataclass
class EngineConfig:
    """DeepSpeed: the JSON file of the ZeRO stage and the precision."""

    deepspeed_config: str  # configs/deepspeed/zero{1,2,3}.json (relative to the working dir or the repo)
    precision: Literal["fp32", "bf16", "fp16"]
    device: Literal["auto", "cpu", "cuda"]
    compile: bool  # torch.compile both encoders in place (ZeRO-1/2 only): fewer kernel launches on GPUs
    # torch.compile's mode; "reduce-overhead" also replays each compiled graph as one CUDA graph (GPU only)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # merged into the JSON (e.g. zero_optimization.reduce_bucket_size); keys the trainer fills are refused
    deepspeed_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        filled = sorted(set(self.deepspeed_overrides) & set(TRAINER_FILLED_DEEPSPEED_KEYS))
        if filled:
            raise ValueError(f"engine.deepspeed_overrides: {filled} are set by the trainer from the YAML config "
                             "(data.batch_size, optim.*, schedule.*, engine.precision); set them there")


@dataclass
class CheckpointConfig:
    """Checkpoints under ``<run dir>/checkpoints`` (or ``dir``): every N steps and at the end, keep the last K."""

    every_steps: int
    keep_last: int
    resume: Optional[str] = None  # None, "latest" or a checkpoint folder
    export_at_end: bool = False
    dir: Optional[str] = None

    def __post_init__(self) -> None:
        require([
            (self.every_steps >= 1, f"every_steps must be >= 1, got {self.every_steps}"),
            (self.keep_last >= 0, f"keep_last must be >= 0 (0 keeps all), got {self.keep_last}"),
        ])


@dataclass
class TrackingConfig:
    """MLflow (rank 0 only); URI from here, else MLFLOW_TRACKING_URI, else sqlite under the run dir."""

    enabled: bool
    experiment: str
    log_every_steps: int
    figure_every_steps: int  # 0 disables the alignment figure
    figure_images: int
    figure_words: int
    uri: Optional[str] = None
    run_id: Optional[str] = None  # log into this existing run on a fresh start (a resumed run keeps its own)

    def __post_init__(self) -> None:
        require([
            (self.log_every_steps >= 1, f"log_every_steps must be >= 1, got {self.log_every_steps}"),
            (self.figure_every_steps >= 0, f"figure_every_steps must be >= 0 (0 disables), got {self.figure_every_steps}"),
            (self.figure_images >= 1, f"figure_images must be >= 1, got {self.figure_images}"),
            (self.figure_words >= 1, f"figure_words must be >= 1, got {self.figure_words}"),
        ])


@dataclass
class FaultsConfig:
    """Non-finite losses, collective timeouts and fault injection for the tests of these paths."""

    max_consecutive_bad_steps: int
    collective_timeout_s: int
    inject_nan_steps: list[int] = field(default_factory=list)  # make the loss NaN at these steps (testing)
    inject_nan_rank: int = 0

    def __post_init__(self) -> None:
        require([
            (self.max_consecutive_bad_steps >= 1,
             f"max_consecutive_bad_steps must be >= 1, got {self.max_consecutive_bad_steps}"),
            (self.collective_timeout_s >= 1, f"collective_timeout_s must be >= 1, got {self.collective_timeout_s}"),
        ])


@dataclass
class RunConfig:
    """Where the run writes and how it is seeded."""

    output_dir: str
    name: str
    seed: int
    max_minutes: Optional[float] = None  # stop cleanly (checkpoint, exit 0) after this wall time

    def __post_init__(self) -> None:
        require([(self.max_minutes is None or self.max_minutes > 0, f"max_minutes must be null or > 0, got {self.max_minutes}")])


@dataclass
class PretrainConfig:
    """Everything ``python -m pipeline.train`` needs."""

    model: ModelConfig
    loss: LossConfig
    data: DataConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    engine: EngineConfig
    checkpoint: CheckpointConfig
    tracking: TrackingConfig
    faults: FaultsConfig
    run: RunConfig


def run_dir(cfg: PretrainConfig) -> Path:
    """The run folder ``run.output_dir/run.name`` (relative to the working directory unless absolute)."""
    return Path(cfg.run.output_dir) / cfg.run.name


def checkpoint_dir(cfg: PretrainConfig) -> Path:
    """Where the checkpoints live: ``checkpoint.dir``, else ``<run dir>/checkpoints``."""
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir(cfg) / "checkpoints"
