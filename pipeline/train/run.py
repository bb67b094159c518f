"""Building a training run: every part the loop needs, set up on this process (one rank), in one plain object."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import job_env
from pipeline.data import Collator, micro_batches_per_epoch
from pipeline.data.shards import ShardError, ShardList, resolve_shards
from pipeline.data.verify import verify_shards
from pipeline.logging_setup import setup_logging
from pipeline.losses import LossContext, Objective, build_objective
from pipeline.models import build_model, build_tokenizer
from pipeline.shard_format import read_manifest
from pipeline.train.config import PretrainConfig, checkpoint_dir, run_dir
from pipeline.train.engine import PRECISION_DTYPES, build_engine
from pipeline.train.faults import BadStepGuard, StopRequest
from pipeline.train.sources import resolve_model_sources
from pipeline.train.tracking import Tracker

log = logging.getLogger("sista.train")
STEP_LOG = "steps.jsonl"


@dataclass
class TrainRun:
    """One rank's training job, built and ready to fit: its config, process group, data, model, loss, records."""

    cfg: PretrainConfig
    env: job_env.JobEnv
    device: torch.device
    shards: ShardList
    tokenizer: Any
    collator: Collator
    engine: Any  # the DeepSpeed engine around ContrastiveEncoder
    ds_config: dict[str, Any]
    loss: Objective
    tracker: Tracker
    stop: StopRequest
    guard: BadStepGuard
    run_dir: Path
    ckpt_dir: Path
    step_log: Path
    steps_per_epoch: int
    total_steps: int
    image_dtype: torch.dtype
    cuda_graphs: bool  # features are copied out of CUDA-graph memory after each forward

    @property
    def rank(self) -> int:
        """This process's global rank."""
        return self.env.rank

    @property
    def world(self) -> int:
        """Number of ranks."""
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the records."""
        return self.env.rank == 0

    @property
    def accum(self) -> int:
        """Micro-batches per optimizer step."""
        return self.cfg.optim.accumulation_steps

    @property
    def global_batch(self) -> int:
        """Pairs per optimizer step over all ranks (every row's contrastive batch)."""
        return self.cfg.data.batch_size * self.world * self.accum

    @property
    def word_tokens(self) -> bool:
        """Whether STA's tokens are words (``model.text.token_unit: word``)."""
        return self.cfg.model.text.token_unit == "word"


def _report_pooling(cfg: PretrainConfig) -> str | None:
    """How the shards' precomputed report embeddings were pooled (the manifest's report_encoder), if known."""
    if cfg.data.manifest is None:
        return None
    encoder = read_manifest(cfg.data.manifest).report_encoder
    return encoder.pooling if encoder else None


def check_data_fits(cfg: PretrainConfig, shards: ShardList, loss: Objective) -> None:
    """ShardError before training when the shards differ from their manifest or lack what the loss reads."""
    if cfg.data.manifest is not None:
        verify_shards(shards, read_manifest(cfg.data.manifest), cfg.data.reading.verify_sha256)
    if "report_emb" in loss.needs and shards.report_embeddings is False:
        raise ShardError(
            f"{cfg.data.manifest}: the shards have no report embeddings (manifest report_encoder is null) but the "
            "loss reads them: set loss.options.sia.similarity_source=online (or labels), or re-shard with --report-encoder"
        )


def build_run(cfg: PretrainConfig) -> TrainRun:
    """Set up the process group, data, model, engine, loss and tracker of ``cfg`` on this rank."""
    job_env.prepare_accelerator_env(cfg.engine.device)
    cfg = resolve_model_sources(cfg)
    env = job_env.discover()
    shards = resolve_shards(cfg.data.train_split, manifest=cfg.data.manifest, shard_root=cfg.data.shard_root,
                            pattern=cfg.data.pattern, num_samples=cfg.data.num_samples)
    setup_logging(env.rank, env.world_size)
    device = job_env.select_device(cfg.engine.device, env.local_rank)
    job_env.init_process_group(env, device, cfg.faults.collective_timeout_s)
    accum = cfg.optim.accumulation_steps

    samples = cfg.data.epoch_samples or shards.num_samples
    steps_per_epoch = micro_batches_per_epoch(samples, cfg.data.batch_size, env.world_size, accum) // accum
    total = steps_per_epoch * cfg.schedule.epochs
    # max_steps=0: no step; the seeded initial model is checkpointed and exported (the ablation's untrained row)
    total_steps = total if cfg.schedule.max_steps is None else min(total, cfg.schedule.max_steps)

    loss = build_objective(cfg.loss, LossContext(report_pooling=_report_pooling(cfg), text_pooling=cfg.model.text.pooling))
    check_data_fits(cfg, shards, loss)
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    tokenizer = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tokenizer)
    if not loss.needs_token_features:  # no term reads tokens: their heads and τ_f would get no gradient
        for param in model.token_parameters():
            param.requires_grad_(False)
    torch.manual_seed(cfg.run.seed + 1000 * env.rank + 1)  # distinct dropout per rank
    engine, ds_config = build_engine(cfg, model, env.world_size, device, total_steps)
    folder = run_dir(cfg)
    # CUDA-graph replays reuse their output memory: each forward starts a new graph step, and the
    # features it returns are copied out so the cached ones of gradient accumulation stay valid.
    cuda_graphs = (cfg.engine.compile and device.type == "cuda"
                   and cfg.engine.compile_mode in ("reduce-overhead", "max-autotune"))
    return TrainRun(
        cfg=cfg, env=env, device=device, shards=shards, tokenizer=tokenizer,
        collator=Collator(tokenizer, cfg.model.text.max_length, cfg.data.findings_annotations), engine=engine, ds_config=ds_config,
        loss=loss.to(device), tracker=Tracker(cfg.tracking, folder, env.rank == 0), stop=StopRequest(),
        guard=BadStepGuard(cfg.faults.max_consecutive_bad_steps), run_dir=folder, ckpt_dir=checkpoint_dir(cfg),
        step_log=folder / STEP_LOG, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        image_dtype=PRECISION_DTYPES[cfg.engine.precision], cuda_graphs=cuda_graphs,
    )
