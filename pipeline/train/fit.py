"""Fitting a built run: resume, step through epochs, record, checkpoint, stop cleanly, export."""

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

from pipeline import job_env
from pipeline.config import save_config
from pipeline.data import Batch, DataPosition, build_epoch_loader, expand_channels, load_fixed_batch
from pipeline.data.shards import ShardError, resolve_shards
from pipeline.train import checkpoint as ckpt
from pipeline.train.export import describe_export, export_model, git_commit
from pipeline.train.faults import BUDGET_STOP, agree_across_ranks, inject_nan, note_unfinished
from pipeline.train.run import TrainRun
from pipeline.train.step import LossHook, StepOutcome, contrastive_step
from pipeline.train.tracking import ui_command

log = logging.getLogger("sista.train")


def _float_features(features: Any, copy: bool = False) -> Any:
    """Feature dataclass with floating tensors in fp32 (the loss always runs in fp32); ``copy``: never aliased."""
    return dataclasses.replace(features, **{
        f.name: getattr(features, f.name).to(torch.float32, copy=copy) for f in dataclasses.fields(features)
        if isinstance(getattr(features, f.name), torch.Tensor) and getattr(features, f.name).is_floating_point()
    })


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (one small all-reduce)."""
    if not job_env.is_distributed() or not values:
        return values
    keys = sorted(values)
    vec = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vec)
    return dict(zip(keys, (vec / job_env.world_size()).tolist()))


# ---------------------------------------------------------------------- pieces of a step


def device_batch(run: TrainRun, batch: Batch) -> Batch:
    """The batch on the run's device, images in the compute precision with the model's channels."""
    moved = batch.to(run.device, image_dtype=run.image_dtype)
    return dataclasses.replace(moved, images=expand_channels(moved.images, run.cfg.data.transform.channels))


def encode(run: TrainRun, batch: Batch) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    """(ImageFeatures, TextFeatures, logit scales) of a device batch, in fp32."""
    word_ids = batch.word_ids if run.word_tokens else None
    if run.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    image, text, scales = run.engine(batch.images, batch.input_ids, batch.attention_mask, word_ids)
    return (_float_features(image, copy=run.cuda_graphs), _float_features(text, copy=run.cuda_graphs),
            {k: v.float() for k, v in scales.items()})


def nan_injection(run: TrainRun, step: int) -> LossHook | None:
    """The loss hook that makes step ``step``'s loss NaN where ``faults.inject_nan_steps`` says (tests), else None."""
    faults = run.cfg.faults
    if not faults.inject_nan_steps:
        return None
    return lambda loss: inject_nan(loss, step, run.rank, faults.inject_nan_steps, faults.inject_nan_rank)


def _backward(run: TrainRun, loss: torch.Tensor) -> None:
    run.engine.backward(loss, scale_wrt_gas=False)
    run.engine.step()


def _agree_with_budget(run: TrainRun, loss: torch.Tensor, started: float) -> tuple[bool, bool]:
    """(skip, stop) across ranks, where running past ``run.max_minutes`` counts as a stop request."""
    limit = run.cfg.run.max_minutes
    if limit is not None and time.time() - started > 60.0 * limit and not run.stop.requested:
        log.info("run.max_minutes=%s reached: stopping after this step", limit)
        run.stop.reason = BUDGET_STOP
    return agree_across_ranks(loss, run.stop)


# ---------------------------------------------------------------------- set-up and records


