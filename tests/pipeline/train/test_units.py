"""Trainer pieces without a process group: env discovery, schedule, weight decay, checkpoints, faults, CLI errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from train_helpers import REPO, TINY, tiny_overrides

from pipeline.config import ConfigError, load_config
from pipeline.data import ShardError
from pipeline.train.checkpoint import (
    COMPLETE,
    complete_checkpoints,
    describe,
    find_resume_point,
    prune,
    rank_state_file,
    resume_checkpoint,
    tag_for,
)
from pipeline.train.config import PretrainConfig, checkpoint_dir, run_dir
from pipeline.train.engine import (
    compile_encoders,
    deepspeed_config,
    lr_factor,
    parameter_groups,
    vectorise_scalar_parameters,
)
from pipeline.train.faults import BadStepError, BadStepGuard, StopRequest, request_stop, withdraw_stop_request


def test_warmup_then_cosine():
    """Linear warm-up to the base lr, cosine down to min_ratio at the last step."""
    assert lr_factor(0, 4, 20, 0.1) == pytest.approx(0.25) and lr_factor(3, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20, 0.1) == pytest.approx(1.0) and lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1)
    mid = lr_factor(12, 4, 20, 0.1)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_weight_decay_exclusions():
    """Norms, biases, temperatures and named patterns get no weight decay; 0-d temperatures become [1]."""
    model = nn.ModuleDict({"proj": nn.Linear(4, 4), "norm": nn.LayerNorm(4), "emb": nn.Embedding(3, 4)})
    model.log_scale = nn.Parameter(torch.tensor(2.0))
    assert vectorise_scalar_parameters(model) == ["log_scale"] and model.log_scale.shape == (1,)
    decay, no_decay = parameter_groups(model, 0.05, ["emb"])
    assert [p.shape for p in decay["params"]] == [(4, 4)] and decay["weight_decay"] == 0.05
    assert len(no_decay["params"]) == 5 and no_decay["weight_decay"] == 0.0


def test_deepspeed_config_is_filled_from_yaml():
    """Batch sizes, accumulation, clipping, precision and the torch AdamW come from the YAML config."""
    cfg = load_config(PretrainConfig, TINY, ["data.manifest=x", "optim.accumulation_steps=3", "data.batch_size=5",
                                             "engine.precision=bf16"])
    ds = deepspeed_config(cfg, world_size=4, device_type="cpu")
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (60, 5, 3)
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and ds["optimizer"]["params"]["torch_adam"]
    assert ds["zero_optimization"]["stage"] == 2


def test_deepspeed_overrides_merge_into_the_json_and_cannot_take_trainer_keys():
    """engine.deepspeed_overrides deep-merges into the JSON; keys the trainer fills are refused when the config loads."""
    cfg = load_config(PretrainConfig, TINY, [
        "data.manifest=x", "engine.deepspeed_overrides.zero_optimization.reduce_bucket_size=500000000",
        "engine.deepspeed_overrides.zero_optimization.overlap_comm=true", "engine.deepspeed_overrides.steps_per_print=7"])
    ds = deepspeed_config(cfg, world_size=2, device_type="cuda")
    zero = ds["zero_optimization"]
    assert (zero["stage"], zero["reduce_bucket_size"], zero["overlap_comm"], ds["steps_per_print"]) == (2, 500000000, True, 7)
    assert zero["contiguous_gradients"]  # the JSON's other keys stay
    assert not deepspeed_config(cfg, world_size=2, device_type="cpu")["zero_optimization"]["overlap_comm"]
    with pytest.raises(ValueError, match=r"\['train_batch_size'\] are set by the trainer"):
        load_config(PretrainConfig, TINY, ["data.manifest=x", "engine.deepspeed_overrides.train_batch_size=64"])


def test_resume_point_ignores_incomplete_and_prune_keeps_last(tmp_path):
    """latest = newest folder with the completion marker; pruning keeps the last K complete ones."""
    for step, done in ((2, True), (4, True), (6, True), (8, False)):
        (tmp_path / tag_for(step)).mkdir()
        if done:
            (tmp_path / tag_for(step) / COMPLETE).write_text(json.dumps({"step": step}))
    assert find_resume_point(tmp_path, "latest").name == tag_for(6)
    assert find_resume_point(tmp_path, None) is None and find_resume_point(tmp_path / "none", "latest") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        find_resume_point(tmp_path, str(tmp_path / tag_for(8)))
    prune(tmp_path, keep_last=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == [tag_for(4), tag_for(6)]
    assert (tmp_path / tag_for(8)).is_dir()  # newer than the newest complete: may still be being written


def test_run_and_checkpoint_folders_and_checkpoint_description(tmp_path):
    """run.output_dir/run.name, checkpoint.dir else <run dir>/checkpoints; describe() reads a checkpoint's files."""
    over = ["data.manifest=x", f"run.output_dir={tmp_path}", "run.name=r1", "checkpoint.resume=latest"]
    cfg = load_config(PretrainConfig, TINY, over)
    assert run_dir(cfg) == tmp_path / "r1" and checkpoint_dir(cfg) == tmp_path / "r1" / "checkpoints"
    assert checkpoint_dir(load_config(PretrainConfig, TINY, [*over, f"checkpoint.dir={tmp_path}/c"])) == tmp_path / "c"
    assert resume_checkpoint(cfg) is None
    folder = checkpoint_dir(cfg) / tag_for(12)
    folder.mkdir(parents=True)
    rank_state_file(folder, 0).write_text(json.dumps({"state": {"step": 12, "mlflow_run_id": "abc"}}))
    (folder / COMPLETE).write_text(json.dumps({"step": 12, "epoch": 3, "world_size": 4, "time": 0.0}))
    assert resume_checkpoint(cfg) == folder
    assert resume_checkpoint(load_config(PretrainConfig, TINY, [*over, "checkpoint.resume=null"])) is None
    info = describe(folder)
    assert (info.folder, info.step, info.epoch, info.world_size, info.mlflow_run_id) == (folder, 12, 3, 4, "abc")


