"""Linear probe on a frozen image encoder: label fractions with fixed seeds, split files written once and reused.

Two protocols (``linear_probe.protocol``), one classifier each: sigmoid + BCE per label for
multi-label data (CheXpert-style), one sigmoid for binary data (RSNA), softmax + cross-entropy for
multi-class data (COVIDx). The metric is reported on the test split only.

- ``clip`` (default, fast; CLIP / CheXzero): logistic regression in torch on cached, standardised
  features (full-batch L-BFGS); the L2 strength is picked on the validation split.
- ``mgca`` (MGCA / G2D): a linear layer trained by AdamW on augmented images through the frozen
  encoder, early stopping on the validation loss (:mod:`pipeline.eval.probe_training`).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.eval import metrics
from pipeline.eval.adapters import LabelledImages, load_chexpert, load_covidx, load_rsna
from pipeline.eval.adapters.base import Task
from pipeline.eval.context import EvalContext, TaskResult, fmt, resolve_path
from pipeline.eval.features import image_feature
from pipeline.eval.probe_training import (
    augmented_batches,
    cached_batches,
    probe_loss,
    probe_targets,
    train_head,
)
from pipeline.eval.splits import (
    by_ids,
    concat,
    fraction_split,
    fraction_tag,
    partition_ids,
    read_committed_splits,
    read_or_write_ids,
    split_folder,
)

# --------------------------------------------------------------------------- classifier


@dataclass
class LinearClassifier:
    """Standardisation and a linear layer fitted on training features."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # [F, outputs]
    bias: torch.Tensor  # [outputs]
    task: Task

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Probabilities: ``[n, K]`` sigmoid for multi-label/binary, ``[n, C]`` softmax for multi-class."""
        x = (torch.from_numpy(features).double() - self.mean) / self.std
        logits = x @ self.weight + self.bias
        probs = torch.softmax(logits, dim=1) if self.task == "multiclass" else torch.sigmoid(logits)
        return probs.numpy()


def fit_linear(
    features: np.ndarray, targets: np.ndarray, task: Task, num_classes: int, weight_decay: float, max_iter: int
) -> LinearClassifier:
    """Fit logistic regression (L2 ``weight_decay`` on the weights) with full-batch L-BFGS in float64."""
    x = torch.from_numpy(features).double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
    x = (x - mean) / std
    y, known = probe_targets(targets, task)
    outputs = num_classes if task == "multiclass" else y.shape[1]
    weight = torch.zeros(x.shape[1], outputs, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(outputs, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = probe_loss(x @ weight + bias, y, known, task) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.inference_mode(False), torch.enable_grad():  # callers may run under inference mode
        optimiser.step(closure)
    return LinearClassifier(mean, std, weight.detach(), bias.detach(), task)


def probe_metric_name(task: Task) -> str:
    """The metric reported for a task: AUROC (mean over labels) or accuracy."""
    return "accuracy" if task == "multiclass" else "auroc"


def weighted_probe_metric(scores: np.ndarray, targets: np.ndarray, task: Task, weights=None) -> np.ndarray:
    """``[R]`` mean AUROC over labels (multi-label/binary) or accuracy (multi-class), per row of weights."""
    if task == "multiclass":
        return metrics.weighted_accuracy(scores.argmax(axis=1), targets, weights)
    per_label = metrics.weighted_multilabel_auroc(scores, targets, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without positives for every label
        return np.nanmean(per_label, axis=1)


def select_and_fit(
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    task: Task,
    num_classes: int,
    weight_decays: Sequence[float],
    max_iter: int,
) -> tuple[LinearClassifier, float, dict[float, float]]:
    """Fit one classifier per L2 strength, keep the best on the validation split (first best on ties)."""
    best, best_value, scores = None, -math.inf, {}
    for wd in weight_decays:  # a handful of strengths
        clf = fit_linear(*train, task, num_classes, wd, max_iter)
        value = float(weighted_probe_metric(clf.scores(valid[0]), valid[1], task)[0])
        scores[wd] = value
        if best is None or (not math.isnan(value) and value > best_value):
            best, best_value = clf, value
    return best, best_value, scores


# --------------------------------------------------------------------------- the task


@dataclass
class ProbeData:
    """A data set's training pool, validation and test sets, and where its split files live."""

    name: str
    train: LabelledImages
    valid: LabelledImages
    test: LabelledImages
    split_dir: Path  # seeded split files (written once, reused)
    committed: Path | None = None  # the data set's committed split files, when it ships them


