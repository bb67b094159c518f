"""The training loop: set up the job, resume, step through epochs, record, checkpoint, stop cleanly, export."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline.config import save_config
from pipeline.data import (
    Collator,
    DataPosition,
    build_epoch_loader,
    expand_channels,
    load_fixed_batch,
    micro_batches_per_epoch,
)
from pipeline.data.shards import ShardError, read_manifest, resolve_shards
from pipeline.logging_setup import setup_logging
from pipeline.losses import SistaLoss
from pipeline.models import build_model, build_tokenizer
from pipeline.train import checkpoint as ckpt
from pipeline.train.config import PretrainConfig, checkpoint_dir, run_dir
from pipeline.train.distributed import discover_env, init_distributed, prepare_accelerator_env, select_device
from pipeline.train.engine import PRECISION_DTYPES, build_engine
from pipeline.train.export import export_model
from pipeline.train.faults import BUDGET_STOP, BadStepGuard, StopRequest, agree_across_ranks, inject_nan
from pipeline.train.sources import resolve_model_sources
from pipeline.train.step import contrastive_step
from pipeline.train.tracking import Tracker, ui_command

log = logging.getLogger("sista.train")
STEP_LOG = "steps.jsonl"


def _to_device(batch: dict[str, Any], device: torch.device, image_dtype: torch.dtype, channels: int) -> dict[str, Any]:
    """Move a batch's tensors to ``device``; images in the compute precision with ``channels`` channels."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype=image_dtype if key == "images" else None, non_blocking=True)
        out[key] = value
    out["images"] = expand_channels(out["images"], channels)
    return out


def _float_features(features: Any, copy: bool = False) -> Any:
    """Feature dataclass with floating tensors in fp32 (the loss always runs in fp32); ``copy``: never aliased."""
    return dataclasses.replace(features, **{
        f.name: getattr(features, f.name).to(torch.float32, copy=copy) for f in dataclasses.fields(features)
        if isinstance(getattr(features, f.name), torch.Tensor) and getattr(features, f.name).is_floating_point()
    })


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (one small all-reduce)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1) or not values:
        return values
    keys = sorted(values)
    vec = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vec)
    return dict(zip(keys, (vec / dist.get_world_size()).tolist()))


def _report_pooling(cfg: PretrainConfig) -> str | None:
    """How the report embeddings behind SIA's similarity were pooled (resolves loss.sia.centering: auto)."""
    if cfg.loss.sia.similarity_source == "online":
        return cfg.model.text.pooling
    if cfg.loss.sia.similarity_source == "precomputed" and cfg.data.manifest is not None:
        encoder = read_manifest(cfg.data.manifest).get("report_encoder")
        return encoder.get("pooling") if encoder else None
    return None


