"""Linear probe on frozen features: label fractions with fixed seeds, split files written once and reused.

The classifier is logistic regression in torch on cached, standardised features (full-batch
L-BFGS): sigmoid + BCE per label for multi-label data (CheXpert-style), one sigmoid for binary
data (RSNA), softmax + cross-entropy for multi-class data (COVIDx). The L2 strength is picked
on the validation split; the metric is reported on the test split only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.eval import metrics
from pipeline.eval.adapters import LabelledImages, load_chexpert, load_covidx, load_rsna
from pipeline.eval.adapters.base import Task
from pipeline.eval.context import EvalContext, TaskResult, fmt, resolve_path

# --------------------------------------------------------------------------- split files


def read_or_write_ids(path: Path, make: callable, known: Sequence[str]) -> list[str]:
    """The ids listed in ``path``; when it does not exist, ``make()`` them and write the file first.

    A reused file must only name known ids (it belongs to this data set).
    """
    path = Path(path)
    if path.is_file():
        ids = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
        unknown = set(ids) - set(known)
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} ids not in the data set (e.g. {sorted(unknown)[:3]})")
        return ids
    ids = list(make())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    tmp.replace(path)
    return ids


def fraction_ids(ids: Sequence[str], fraction: float, seed: int, minimum: int) -> list[str]:
    """A seeded random subset: ``max(round(fraction * n), minimum)`` ids (all of them at 1.0), in data-set order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    count = len(ids) if fraction == 1 else min(len(ids), max(round(fraction * len(ids)), minimum))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(ids))[:count])
    return [ids[i] for i in chosen]


