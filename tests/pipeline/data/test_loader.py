"""The training data pipeline: deterministic shuffle, coverage across ranks/workers, corrupt samples, resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerFast

from pipeline.config import config_from_dict
from pipeline.data import (
    Collator,
    DataConfig,
    DataPosition,
    ShardError,
    build_epoch_loader,
    micro_batches_per_epoch,
    resolve_shards,
)

WORDS = ["report", "number", "no", "effusion"] + [str(i) for i in range(100)]


def tokenizer() -> BertTokenizerFast:
    """A tiny WordPiece tokenizer over the fixture's words."""
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return BertTokenizerFast(vocab=vocab)


def data_config(manifest_path: Path, **over) -> DataConfig:
    """A data config for the tiny shards."""
    tree = {
        "manifest": str(manifest_path), "shard_root": None, "pattern": None, "num_samples": None,
        "train_split": "train", "val_split": "train", "batch_size": 4, "num_workers": 0, "prefetch_factor": 2,
        "shuffle_buffer": 16, "shuffle_initial": 8, "epoch_samples": None, "findings_annotations": None,
        "transform": {
            "image_size": 16, "resize_size": 18, "crop_scale": [0.6, 1.0], "crop_ratio": [0.8, 1.25],
            "rotate_degrees": 5.0, "translate": 0.05, "scale": [0.95, 1.05], "brightness": 0.1, "contrast": 0.1,
            "mean": 0.5, "std": 0.25, "channels": 3,
        },
        "reading": {"retries": 1, "retry_wait_s": 0.0, "warn_burst": 5, "warn_interval_s": 30.0, "verify_sha256": False},
    }
    tree.update(over)
    return config_from_dict(DataConfig, tree)


def epoch_batches(cfg: DataConfig, *, rank=0, world=1, seed=0, epoch=0, start=None, limit=None):
    """Keys and batches of one epoch on one rank (and the loader, for its position)."""
    shards = resolve_shards(cfg.train_split, manifest=cfg.manifest)
    loader = build_epoch_loader(
        shards, cfg, Collator(tokenizer(), 12), rank=rank, world_size=world, seed=seed,
        accumulation=1, start=start or DataPosition(epoch),
    )
    batches = []
    for batch in loader:
        batches.append(batch)
        if limit is not None and len(batches) == limit:
            break
    return batches, loader


def keys(batches) -> list[str]:
    """All sample keys of a list of batches, in order."""
    return [k for b in batches for k in b.keys]


def test_batch_contents(tiny_shards):
    """A batch holds normalised images, fixed-length tokens with word ids, report embeddings and labels."""
    batches, _ = epoch_batches(data_config(tiny_shards(16, 4)), limit=1)
    b = batches[0]
    assert b.images.shape == (4, 1, 16, 16) and b.images.dtype == torch.float32  # grey; expanded on device
    assert b.input_ids.shape == (4, 12) and b.attention_mask.shape == (4, 12)
    assert (b.word_ids[b.attention_mask == 0] == -1).all() and (b.word_ids[:, 0] == -1).all()
    assert b.report_emb.shape == (4, 8) and torch.allclose(b.report_emb.norm(dim=1), torch.ones(4), atol=1e-2)
    assert b.labels[0, :4].tolist() == [1.0, 0.0, -1.0, 0.0] and not b.labels_known[0, 3]


def test_shuffle_is_deterministic_and_changes_with_epoch(tiny_shards):
    """Same seed and epoch give the same order; another epoch or seed another order."""
    cfg = data_config(tiny_shards(32, 4))
    first, _ = epoch_batches(cfg)
    again, _ = epoch_batches(cfg)
    assert keys(first) == keys(again)
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, again))
    assert keys(epoch_batches(cfg, epoch=1)[0]) != keys(first)
    assert keys(epoch_batches(cfg, seed=1)[0]) != keys(first)
    assert sorted(keys(first)) == [f"d{i:05d}" for i in range(32)]