def _start(run: TrainRun) -> ckpt.TrainState:
    """Resume or start fresh; start MLflow; save the resolved configs."""
    cfg = run.cfg
    folder = ckpt.resume_checkpoint(cfg, run.rank, run.world)
    if folder is not None:
        state = ckpt.load_checkpoint(run.engine, folder, run.rank, run.world)
        log.info("resumed from %s: epoch %d, step %d, %d samples seen", folder, state.epoch, state.step,
                 state.samples_seen)
    else:
        if cfg.checkpoint.resume is not None:
            log.info("checkpoint.resume=%s: no complete checkpoint in %s, starting fresh",
                     cfg.checkpoint.resume, run.ckpt_dir)
        state = ckpt.TrainState(0, 0, 0, 0, None, DataPosition(0))
    run.guard.total = state.skipped_steps
    if run.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        config_file = save_config(cfg, run.run_dir / "config.yaml")
        ds_file = run.run_dir / "deepspeed_config.json"
        ds_file.write_text(json.dumps(run.ds_config, indent=2))
        resumed = state.mlflow_run_id is not None
        state.mlflow_run_id = run.tracker.start(cfg.run.name, state.mlflow_run_id, cfg)
        if not resumed:
            run.tracker.log_artifact(config_file)
            run.tracker.log_artifact(ds_file)
        log.info(
            "global batch %d = per-device %d x %d ranks x %d accumulation; negatives per row %d; "
            "%d steps per epoch, %d steps in all; ZeRO config %s, %s on %s",
            run.global_batch, cfg.data.batch_size, run.world, run.accum, run.global_batch - 1,
            run.steps_per_epoch, run.total_steps, cfg.engine.deepspeed_config, cfg.engine.precision, run.device,
        )
        if run.tracker.active:
            log.info("MLflow run %s at %s (open the UI: %s)", state.mlflow_run_id, run.tracker.uri,
                     ui_command(run.tracker.uri))
    return state


def _figure_batch(run: TrainRun) -> Batch | None:
    """The fixed validation images of the alignment figure (every rank loads them: ZeRO-3 forwards together)."""
    tcfg, data = run.cfg.tracking, run.cfg.data
    if not (tcfg.enabled and tcfg.figure_every_steps > 0 and run.loss.needs_token_features):
        return None
    try:
        shards = resolve_shards(data.val_split, manifest=data.manifest, shard_root=data.shard_root)
        return load_fixed_batch(shards, data, run.collator, tcfg.figure_images)
    except ShardError as err:
        log.warning("no alignment figure: %s", err)
        return None


def _log_figure(run: TrainRun, batch: Batch, step: int) -> None:
    from pipeline.train.figures import alignment_figure

    run.engine.eval()
    with torch.no_grad():
        image, text, _ = encode(run, device_batch(run, batch))
    run.engine.train()
    if run.is_main:
        import matplotlib.pyplot as plt

        sta = run.loss.find("sta_token")
        threshold = sta.options.threshold if sta is not None else None
        fig = alignment_figure(image, text, batch, run.tokenizer, run.cfg.tracking.figure_words, threshold)
        run.tracker.log_figure(fig, f"alignment/step{step:09d}.png")
        plt.close(fig)


def _record(run: TrainRun, state: ckpt.TrainState, outcome: StepOutcome, timing: dict[str, float],
            corrupt: int) -> None:
    """Per-step line in steps.jsonl (rank 0) and, every log_every_steps, rank-averaged metrics to MLflow."""
    lr = float(run.engine.get_lr()[0])
    if run.is_main:
        with run.step_log.open("a") as fh:
            fh.write(json.dumps({"step": state.step, "epoch": state.epoch, "loss": float(outcome.loss),
                                 "skipped": outcome.skipped, "lr": lr}) + "\n")
    if state.step % run.cfg.tracking.log_every_steps != 0 and state.step != run.total_steps:
        return
    scalars = {"loss": float(outcome.loss), **{k: float(v) for k, v in outcome.scalars.items() if v.numel() == 1}}
    grad_norm = run.engine.get_global_grad_norm()
    metrics = _mean_over_ranks({**scalars, "data_wait_fraction": timing["wait"] / max(timing["total"], 1e-9),
                                "samples_per_s": run.global_batch / max(timing["total"], 1e-9)}, run.device)
    metrics.update(lr=lr, skipped_steps=run.guard.total, corrupt_samples=corrupt, epoch=state.epoch,
                   samples_seen=state.samples_seen, global_batch=run.global_batch,
                   per_device_batch=run.cfg.data.batch_size, negatives_per_row=run.global_batch - 1)
    if grad_norm is not None and not outcome.skipped:
        metrics["grad_norm"] = float(grad_norm)
    run.tracker.log_metrics(metrics, state.step)
    log.info("step %d/%d loss %.4f lr %.2e %.1f samples/s data-wait %.0f%%", state.step, run.total_steps,
             metrics["loss"], lr, metrics["samples_per_s"], 100 * metrics["data_wait_fraction"])