def partition_ids(ids: Sequence[str], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """Split ids into consecutive parts of a seeded permutation with the given fractions (the last takes the rest)."""
    order = np.random.default_rng(seed).permutation(len(ids))
    bounds = np.floor(np.cumsum(fractions)[:-1] * len(ids)).astype(int)
    return [[ids[i] for i in np.sort(part)] for part in np.split(order, bounds)]


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


def _loss(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, task: Task) -> torch.Tensor:
    """Mean cross-entropy of the task; unknown (NaN) multi-label targets are left out."""
    if task == "multiclass":
        return F.cross_entropy(logits, targets.long())
    per = F.binary_cross_entropy_with_logits(logits, torch.where(known, targets, 0.0), reduction="none")
    return (per * known).sum() / known.sum().clamp(min=1)


def fit_linear(
    features: np.ndarray, targets: np.ndarray, task: Task, num_classes: int, weight_decay: float, max_iter: int
) -> LinearClassifier:
    """Fit logistic regression (L2 ``weight_decay`` on the weights) with full-batch L-BFGS in float64."""
    x = torch.from_numpy(features).double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
    x = (x - mean) / std
    if task == "multiclass":
        y = torch.from_numpy(np.asarray(targets)).long()
        known = torch.ones(len(y), 1, dtype=torch.bool)
        outputs = num_classes
    else:
        y = torch.from_numpy(np.asarray(targets, dtype=np.float64))
        known = ~torch.isnan(y)
        outputs = y.shape[1]
    weight = torch.zeros(x.shape[1], outputs, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(outputs, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = _loss(x @ weight + bias, y, known, task) + 0.5 * weight_decay * weight.pow(2).sum()
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
    split_dir: Path


def _split_folder(root: Path, name: str, pool: LabelledImages) -> Path:
    """``root/<name>-<hash of the pool's ids>``: split files are reused only for the very same pool."""
    digest = hashlib.sha1("\n".join(pool.ids).encode("utf-8")).hexdigest()[:10]
    return root / f"{name}-{digest}"


def _by_ids(data: LabelledImages, ids: Sequence[str]) -> LabelledImages:
    """The samples of ``data`` named by ``ids``."""
    position = {sample_id: i for i, sample_id in enumerate(data.ids)}
    return data.subset([position[i] for i in ids])


def _carve_valid(name: str, pool: LabelledImages, fraction: float, root: Path, seed: int) -> ProbeData:
    """Split a labelled pool into train / valid with split files (the test set comes separately)."""
    folder = _split_folder(root, name, pool)
    parts = partition_ids(pool.ids, [1 - fraction, fraction], seed)
    train = read_or_write_ids(folder / "train.txt", lambda: parts[0], pool.ids)
    valid = read_or_write_ids(folder / "valid.txt", lambda: parts[1], pool.ids)
    return ProbeData(name, _by_ids(pool, train), _by_ids(pool, valid), pool, folder)


def load_probe_data(ctx: EvalContext, name: str) -> ProbeData:
    """Train / valid / test of one probe data set, from its adapter and the (written or reused) split files."""
    data_cfg, probe = ctx.cfg.data, ctx.cfg.linear_probe
    root = resolve_path(probe.split_dir, "linear_probe.split_dir")
    if name == "shards":
        shards = data_cfg.shards
        splits = [ctx.shard_split(s) for s in (shards.train_split, shards.valid_split, shards.test_split)]
        columns = [splits[0].label_names.index(n) for n in shards.labels]
        # copies: the cached splits keep all labels for the other tasks
        splits = [dataclasses.replace(p, labels=p.labels[:, columns], label_names=list(shards.labels)) for p in splits]
        return ProbeData(name, *splits, _split_folder(root, name, splits[0]))
    if name == "chexpert":
        c = data_cfg.chexpert
        chexpert_root = resolve_path(c.root, "data.chexpert.root")
        pool = load_chexpert(chexpert_root, "train", c.labels, c.uncertain, c.frontal_only)
        out = _carve_valid(name, pool, c.valid_fraction, root, probe.seed)
        out.test = load_chexpert(chexpert_root, "valid", c.labels, c.uncertain, c.frontal_only)
        return out
    if name == "covidx":
        c = data_cfg.covidx
        covidx_root = resolve_path(c.root, "data.covidx.root")
        out = _carve_valid(name, load_covidx(covidx_root, "train", c.classes), c.valid_fraction, root, probe.seed)
        out.test = load_covidx(covidx_root, "test", c.classes)
        return out
    if name == "rsna":
        fractions = data_cfg.rsna.split_fractions
        if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"data.rsna.split_fractions must be three fractions summing to 1, got {fractions}")
        pool = load_rsna(resolve_path(data_cfg.rsna.root, "data.rsna.root"), ctx.dicom_window())
        folder = _split_folder(root, name, pool)
        parts = partition_ids(pool.ids, fractions, probe.seed)
        sets = [
            _by_ids(pool, read_or_write_ids(folder / f"{split}.txt", lambda part=part: part, pool.ids))
            for split, part in zip(("train", "valid", "test"), parts)
        ]
        return ProbeData(name, *sets, folder)
    raise ValueError(f"linear_probe.datasets: unknown data set {name!r}")


def _features(ctx: EvalContext, data: LabelledImages) -> np.ndarray:
    """The configured frozen feature of every image."""
    return ctx.image_features(data, "backbone" if ctx.cfg.linear_probe.feature == "backbone" else "global")


def run_linear_probe(ctx: EvalContext) -> TaskResult:
    """For each data set and label fraction: fit on the fraction, pick L2 on valid, score the test split."""
    probe, boot = ctx.cfg.linear_probe, ctx.cfg.bootstrap
    result: dict = {"feature": probe.feature, "datasets": {}}
    table = []
    for name in probe.datasets:
        data = load_probe_data(ctx, name)
        task, classes = data.train.task, len(data.train.label_names)
        train_x, valid_x, test_x = (_features(ctx, part) for part in (data.train, data.valid, data.test))
        position = {sample_id: i for i, sample_id in enumerate(data.train.ids)}
        metric = probe_metric_name(task)
        entry = {"metric": metric, "task": task, "labels": data.train.label_names, "split_dir": str(data.split_dir),
                 "num_valid": len(data.valid), "num_test": len(data.test), "fractions": {}}
        for fraction in probe.fractions:
            tag = f"{fraction * 100:g}pct"
            ids = read_or_write_ids(
                data.split_dir / f"train_{tag}_seed{probe.seed}.txt",
                lambda pool=data.train.ids, f=fraction: fraction_ids(pool, f, probe.seed, probe.min_train),
                data.train.ids,
            )
            rows = np.asarray([position[i] for i in ids])
            started = time.perf_counter()
            clf, valid_value, tried = select_and_fit(
                (train_x[rows], data.train.labels[rows]), (valid_x, data.valid.labels),
                task, classes, probe.weight_decays, probe.max_iter,
            )
            scores = clf.scores(test_x)
            value = float(weighted_probe_metric(scores, data.test.labels, task)[0])
            low, high = metrics.bootstrap_ci(
                lambda w, s=scores, y=data.test.labels, t=task: weighted_probe_metric(s, y, t, w),
                len(data.test), n_boot=boot.n_boot, seed=boot.seed, level=boot.level,
            )
            entry["fractions"][tag] = {
                metric: value, "ci": [float(low), float(high)], "num_train": len(ids),
                "valid_" + metric: valid_value, "weight_decay_tried": {str(k): v for k, v in tried.items()},
                "fit_seconds": time.perf_counter() - started,
            }
            table.append((f"{name} {metric} @ {tag} labels (n={len(ids)})", *fmt(value, [float(low), float(high)])))
        result["datasets"][name] = entry
    return TaskResult("linear_probe", result, table)