@pytest.fixture
def stop_request():
    """A trainer's stop request, uninstalled (signal handlers restored) and any waiting request dropped after."""
    stop = StopRequest()
    yield stop
    stop.uninstall()
    withdraw_stop_request()


def test_stop_signal_and_in_process_request(stop_request):
    """SIGUSR1 stops the trainer; so does request_stop(), also when made before the trainer listens."""
    import os
    import signal

    before = signal.getsignal(signal.SIGUSR1)
    stop_request.install()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert stop_request.reason == "received SIGUSR1"
    stop_request.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before
    request_stop("not taken")
    withdraw_stop_request()
    request_stop("early")  # before the next trainer listens
    second = StopRequest()
    second.install()
    try:
        assert second.reason == "early"
        request_stop("again")
        assert second.reason == "early"  # the first reason is kept
    finally:
        second.uninstall()
    third = StopRequest()
    third.install()
    try:
        assert not third.requested  # taken requests are gone, withdrawn ones never came
        request_stop("now")
        assert third.reason == "now"
    finally:
        third.uninstall()


def test_tracker_logs_into_tracking_run_id(tmp_path):
    """ensure_experiment creates the experiment once (artifacts in the run dir); tracking.run_id is attached to."""
    from mlflow.tracking import MlflowClient

    from pipeline.train.tracking import Tracker, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(PretrainConfig, TINY, ["data.manifest=x", f"tracking.uri={uri}", "tracking.enabled=true"])
    folder = tmp_path / "run"
    experiment_id = ensure_experiment(cfg.tracking, folder)
    assert ensure_experiment(cfg.tracking, folder) == experiment_id
    client = MlflowClient(uri)
    assert client.get_experiment(experiment_id).artifact_location == (folder / "mlartifacts").resolve().as_uri()
    scheduled = client.create_run(experiment_id, run_name="r").info.run_id
    cfg.tracking.run_id = scheduled
    tracker = Tracker(cfg.tracking, folder, is_main=True)
    assert tracker.start("r", None, cfg) == scheduled
    tracker.end()
    run = client.get_run(scheduled)
    assert run.info.status == "FINISHED" and run.data.params["tracking.run_id"] == scheduled
    cfg.tracking.run_id = "0" * 32
    with pytest.raises(ValueError, match=f"tracking.run_id={'0' * 32}: no such run"):
        Tracker(cfg.tracking, folder, is_main=True).start("r", None, cfg)