def test_split_by_node_and_worker_covers_each_sample_once(tiny_shards):
    """2 ranks x 2 workers: every sample once per epoch, and both ranks take the same number of batches."""
    cfg = data_config(tiny_shards(64, 4), num_workers=2)
    per_rank = [epoch_batches(cfg, rank=r, world=2)[0] for r in range(2)]
    assert [len(b) for b in per_rank] == [micro_batches_per_epoch(64, 4, 2, 1)] * 2 == [8, 8]
    seen = Counter(keys(per_rank[0]) + keys(per_rank[1]))
    assert sorted(seen) == [f"d{i:05d}" for i in range(64)] and set(seen.values()) == {1}


def test_uneven_shards_still_give_equal_steps(tiny_shards):
    """Ranks whose shards hold different sample counts still take the same number of batches (wrap-around)."""
    cfg = data_config(tiny_shards(30, 7))  # 5 shards: 7,7,7,7,2 samples
    lengths = [len(epoch_batches(cfg, rank=r, world=2)[0]) for r in range(2)]
    assert lengths == [micro_batches_per_epoch(30, 4, 2, 1)] * 2 == [3, 3]


def test_corrupt_sample_is_skipped_and_counted(tiny_shards, caplog):
    """A sample whose image does not decode is logged with its key, counted, and the epoch still completes."""
    cfg = data_config(tiny_shards(24, 4, corrupt=(5,)), epoch_samples=20)
    batches, loader = epoch_batches(cfg)
    assert len(batches) == 5 and "d00005" not in keys(batches)
    assert loader.corrupt_total == 1
    assert any("d00005" in r.getMessage() for r in caplog.records)


def test_resume_mid_epoch_continues_the_same_stream(tiny_shards):
    """Stopping after k batches and resuming from the saved position yields exactly the remaining batches."""
    cfg = data_config(tiny_shards(48, 4, corrupt=(3, 17)), num_workers=2)
    full, _ = epoch_batches(cfg, epoch=2)
    for k in (3, 4):
        head, loader = epoch_batches(cfg, epoch=2, limit=k)
        position = DataPosition.from_dict(loader.position.to_dict())
        tail, resumed = epoch_batches(cfg, epoch=2, start=position)
        assert keys(head) + keys(tail) == keys(full)
        assert all(torch.equal(a.images, b.images) for a, b in zip(head + tail, full))
        assert resumed.corrupt_total == 2


def test_missing_shard_is_named(tiny_shards):
    """A manifest entry whose file is gone stops the run before training, naming the file."""
    manifest = tiny_shards(16, 4)
    (manifest.parent / "train" / "train-000002.tar").unlink()
    with pytest.raises(ShardError, match="train-000002.tar"):
        resolve_shards("train", manifest=str(manifest))


def test_brace_pattern_and_pipe_urls(tiny_shards):
    """Shards named by a brace pattern of pipe: commands read the same samples as the manifest."""
    manifest = tiny_shards(16, 4)
    pattern = f"pipe:cat {manifest.parent}/train/train-{{000000..000003}}.tar"
    cfg = data_config(manifest, manifest=None, pattern=pattern, num_samples=16)
    shards = resolve_shards("train", manifest=None, pattern=pattern, num_samples=16)
    assert len(shards) == 4 and shards.urls[0].startswith("pipe:cat ")
    loader = build_epoch_loader(
        shards, cfg, Collator(tokenizer(), 12), rank=0, world_size=1, seed=0, accumulation=1,
        start=DataPosition(0),
    )
    assert sorted(k for b in loader for k in b.keys) == [f"d{i:05d}" for i in range(16)]


def test_shard_root_templates():
    """Manifest paths resolve next to the manifest, under a folder, or into a pipe: template; bad templates are named."""
    from pipeline.data.shards import shard_url

    assert shard_url("train/a.tar", "/d/manifest.json", None) == "/d/train/a.tar"
    assert shard_url("train/a.tar", "/d/manifest.json", "/mnt/s") == "/mnt/s/train/a.tar"
    assert shard_url("train/a.tar", "pipe:cat m", "pipe:aws s3 cp s3://b/{path} -") == "pipe:aws s3 cp s3://b/train/a.tar -"
    with pytest.raises(ShardError, match="no \\{path\\} placeholder"):
        shard_url("train/a.tar", "/d/manifest.json", "pipe:aws s3 cp s3://b/ -")
    with pytest.raises(ShardError, match="data.shard_root"):
        shard_url("train/a.tar", "pipe:cat m", None)
