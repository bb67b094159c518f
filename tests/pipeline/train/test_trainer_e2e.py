"""End-to-end trainer runs on phantom shards: 2 processes, ZeRO-2/3, faults, exact resume after SIGKILL."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import torch
from train_helpers import (
    TINY,
    finish,
    kill_all,
    spawn_ranks,
    step_losses,
    tiny_overrides,
    torchrun,
    wait_for_step,
)


def _complete_tags(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step*") if (p / "COMPLETE.json").is_file())


def _decreases(losses: dict[int, tuple[float, bool]]) -> bool:
    kept = [loss for _, (loss, skipped) in sorted(losses.items()) if not skipped]
    return sum(kept[-2:]) / 2 < sum(kept[:2]) / 2


def test_zero2_two_ranks_nan_skip_mlflow_export(train_manifest, tmp_path):
    """torchrun, ZeRO-2: steps run, loss decreases, NaN on one rank is skipped by both, MLflow + figure + export.

    The text tower's embeddings and first layer are frozen: the export must carry them unchanged.
    """
    run_dir = tmp_path / "z2"
    over = tiny_overrides(train_manifest, run_dir, schedule__max_steps=9, faults__inject_nan_steps=[3],
                          model__text__freeze_layers=1,
                          faults__inject_nan_rank=1, tracking__enabled=True, tracking__figure_every_steps=4,
                          checkpoint__every_steps=4, checkpoint__keep_last=1, checkpoint__export_at_end=True)
    result = torchrun(over)
    assert result.returncode == 0, result.stderr[-4000:]
    losses = step_losses(run_dir / "steps.jsonl")
    assert sorted(losses) == list(range(1, 10))
    assert [s for s, (_, skipped) in losses.items() if skipped] == [3]
    assert "non-finite loss on at least one rank" in result.stderr
    assert _decreases(losses), losses
    assert _complete_tags(run_dir) == ["step000000009"]  # keep_last=1 pruned steps 4 and 8
    with sqlite3.connect(run_dir / "mlflow.db") as db:
        runs = db.execute("select run_uuid, status from runs").fetchall()
        keys = {k for (k,) in db.execute("select distinct key from metrics")}
        skipped = db.execute("select max(value) from metrics where key='skipped_steps'").fetchone()[0]
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    assert {"loss", "sia/loss", "sta/loss", "lr", "grad_norm", "temperature/sia", "samples_per_s",
            "data_wait_fraction", "sia/fn_eliminated_per_row", "sta_token/sparsity", "skipped_steps"} <= keys
    assert skipped == 1
    artifacts = run_dir / "mlartifacts" / runs[0][0] / "artifacts"
    assert (artifacts / "alignment" / "step000000004.png").is_file() and (artifacts / "config.yaml").is_file()
    from pipeline.models import load_exported

    model = load_exported(run_dir / "export")
    assert model.logit_scales()["sia"].ndim == 0
    import torch

    from pipeline.config import load_config
    from pipeline.models import build_model
    from pipeline.train.config import PretrainConfig

    cfg = load_config(PretrainConfig, run_dir / "config.yaml", [])
    torch.manual_seed(cfg.run.seed)  # what the trainer does before building its model
    initial = build_model(cfg.model).text_encoder.backbone
    trained = model.text_encoder.backbone
    assert torch.equal(trained.embeddings.word_embeddings.weight, initial.embeddings.word_embeddings.weight)
    assert all(torch.equal(a, b) for a, b in zip(trained.encoder.layer[0].parameters(), initial.encoder.layer[0].parameters()))
    assert not torch.equal(trained.encoder.layer[1].attention.self.query.weight, initial.encoder.layer[1].attention.self.query.weight)
    from pipeline.train.checkpoint import describe

    info = describe(run_dir / "checkpoints" / "step000000009")
    assert (info.step, info.world_size, info.mlflow_run_id) == (9, 2, runs[0][0])


def test_zero3_accumulation_sigterm_on_one_rank(train_manifest, tmp_path):
    """ZeRO-3 with 2x2 accumulation: SIGTERM to rank 1 -> both ranks finish the step, checkpoint, exit 0."""
    run_dir = tmp_path / "z3"
    over = tiny_overrides(train_manifest, run_dir, schedule__max_steps=100, optim__accumulation_steps=2,
                          data__batch_size=2, checkpoint__every_steps=50,
                          engine__deepspeed_config="configs/deepspeed/zero3.json")
    procs = spawn_ranks(over)
    try:
        wait_for_step(run_dir / "steps.jsonl", 4, procs)
        procs[1].send_signal(signal.SIGTERM)
        results = finish(procs)
    finally:
        kill_all(procs)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    last = max(step_losses(run_dir / "steps.jsonl"))
    assert 4 <= last < 100
    assert _complete_tags(run_dir) == [f"step{last:09d}"]
    assert "received SIGTERM" in results[1][1] and f"stopped at step {last}" in results[0][1]
    assert _decreases(step_losses(run_dir / "steps.jsonl"))


def test_exact_resume_after_sigkill(train_manifest, tmp_path):
    """A rank SIGKILLed mid-training takes the job down (no hang); resuming gives bit-identical per-step losses."""
    steps = 7
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    common = {"schedule__max_steps": steps, "checkpoint__every_steps": 2}
    ref = spawn_ranks(tiny_overrides(train_manifest, ref_dir, **common))
    assert [c for c, _ in finish(ref)] == [0, 0]
    cut_over = tiny_overrides(train_manifest, cut_dir, tracking__enabled=True, tracking__figure_every_steps=0, **common)
    cut = spawn_ranks(cut_over)
    try:
        wait_for_step(cut_dir / "steps.jsonl", 4, cut)
        cut[1].send_signal(signal.SIGKILL)  # one rank dies: the other must not hang on a collective
        survivor_code, _ = finish(cut[:1], timeout=150)[0]
    finally:
        kill_all(cut)
    assert survivor_code != 0
    before = step_losses(cut_dir / "steps.jsonl")
    resumed = spawn_ranks(cut_over)
    results = finish(resumed)
    assert [c for c, _ in results] == [0, 0], results[0][1][-3000:]
    assert "resumed from" in results[0][1]
    expected = step_losses(ref_dir / "steps.jsonl")
    after = step_losses(cut_dir / "steps.jsonl")
    assert sorted(after) == list(range(1, steps + 1)) and len(before) >= 4
    assert after == expected, (before, after, expected)  # bit-identical floats, every step
    with __import__("sqlite3").connect(cut_dir / "mlflow.db") as db:
        assert len(db.execute("select run_uuid from runs").fetchall()) == 1
    saved = json.loads((cut_dir / "checkpoints" / f"step{steps:09d}" / "trainer_rank00000.json").read_text())
    assert saved["state"]["mlflow_run_id"] is not None


def test_zero_steps_exports_the_seeded_initial_model(train_manifest, tmp_path):
    """schedule.max_steps=0 (the ablation's untrained row): no step runs, the initial model is exported."""
    from pipeline.config import load_config
    from pipeline.models import build_model, build_tokenizer, load_exported
    from pipeline.train.config import PretrainConfig
    from pipeline.train.sources import resolve_model_sources

    run_dir = tmp_path / "untrained"
    over = tiny_overrides(train_manifest, run_dir, schedule__max_steps=0, checkpoint__export_at_end=True)
    result = torchrun(over, nproc=1)
    assert result.returncode == 0, result.stderr[-4000:]
    assert not (run_dir / "steps.jsonl").is_file() or not (run_dir / "steps.jsonl").read_text().strip()
    exported = load_exported(run_dir / "export")
    cfg = resolve_model_sources(load_config(PretrainConfig, TINY, over))
    torch.manual_seed(cfg.run.seed)  # the trainer's seeding before it builds the model
    fresh = build_model(cfg.model, build_tokenizer(cfg.model))
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, exported.state_dict()[name]), name