def test_bad_step_guard_aborts_after_k_in_a_row():
    """Skips are counted; K consecutive ones abort with a message naming the setting."""
    guard = BadStepGuard(limit=2)
    guard.record(True, 1)
    guard.record(False, 2)
    guard.record(True, 3)
    with pytest.raises(BadStepError, match="max_consecutive_bad_steps=2"):
        guard.record(True, 4)
    assert guard.total == 3


def test_bad_config_key_is_named(capsys):
    """An unknown key stops the CLI with exit code 2 and names the key."""
    from pipeline.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(TINY), "optim.learning_rate=1e-4"])
    assert exit_info.value.code == 2
    assert "unknown key 'optim.learning_rate'" in capsys.readouterr().err


def test_missing_shard_is_named_before_training(train_manifest, tmp_path, capsys):
    """A shard listed in the manifest but gone stops the run (exit 1) with the file's name, before any step."""
    import shutil

    from pipeline.train import main
    from pipeline.train.run import build_run

    copy = tmp_path / "shards"
    shutil.copytree(train_manifest.parent, copy)
    victim = sorted((copy / "train").glob("*.tar"))[1]
    victim.unlink()
    overrides = tiny_overrides(copy / "manifest.json", tmp_path / "run")
    with pytest.raises(ShardError, match=victim.name):
        build_run(load_config(PretrainConfig, TINY, overrides))
    assert main(["--config", str(TINY), *overrides]) == 1
    assert victim.name in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_configs_resolve():
    """The shipped pretrain configs load (with the manifest the user must give)."""
    for name in ("demo", "ablation", "mimic_vitb16", "base"):
        cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain" / f"{name}.yaml", ["data.manifest=m.json"])
        assert cfg.data.transform.channels == cfg.model.image.in_chans


def test_compile_is_refused_under_zero3_and_keeps_parameter_names(monkeypatch):
    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image_encoder, self.text_encoder = nn.Linear(3, 2), nn.Linear(2, 2)

    model = Both()
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match="ZeRO stage 1 or 2"):
        compile_encoders(model, {"zero_optimization": {"stage": 3}})
    x = torch.randn(4, 3)
    expected = model.image_encoder(x)
    modes, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: modes.append(kw.get("mode")) or real_compile(fn, **kw))
    compile_encoders(model, {"zero_optimization": {"stage": 2}}, mode="reduce-overhead")
    assert modes == ["reduce-overhead", "reduce-overhead"]
    assert [n for n, _ in model.named_parameters()] == names  # checkpoints and export unaffected
    torch.testing.assert_close(model.image_encoder(x), expected)  # on the CPU the mode runs without CUDA graphs


def test_compile_mode_is_checked_by_the_config():
    with pytest.raises(ConfigError, match="engine.compile_mode"):
        load_config(PretrainConfig, REPO / "configs" / "pretrain" / "base.yaml",
                    ["data.manifest=m.json", "engine.compile_mode=reduce_overhead"])


def test_float_features_copy_never_aliases_the_encoder_output():
    """CUDA-graph runs copy features out of graph-owned memory; otherwise fp32 features pass through as they are."""
    from dataclasses import dataclass

    from pipeline.train.fit import _float_features

    @dataclass
    class Features:
        emb: torch.Tensor
        mask: torch.Tensor

    fp32 = Features(torch.randn(2, 3), torch.ones(2, dtype=torch.bool))
    assert _float_features(fp32).emb is fp32.emb
    copied = _float_features(fp32, copy=True)
    assert copied.emb.data_ptr() != fp32.emb.data_ptr() and torch.equal(copied.emb, fp32.emb)
    assert copied.mask is fp32.mask  # not floating: untouched
    bf16 = _float_features(Features(torch.randn(2, 3, dtype=torch.bfloat16), fp32.mask))
    assert bf16.emb.dtype == torch.float32