def _carve_valid(name: str, pool: LabelledImages, fraction: float, root: Path, seed: int) -> ProbeData:
    """Split a labelled pool into train / valid with split files (the test set comes separately)."""
    folder = split_folder(root, name, pool)
    parts = partition_ids(pool.ids, [1 - fraction, fraction], seed)
    train = read_or_write_ids(folder / "train.txt", lambda: parts[0], pool.ids)
    valid = read_or_write_ids(folder / "valid.txt", lambda: parts[1], pool.ids)
    return ProbeData(name, by_ids(pool, train), by_ids(pool, valid), pool, folder)


def _seeded_rsna(pool: LabelledImages, fractions: Sequence[float], root: Path, seed: int) -> ProbeData:
    """RSNA's labelled pool split into train / valid / test by seeded split files."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"data.rsna.split_fractions must be three fractions summing to 1, got {fractions}")
    folder = split_folder(root, "rsna", pool)
    parts = partition_ids(pool.ids, fractions, seed)
    sets = [
        by_ids(pool, read_or_write_ids(folder / f"{split}.txt", lambda part=part: part, pool.ids))
        for split, part in zip(("train", "valid", "test"), parts)
    ]
    return ProbeData("rsna", *sets, folder)


def _with_committed(name: str, pool: LabelledImages, folder: str, root: Path) -> ProbeData:
    """Train / valid / test from a data set's committed split files over every image its adapter reads."""
    committed = resolve_path(folder, f"data.{name}.split_files")
    train, valid, test = (by_ids(pool, ids) for ids in read_committed_splits(committed, pool.ids))
    return ProbeData(name, train, valid, test, split_folder(root, name, train), committed)


def load_probe_data(ctx: EvalContext, name: str) -> ProbeData:
    """Train / valid / test of one probe data set, from its adapter and its committed or seeded split files."""
    data_cfg, probe = ctx.cfg.data, ctx.cfg.linear_probe
    root = resolve_path(probe.split_dir, "linear_probe.split_dir")
    if name == "shards":
        shards = data_cfg.shards
        splits = [ctx.shard_split(s) for s in (shards.train_split, shards.valid_split, shards.test_split)]
        columns = [splits[0].label_names.index(n) for n in shards.labels]
        # copies: the cached splits keep all labels for the other tasks
        splits = [dataclasses.replace(p, labels=p.labels[:, columns], label_names=list(shards.labels)) for p in splits]
        return ProbeData(name, *splits, split_folder(root, name, splits[0]))
    if name == "chexpert":
        c = data_cfg.chexpert
        chexpert_root = resolve_path(c.root, "data.chexpert.root")
        pool = load_chexpert(chexpert_root, "train", c.labels, c.uncertain, c.frontal_only)
        test = load_chexpert(chexpert_root, "valid", c.labels, c.uncertain, c.frontal_only)
        if c.split_files is not None:
            return _with_committed(name, concat([pool, test], name), c.split_files, root)
        return dataclasses.replace(_carve_valid(name, pool, c.valid_fraction, root, probe.seed), test=test)
    if name == "covidx":
        c = data_cfg.covidx
        covidx_root = resolve_path(c.root, "data.covidx.root")
        pool, test = (load_covidx(covidx_root, split, c.classes) for split in ("train", "test"))
        if c.split_files is not None:
            return _with_committed(name, concat([pool, test], name), c.split_files, root)
        return dataclasses.replace(_carve_valid(name, pool, c.valid_fraction, root, probe.seed), test=test)
    if name == "rsna":
        pool = load_rsna(resolve_path(data_cfg.rsna.root, "data.rsna.root"), ctx.dicom_window())
        if data_cfg.rsna.split_files is not None:
            return _with_committed(name, pool, data_cfg.rsna.split_files, root)
        return _seeded_rsna(pool, data_cfg.rsna.split_fractions, root, probe.seed)
    raise ValueError(f"linear_probe.datasets: unknown data set {name!r}")


def _features(ctx: EvalContext, data: LabelledImages) -> np.ndarray:
    """The configured frozen feature of every image (eval transform, cached for the run)."""
    return ctx.image_features(data, _feature_kind(ctx))


def _feature_kind(ctx: EvalContext) -> str:
    """``backbone`` (trunk pooled) or ``global`` (the projected SIA embedding) for ``linear_probe.feature``."""
    return "backbone" if ctx.cfg.linear_probe.feature == "backbone" else "global"


