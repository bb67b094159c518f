"""Bad numbers and data that cannot feed the loss: one line naming the key or option, before any training."""

from __future__ import annotations

import dataclasses

import pytest
from train_helpers import TINY

from pipeline.config import load_config
from pipeline.data.shards import ShardError, resolve_shards
from pipeline.losses import LossContext, build_objective
from pipeline.train.config import PretrainConfig
from pipeline.train.run import check_data_fits


@pytest.mark.parametrize("override, key", [
    ("schedule.max_steps=-3", "schedule: max_steps"), ("data.batch_size=0", "data: batch_size"),
    ("checkpoint.every_steps=0", "checkpoint: every_steps"), ("schedule.min_lr_ratio=1.5", "schedule: min_lr_ratio"),
    ("data.reading.retries=-1", "data.reading: retries"), ("optim.lr=0", "optim: lr"),
])
def test_bad_numbers_exit_2_with_one_line(override, key, capsys):
    """Counts < 1 and fractions out of range are refused by the trainer's command line: exit 2, one line."""
    from pipeline.train.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--config", str(TINY), override])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and key in err and err.startswith("config error:")


def test_shards_without_embeddings_name_the_option(train_manifest, tmp_path):
    """Default SIA (similarity_source precomputed) on shards without report_emb: ShardError naming the option."""
    cfg = load_config(PretrainConfig, TINY, [f"data.manifest={train_manifest}"])
    shards = resolve_shards("train", manifest=str(train_manifest))
    loss = build_objective(cfg.loss, LossContext(report_pooling=None, text_pooling="mean"))
    check_data_fits(cfg, shards, loss)  # these shards have embeddings
    with pytest.raises(ShardError, match=r"loss\.options\.sia\.similarity_source=online"):
        check_data_fits(cfg, dataclasses.replace(shards, report_embeddings=False), loss)


def test_resume_with_another_world_size_is_one_line_exit_2(train_manifest, tmp_path):
    """A checkpoint of 1 rank resumed by 2: every rank says so in one line (no traceback) and exits 2."""
    from train_helpers import finish, spawn_ranks, tiny_overrides

    run_dir = tmp_path / "w1"
    over = tiny_overrides(train_manifest, run_dir, schedule__max_steps=2, checkpoint__every_steps=2)
    assert [code for code, _ in finish(spawn_ranks(over, nproc=1))] == [0]
    results = finish(spawn_ranks(tiny_overrides(train_manifest, run_dir, schedule__max_steps=4), nproc=2))
    for code, out in results:
        assert code == 2 and "Traceback" not in out, out[-3000:]
        assert "was written by 1 ranks but this job has 2" in out and "resume with the same number" in out