# ---------------------------------------------------------------------- the loop


def fit(run: TrainRun) -> int:
    """Train to the end (or to a stop signal / time budget); returns the process exit code."""
    cfg = run.cfg
    state = _start(run)
    figure_batch = _figure_batch(run)
    started = time.time()
    run.stop.install()
    status, last_saved = "FINISHED", -1
    bar = tqdm(total=run.total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (run.is_main and sys.stderr.isatty()))
    try:
        while state.step < run.total_steps:
            loader = build_epoch_loader(run.shards, cfg.data, run.collator, rank=run.rank, world_size=run.world,
                                        seed=cfg.run.seed, accumulation=run.accum, start=state.data,
                                        pin_memory=run.device.type == "cuda")
            batches = iter(loader)
            stopping = False
            try:
                while state.step < run.total_steps and loader.position.micro_batches < loader.stream.total:
                    t0 = time.perf_counter()
                    micro = [device_batch(run, next(batches)) for _ in range(run.accum)]
                    t1 = time.perf_counter()
                    outcome = contrastive_step(
                        lambda b: encode(run, b), run.loss, micro, lambda loss: _backward(run, loss),
                        lambda loss: _agree_with_budget(run, loss, started), nan_injection(run, state.step + 1),
                    )
                    state.step += 1
                    state.samples_seen += run.global_batch
                    state.data = dataclasses.replace(loader.position, cursors=list(loader.position.cursors),
                                                     corrupt=list(loader.position.corrupt))
                    if state.data.micro_batches >= loader.stream.total:
                        state.epoch += 1
                        state.data = DataPosition(state.epoch)
                    run.guard.record(outcome.skipped, state.step)
                    bar.update(1)
                    state.skipped_steps = run.guard.total
                    t2 = time.perf_counter()
                    _record(run, state, outcome, {"wait": t1 - t0, "total": t2 - t0}, loader.corrupt_total)
                    every = cfg.tracking.figure_every_steps
                    if figure_batch is not None and every > 0 and state.step % every == 0:
                        _log_figure(run, figure_batch, state.step)
                    if outcome.stop or state.step % cfg.checkpoint.every_steps == 0:
                        ckpt.save_checkpoint(run.engine, run.ckpt_dir, state, run.rank, run.world,
                                             cfg.checkpoint.keep_last)
                        last_saved = state.step
                    if outcome.stop:
                        stopping = True
                        break
            finally:
                batches.close()  # shuts the loader workers down now, on every path (they ignore stop signals)
            if stopping:
                budget = run.stop.reason == BUDGET_STOP  # a planned end: export like a finished run
                status = "FINISHED" if budget else "KILLED"
                if not budget:
                    note_unfinished(run.stop.reason)
                log.warning("stopped at step %d (%s); checkpoint saved, exiting 0", state.step, run.stop.reason)
                break
        if last_saved != state.step:
            ckpt.save_checkpoint(run.engine, run.ckpt_dir, state, run.rank, run.world, cfg.checkpoint.keep_last)
        if status == "FINISHED" and cfg.checkpoint.export_at_end:
            described = describe_export(cfg, run.tracker.uri if run.tracker.active else None, state.mlflow_run_id,
                                        state.step, run.run_dir, git_commit()) if run.is_main else None
            out = export_model(run.engine.module.model, cfg.model, run.tokenizer, run.run_dir / "export",
                               run.is_main, described)
            if out is not None:
                run.tracker.log_artifact(out / "model_config.yaml", "export")
    except BaseException:
        status = "FAILED"
        raise
    finally:
        bar.close()
        run.stop.uninstall()
        run.tracker.end(status)
    return 0