@dataclass
class ProbeFit:
    """One protocol's result on one label fraction: test-set probabilities and what it chose on valid."""

    test_scores: np.ndarray
    valid_value: float  # the metric on the validation split
    details: dict  # protocol-specific, written to metrics.json


def _fit_clip(ctx: EvalContext, data: ProbeData, train: LabelledImages) -> ProbeFit:
    """L-BFGS logistic regression on cached features, one per L2 strength; the best on valid is kept."""
    probe, task = ctx.cfg.linear_probe, data.train.task
    clf, valid_value, tried = select_and_fit(
        (_features(ctx, train), train.labels), (_features(ctx, data.valid), data.valid.labels),
        task, len(data.train.label_names), probe.weight_decays, probe.max_iter,
    )
    return ProbeFit(clf.scores(_features(ctx, data.test)), valid_value,
                    {"weight_decay_tried": {str(k): v for k, v in tried.items()}})


def _fit_mgca(ctx: EvalContext, data: ProbeData, train: LabelledImages) -> ProbeFit:
    """MGCA's protocol: AdamW on a linear layer over the frozen encoder, early stopping on the validation loss."""
    probe, task = ctx.cfg.linear_probe, data.train.task
    mgca = probe.mgca
    if mgca.augments:
        which = _feature_kind(ctx)
        ctx.model.eval()  # frozen: batch norm statistics and dropout stay as exported
        batches = augmented_batches(lambda x: image_feature(ctx.model, x, which), train.loaders, train.ids,
                                    ctx.transform, mgca, seed=probe.seed, num_workers=ctx.cfg.num_workers,
                                    device=ctx.device)
    else:
        batches = cached_batches(_features(ctx, train), mgca, probe.seed)
    outputs = len(data.train.label_names) if task == "multiclass" else train.labels.shape[1]
    valid_x = _features(ctx, data.valid)
    fit = train_head(batches, train.labels, (valid_x, data.valid.labels), task, outputs, mgca, probe.seed)
    valid_value = float(weighted_probe_metric(fit.scores(valid_x), data.valid.labels, task)[0])
    return ProbeFit(fit.scores(_features(ctx, data.test)), valid_value, {
        "epochs": fit.epochs, "best_epoch": fit.best_epoch, "stopped_early": fit.stopped_early,
        "valid_loss": fit.valid_losses[fit.best_epoch], "augmented": mgca.augments,
    })


PROTOCOLS: dict[str, Callable[[EvalContext, ProbeData, LabelledImages], ProbeFit]] = {
    "clip": _fit_clip, "mgca": _fit_mgca,
}


def run_linear_probe(ctx: EvalContext) -> TaskResult:
    """For each data set and label fraction: fit on the fraction (choices made on valid), score the test split."""
    probe, boot = ctx.cfg.linear_probe, ctx.cfg.bootstrap
    result: dict = {"feature": probe.feature, "protocol": probe.protocol, "datasets": {}}
    table = []
    for name in probe.datasets:
        data = load_probe_data(ctx, name)
        task = data.train.task
        metric = probe_metric_name(task)
        entry = {"metric": metric, "task": task, "labels": data.train.label_names, "split_dir": str(data.split_dir),
                 "committed_splits": None if data.committed is None else str(data.committed),
                 "num_valid": len(data.valid), "num_test": len(data.test), "fractions": {}}
        for fraction in probe.fractions:
            tag = fraction_tag(fraction)
            ids, split_file = fraction_split(data.train.ids, fraction, seed=probe.seed, minimum=probe.min_train,
                                             split_dir=data.split_dir, committed=data.committed)
            started = time.perf_counter()
            fit = PROTOCOLS[probe.protocol](ctx, data, by_ids(data.train, ids))
            value = float(weighted_probe_metric(fit.test_scores, data.test.labels, task)[0])
            low, high = metrics.bootstrap_ci(
                lambda w, s=fit.test_scores, y=data.test.labels, t=task: weighted_probe_metric(s, y, t, w),
                len(data.test), n_boot=boot.n_boot, seed=boot.seed, level=boot.level,
            )
            entry["fractions"][tag] = {
                metric: value, "ci": [float(low), float(high)], "num_train": len(ids), "split_file": str(split_file),
                "valid_" + metric: fit.valid_value, **fit.details, "fit_seconds": time.perf_counter() - started,
            }
            table.append((f"{name} {metric} @ {tag} labels (n={len(ids)}, {probe.protocol} protocol)",
                          *fmt(value, [float(low), float(high)])))
        result["datasets"][name] = entry
    return TaskResult("linear_probe", result, table)