class Trainer:
    """One training job on this process (one rank)."""

    def __init__(self, cfg: PretrainConfig) -> None:
        prepare_accelerator_env(cfg.engine.device)
        self.cfg = cfg = resolve_model_sources(cfg)
        self.env = discover_env()
        self.shards = resolve_shards(cfg.data.train_split, manifest=cfg.data.manifest, shard_root=cfg.data.shard_root,
                                     pattern=cfg.data.pattern, num_samples=cfg.data.num_samples)
        setup_logging(self.env.rank, self.env.world_size)
        self.device = select_device(cfg.engine.device, self.env.local_rank)
        init_distributed(self.env, self.device, cfg.faults.collective_timeout_s)
        self.rank, self.world = self.env.rank, self.env.world_size
        self.is_main = self.rank == 0
        self.run_dir = run_dir(cfg)
        self.ckpt_dir = checkpoint_dir(cfg)
        self.accum = cfg.optim.accumulation_steps
        self.global_batch = cfg.data.batch_size * self.world * self.accum

        samples = cfg.data.epoch_samples or self.shards.num_samples
        self.steps_per_epoch = micro_batches_per_epoch(samples, cfg.data.batch_size, self.world, self.accum) // self.accum
        total = self.steps_per_epoch * cfg.schedule.epochs
        self.total_steps = min(total, cfg.schedule.max_steps) if cfg.schedule.max_steps else total

        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.tokenizer = build_tokenizer(cfg.model)
        model = build_model(cfg.model, self.tokenizer)
        if not cfg.loss.needs_token_features:
            for param in model.token_parameters():
                param.requires_grad_(False)
        torch.manual_seed(cfg.run.seed + 1000 * self.rank + 1)  # distinct dropout per rank
        self.engine, self.ds_config = build_engine(cfg, model, self.world, self.device, self.total_steps)
        self.loss_fn = SistaLoss(cfg.loss, _report_pooling(cfg)).to(self.device)
        self.collator = Collator(self.tokenizer, cfg.model.text.max_length)
        self.image_dtype = PRECISION_DTYPES[cfg.engine.precision]
        # CUDA-graph replays reuse their output memory: each forward starts a new graph step, and the
        # features it returns are copied out so the cached ones of gradient accumulation stay valid.
        self.cuda_graphs = (cfg.engine.compile and self.device.type == "cuda"
                            and cfg.engine.compile_mode in ("reduce-overhead", "max-autotune"))
        self.tracker = Tracker(cfg.tracking, self.run_dir, self.is_main)
        self.stop = StopRequest()
        self.guard = BadStepGuard(cfg.faults.max_consecutive_bad_steps)
        self.step_log = self.run_dir / STEP_LOG

    # ------------------------------------------------------------------ pieces of a step

    def _device_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        return _to_device(batch, self.device, self.image_dtype, self.cfg.data.transform.channels)

    def _encode(self, batch: dict[str, Any]):
        word_ids = batch["word_ids"] if self.cfg.loss.sta.token_unit == "word" else None
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        image, text, scales = self.engine(batch["images"], batch["input_ids"], batch["attention_mask"], word_ids)
        return (_float_features(image, copy=self.cuda_graphs), _float_features(text, copy=self.cuda_graphs),
                {k: v.float() for k, v in scales.items()})

    def _loss(self, step: int):
        faults = self.cfg.faults

        def loss(image, text, scales, report_emb=None, labels=None):
            terms = self.loss_fn(image, text, scales, report_emb=report_emb, labels=labels)
            terms["loss"] = inject_nan(terms["loss"], step, self.rank, faults.inject_nan_steps, faults.inject_nan_rank)
            return terms

        loss.train = self.loss_fn.train  # type: ignore[attr-defined]
        loss.training = True  # type: ignore[attr-defined]
        return loss

    def _backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def _agree(self, loss: torch.Tensor) -> tuple[bool, bool]:
        skip, stop = agree_across_ranks(loss, self.stop)
        return skip, stop

    def _time_up(self, started: float) -> bool:
        limit = self.cfg.run.max_minutes
        return limit is not None and time.time() - started > 60.0 * limit

    # ------------------------------------------------------------------ set-up and records

    def _start(self) -> ckpt.TrainState:
        """Resume or start fresh; start MLflow; save the resolved configs."""
        folder = ckpt.resume_checkpoint(self.cfg)
        if folder is not None:
            state = ckpt.load_checkpoint(self.engine, folder, self.rank, self.world)
            log.info("resumed from %s: epoch %d, step %d, %d samples seen", folder, state.epoch, state.step,
                     state.samples_seen)
        else:
            if self.cfg.checkpoint.resume is not None:
                log.info("checkpoint.resume=%s: no complete checkpoint in %s, starting fresh",
                         self.cfg.checkpoint.resume, self.ckpt_dir)
            state = ckpt.TrainState(0, 0, 0, 0, None, DataPosition(0))
        self.guard.total = state.skipped_steps
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config_file = save_config(self.cfg, self.run_dir / "config.yaml")
            ds_file = self.run_dir / "deepspeed_config.json"
            ds_file.write_text(json.dumps(self.ds_config, indent=2))
            resumed = state.mlflow_run_id is not None
            state.mlflow_run_id = self.tracker.start(self.cfg.run.name, state.mlflow_run_id, self.cfg)
            if not resumed:
                self.tracker.log_artifact(config_file)
                self.tracker.log_artifact(ds_file)
            log.info(
                "global batch %d = per-device %d x %d ranks x %d accumulation; negatives per row %d; "
                "%d steps per epoch, %d steps in all; ZeRO config %s, %s on %s",
                self.global_batch, self.cfg.data.batch_size, self.world, self.accum, self.global_batch - 1,
                self.steps_per_epoch, self.total_steps, self.cfg.engine.deepspeed_config, self.cfg.engine.precision,
                self.device,
            )
            if self.tracker.active:
                log.info("MLflow run %s at %s (open the UI: %s)", state.mlflow_run_id, self.tracker.uri,
                         ui_command(self.tracker.uri))
        return state

    def _figure_batch(self) -> dict[str, Any] | None:
        """The fixed validation images of the alignment figure (every rank loads them: ZeRO-3 forwards together)."""
        tcfg = self.cfg.tracking
        if not (tcfg.enabled and tcfg.figure_every_steps > 0 and self.cfg.loss.needs_token_features):
            return None
        try:
            shards = resolve_shards(self.cfg.data.val_split, manifest=self.cfg.data.manifest,
                                    shard_root=self.cfg.data.shard_root)
            return load_fixed_batch(shards, self.cfg.data, self.collator, tcfg.figure_images)
        except ShardError as err:
            log.warning("no alignment figure: %s", err)
            return None

    def _log_figure(self, batch: dict[str, Any], step: int) -> None:
        from pipeline.train.figures import alignment_figure

        self.engine.eval()
        with torch.no_grad():
            image, text, _ = self._encode(self._device_batch(batch))
        self.engine.train()
        if self.is_main:
            import matplotlib.pyplot as plt

            fig = alignment_figure(image, text, batch, self.tokenizer, self.cfg.tracking.figure_words,
                                   self.cfg.loss.sta.threshold)
            self.tracker.log_figure(fig, f"alignment/step{step:09d}.png")
            plt.close(fig)

    def _record(self, state: ckpt.TrainState, terms: dict[str, torch.Tensor], skipped: bool, timing: dict[str, float],
                corrupt: int) -> None:
        """Per-step line in steps.jsonl (rank 0) and, every log_every_steps, rank-averaged metrics to MLflow."""
        lr = float(self.engine.get_lr()[0])
        if self.is_main:
            with self.step_log.open("a") as fh:
                fh.write(json.dumps({"step": state.step, "epoch": state.epoch, "loss": float(terms["loss"]),
                                     "skipped": skipped, "lr": lr}) + "\n")
        if state.step % self.cfg.tracking.log_every_steps != 0 and state.step != self.total_steps:
            return
        scalars = {k: float(v) for k, v in terms.items() if v.numel() == 1}
        grad_norm = self.engine.get_global_grad_norm()
        metrics = _mean_over_ranks({**scalars, "data_wait_fraction": timing["wait"] / max(timing["total"], 1e-9),
                                    "samples_per_s": self.global_batch / max(timing["total"], 1e-9)}, self.device)
        metrics.update(lr=lr, skipped_steps=self.guard.total, corrupt_samples=corrupt, epoch=state.epoch,
                       samples_seen=state.samples_seen, global_batch=self.global_batch,
                       per_device_batch=self.cfg.data.batch_size, negatives_per_row=self.global_batch - 1)
        if grad_norm is not None and not skipped:
            metrics["grad_norm"] = float(grad_norm)
        self.tracker.log_metrics(metrics, state.step)
        log.info("step %d/%d loss %.4f lr %.2e %.1f samples/s data-wait %.0f%%", state.step, self.total_steps,
                 metrics["loss"], lr, metrics["samples_per_s"], 100 * metrics["data_wait_fraction"])

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Train to the end (or to a stop signal / time budget); returns the process exit code."""
        state = self._start()
        figure_batch = self._figure_batch()
        started = time.time()
        self.stop.install()
        status, last_saved = "FINISHED", -1
        bar = tqdm(total=self.total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.is_main and sys.stderr.isatty()))
        try:
            while state.step < self.total_steps:
                loader = build_epoch_loader(self.shards, self.cfg.data, self.collator, rank=self.rank,
                                            world_size=self.world, seed=self.cfg.run.seed, accumulation=self.accum,
                                            start=state.data, pin_memory=self.device.type == "cuda")
                batches = iter(loader)
                stopping = False
                while state.step < self.total_steps and loader.position.micro_batches < loader.stream.total:
                    t0 = time.perf_counter()
                    micro = [self._device_batch(next(batches)) for _ in range(self.accum)]
                    t1 = time.perf_counter()
                    outcome = contrastive_step(self._encode, self._loss(state.step + 1), micro, self._backward,
                                               lambda loss, t=started: self._agree_with_budget(loss, t))
                    state.step += 1
                    state.samples_seen += self.global_batch
                    state.data = dataclasses.replace(loader.position, cursors=list(loader.position.cursors),
                                                     corrupt=list(loader.position.corrupt))
                    if state.data.micro_batches >= loader.stream.total:
                        state.epoch += 1
                        state.data = DataPosition(state.epoch)
                    self.guard.record(outcome.skipped, state.step)
                    bar.update(1)
                    state.skipped_steps = self.guard.total
                    t2 = time.perf_counter()
                    self._record(state, outcome.terms, outcome.skipped, {"wait": t1 - t0, "total": t2 - t0},
                                 loader.corrupt_total)
                    every = self.cfg.tracking.figure_every_steps
                    if figure_batch is not None and every > 0 and state.step % every == 0:
                        self._log_figure(figure_batch, state.step)
                    if outcome.stop or state.step % self.cfg.checkpoint.every_steps == 0:
                        ckpt.save_checkpoint(self.engine, self.ckpt_dir, state, self.rank, self.world,
                                             self.cfg.checkpoint.keep_last)
                        last_saved = state.step
                    if outcome.stop:
                        stopping = True
                        break
                if stopping:
                    budget = self.stop.reason == BUDGET_STOP  # a planned end: export like a finished run
                    status = "FINISHED" if budget else "KILLED"
                    log.warning("stopped at step %d (%s); checkpoint saved, exiting 0", state.step,
                                self.stop.reason)
                    break
            if last_saved != state.step:
                ckpt.save_checkpoint(self.engine, self.ckpt_dir, state, self.rank, self.world,
                                     self.cfg.checkpoint.keep_last)
            if status == "FINISHED" and self.cfg.checkpoint.export_at_end:
                out = export_model(self.engine.module.model, self.cfg.model, self.tokenizer,
                                   self.run_dir / "export", self.is_main)
                if out is not None:
                    self.tracker.log_artifact(out / "model_config.yaml", "export")
        except BaseException:
            status = "FAILED"
            raise
        finally:
            bar.close()
            self.stop.uninstall()
            self.tracker.end(status)
        return 0

    def _agree_with_budget(self, loss: torch.Tensor, started: float) -> tuple[bool, bool]:
        """(skip, stop) across ranks, where running past ``run.max_minutes`` counts as a stop request."""
        if self._time_up(started) and not self.stop.requested:
            log.info("run.max_minutes=%s reached: stopping after this step", self.cfg.run.max_minutes)
            self.stop.reason = BUDGET_STOP
        return self._agree(loss)
