"""Zero-shot classification, CheXzero-style: a positive and a negative prompt set per label, AUROC per label.

For each label the positive prompts' text embeddings are averaged (and re-normalised), and the
same for the negative prompts; an image's score is softmax over its two similarities (times the
model's SIA logit scale), i.e. p(positive). AUROC per label and their mean, with percentile
bootstrap 95 % intervals from one shared set of resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from pipeline.eval import metrics
from pipeline.eval.context import EvalContext, TaskResult, fmt, resolve_path


def load_prompts(path: Path, labels: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """``{label: {"positive": [...], "negative": [...]}}`` for ``labels`` from a prompts YAML file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    prompts = data.get("prompts", data)
    out = {}
    for label in labels:
        entry = prompts.get(label)
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: no prompts for label {label!r}")
        pair = {}
        for side in ("positive", "negative"):
            texts = entry.get(side)
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
                raise ValueError(f"{path}: label {label!r} needs a non-empty list of {side} prompts")
            pair[side] = texts
        out[label] = pair
    return out


def class_embedding(prompt_emb: np.ndarray) -> np.ndarray:
    """The mean of L2-normalised prompt embeddings ``[m, D]``, re-normalised to unit length ``[D]``."""
    mean = prompt_emb.astype(np.float64).mean(axis=0)
    return mean / max(np.linalg.norm(mean), 1e-12)


def positive_probability(
    image_emb: np.ndarray, positive: np.ndarray, negative: np.ndarray, logit_scale: float
) -> np.ndarray:
    """``[n, K]`` p(positive) = softmax over (image·pos_k, image·neg_k) × logit_scale, per label k."""
    img = image_emb.astype(np.float64)
    margin = logit_scale * (img @ positive.T - img @ negative.T)
    return 1.0 / (1.0 + np.exp(-margin))


def zero_shot_metrics(
    probabilities: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    n_boot: int,
    seed: int,
    level: float,
) -> dict:
    """Per-label and mean AUROC with bootstrap intervals; labels missing (NaN) are left out per column.

    A label whose evaluation set lacks positives or negatives has AUROC None and is left out of the mean.
    """
    point = metrics.weighted_multilabel_auroc(probabilities, labels)[0]
    defined = ~np.isnan(point)

    def per_label_and_mean(weights: np.ndarray) -> np.ndarray:
        per_label = metrics.weighted_multilabel_auroc(probabilities, labels, weights)
        mean = np.nanmean(per_label[:, defined], axis=1, keepdims=True) if defined.any() else per_label[:, :1] * np.nan
        return np.concatenate([per_label, mean], axis=1)

    low, high = metrics.bootstrap_ci(per_label_and_mean, len(labels), n_boot=n_boot, seed=seed, level=level)
    out = {"per_label": {}, "num_images": int(len(labels))}
    for k, name in enumerate(label_names):
        known = ~np.isnan(labels[:, k])
        out["per_label"][name] = {
            "auroc": None if np.isnan(point[k]) else float(point[k]),
            "ci": None if np.isnan(point[k]) else [float(low[k]), float(high[k])],
            "positives": int((labels[known, k] == 1).sum()),
            "negatives": int((labels[known, k] == 0).sum()),
        }
    mean = float(point[defined].mean()) if defined.any() else None
    out["mean_auroc"] = {
        "auroc": mean,
        "ci": None if mean is None else [float(low[-1]), float(high[-1])],
        "labels": [n for n, d in zip(label_names, defined) if d],
    }
    return out


def run_zero_shot(ctx: EvalContext) -> TaskResult:
    """Zero-shot AUROC on the test split of ``data.shards`` for ``data.shards.labels``."""
    shards = ctx.cfg.data.shards
    data = ctx.shard_split(shards.test_split)
    columns = [data.label_names.index(n) if n in data.label_names else None for n in shards.labels]
    missing = [n for n, c in zip(shards.labels, columns) if c is None]
    if missing:
        raise ValueError(f"data.shards.labels: {missing} are not labels of the shards ({data.label_names})")
    prompts = load_prompts(resolve_path(ctx.cfg.zero_shot.prompts, "zero_shot.prompts"), shards.labels)
    positive, negative = [], []
    for label in shards.labels:
        positive.append(class_embedding(ctx.text_features(prompts[label]["positive"], f"prompts {label}")))
        negative.append(class_embedding(ctx.text_features(prompts[label]["negative"], f"prompts {label}")))
    image_emb = ctx.image_features(data, "global")
    scale = float(ctx.model.logit_scales()["sia"].detach())
    probabilities = positive_probability(image_emb, np.stack(positive), np.stack(negative), scale)
    boot = ctx.cfg.bootstrap
    result = zero_shot_metrics(
        probabilities, data.labels[:, columns], shards.labels, n_boot=boot.n_boot, seed=boot.seed, level=boot.level
    )
    result["split"] = shards.test_split
    table = [("mean AUROC", *fmt(result["mean_auroc"]["auroc"], result["mean_auroc"]["ci"]))]
    for name, entry in result["per_label"].items():
        counts = f"{entry['positives']}+/{entry['negatives']}-"
        table.append((f"AUROC {name} ({counts})", *fmt(entry["auroc"], entry["ci"])))
    return TaskResult("zero_shot", result, table)
