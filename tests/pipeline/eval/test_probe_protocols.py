"""The linear probe's MGCA protocol: it learns on a separable toy case, stops early, and its config is checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, config_from_dict, load_config
from pipeline.data.transforms import TransformConfig, sample_generator
from pipeline.eval.config import EvalConfig
from pipeline.eval.linear_probe import weighted_probe_metric
from pipeline.eval.probe_training import EarlyStopping, augment, augmented_batches, cached_batches, train_head

REPO = Path(__file__).resolve().parents[3]
TRANSFORM = config_from_dict(TransformConfig, {
    "image_size": 32, "resize_size": 36, "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "rotate_degrees": 0.0,
    "translate": 0.0, "scale": [1.0, 1.0], "brightness": 0.0, "contrast": 0.0, "mean": 0.5, "std": 0.25, "channels": 3,
}, "test")


def _mgca_defaults(**changes):
    """configs/eval/base.yaml's linear_probe.mgca (MGCA's defaults), with ``changes``."""
    cfg = load_config(EvalConfig, REPO / "configs/eval/linear_probe.yaml", ["checkpoint=unused"])
    return dataclasses.replace(cfg.linear_probe.mgca, **changes)


def test_early_stopping_waits_patience_epochs_without_improvement() -> None:
    stopper = EarlyStopping(patience=2)
    decisions = [stopper.update(epoch, loss) for epoch, loss in enumerate([1.0, 0.8, 0.85, 0.9])]
    assert decisions == [False, False, False, True] and stopper.best_epoch == 1
    strict = EarlyStopping(patience=2, min_delta=0.05)
    assert [strict.update(e, v) for e, v in enumerate([1.0, 0.97, 0.96])] == [False, False, True]
    assert strict.best_epoch == 0  # 0.97 is not 0.05 below 1.0


def _blobs(count: int, seed: int, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two 8-d Gaussian blobs 3 σ apart (labels random instead when ``flip``)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    features = rng.normal(size=(count, 8)) + 3.0 * labels[:, None] * np.eye(8)[0]
    if flip:
        labels = rng.integers(0, 2, count)
    return features.astype(np.float32), labels[:, None].astype(np.float64)


def test_trained_head_separates_separable_features() -> None:
    cfg = _mgca_defaults(lr=0.05, max_epochs=40, batch_size=16)
    train, valid, test = _blobs(64, 0), _blobs(64, 1), _blobs(200, 2)
    fit = train_head(cached_batches(train[0], cfg, seed=0), train[1], valid, "binary", 1, cfg, seed=0)
    auroc = float(weighted_probe_metric(fit.scores(test[0]), test[1], "binary")[0])
    assert auroc > 0.95, auroc  # chance is 0.5
    assert fit.valid_losses[fit.best_epoch] == min(fit.valid_losses) < fit.valid_losses[0]


def test_training_stops_when_the_validation_loss_stops_falling() -> None:
    """Validation labels unrelated to the features: the loss rises after a few epochs and training stops."""
    cfg = _mgca_defaults(lr=0.05, max_epochs=200, patience=3, batch_size=16)
    train, valid = _blobs(64, 0), _blobs(64, 1, flip=True)
    fit = train_head(cached_batches(train[0], cfg, seed=0), train[1], valid, "binary", 1, cfg, seed=0)
    assert fit.stopped_early and fit.epochs == fit.best_epoch + 1 + cfg.patience < cfg.max_epochs
    before = fit.scores(valid[0])
    assert torch.allclose(torch.as_tensor(before), torch.as_tensor(fit.scores(valid[0])))  # dropout off


def _square_images(count: int, seed: int) -> tuple[list, np.ndarray]:
    """40 x 40 noise images; label 1 puts a bright square in the top half, label 0 in the bottom half."""
    rng = np.random.default_rng(seed)
    loaders, labels = [], rng.integers(0, 2, count)
    for label in labels:
        image = rng.uniform(0.0, 0.3, (1, 40, 40)).astype(np.float32)
        top = rng.integers(2, 10) if label else rng.integers(24, 32)
        left = rng.integers(4, 26)
        image[:, top:top + 8, left:left + 10] = 0.9
        loaders.append(lambda image=image: torch.from_numpy(image))
    return loaders, labels[:, None].astype(np.float64)


def test_mgca_probe_learns_from_augmented_images_through_a_frozen_encoder() -> None:
    """Augmented images (random crop, flip, jitter) through a fixed 2 x 2 pooling 'encoder' beat chance by far."""
    cfg = _mgca_defaults(lr=0.05, max_epochs=30, batch_size=16, hflip=0.5, jitter=0.2)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(pixels[:, :1], 2).flatten(1)

    def features(loaders) -> np.ndarray:
        gen = torch.Generator().manual_seed(0)
        no_aug = dataclasses.replace(cfg, random_crop=False, hflip=0.0, jitter=0.0)
        return encode(torch.stack([augment(f(), TRANSFORM, no_aug, gen) for f in loaders])).numpy()

    train, valid, test = _square_images(48, 0), _square_images(32, 1), _square_images(100, 2)
    ids = [f"img{i}" for i in range(len(train[0]))]
    batches = augmented_batches(encode, train[0], ids, TRANSFORM, cfg, seed=0, num_workers=0,
                                device=torch.device("cpu"))
    fit = train_head(batches, train[1], (features(valid[0]), valid[1]), "binary", 1, cfg, seed=0)
    auroc = float(weighted_probe_metric(fit.scores(features(test[0])), test[1], "binary")[0])
    assert auroc > 0.9, auroc


def test_augment_is_seeded_and_keeps_the_geometry() -> None:
    image = torch.rand(1, 50, 60)
    cfg = _mgca_defaults(hflip=0.5, jitter=0.3)
    first = augment(image, TRANSFORM, cfg, sample_generator(0, 1, "a"))
    assert first.shape == (3, 32, 32)
    assert torch.equal(first, augment(image, TRANSFORM, cfg, sample_generator(0, 1, "a")))
    assert not torch.equal(first, augment(image, TRANSFORM, cfg, sample_generator(0, 2, "a")))
    small = dataclasses.replace(TRANSFORM, resize_size=30)
    with pytest.raises(ValueError, match="resize_size=30 is below image_size=32"):
        augment(image, small, cfg, sample_generator(0, 1, "a"))


def test_protocol_config_defaults_and_validation() -> None:
    path = REPO / "configs/eval/linear_probe.yaml"
    cfg = load_config(EvalConfig, path, ["checkpoint=unused"]).linear_probe
    assert cfg.protocol == "clip"  # the fast default
    mgca = cfg.mgca  # MGCA's ssl_finetuner.py / mgca_finetuner.py
    assert (mgca.lr, mgca.weight_decay, mgca.batch_size, mgca.max_epochs, mgca.patience) == (5e-4, 1e-6, 48, 50, 10)
    assert mgca.augments and tuple(mgca.betas) == (0.9, 0.999)
    with pytest.raises(ConfigError, match=r"linear_probe.protocol.*not one of \['clip', 'mgca'\]"):
        load_config(EvalConfig, path, ["checkpoint=unused", "linear_probe.protocol=lbfgs"])
    with pytest.raises(ConfigError, match=r"linear_probe.mgca: out of range: patience=0, hflip=1.5"):
        load_config(EvalConfig, path, ["checkpoint=unused", "linear_probe.mgca.patience=0",
                                       "linear_probe.mgca.hflip=1.5"])
    with pytest.raises(ConfigError, match=r"fractions must be in \(0, 1\]"):
        load_config(EvalConfig, path, ["checkpoint=unused", "linear_probe.fractions=[0.0, 0.1]"])
    with pytest.raises(ConfigError, match=r"dense: out of range: min_steps=-1, patience=0"):
        load_config(EvalConfig, path, ["checkpoint=unused", "dense.min_steps=-1", "dense.patience=0"])
    with pytest.raises(ConfigError, match=r"detection.objectness_prior must be in \(0, 1\) or null, got 1.5"):
        load_config(EvalConfig, path, ["checkpoint=unused", "detection.objectness_prior=1.5"])
    with pytest.raises(ConfigError, match="unknown key 'linear_probe.mgca.epochs'"):
        load_config(EvalConfig, path, ["checkpoint=unused", "linear_probe.mgca.epochs=3"])
