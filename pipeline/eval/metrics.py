"""Evaluation metrics, vectorised in NumPy float64: AUROC, bootstrap CIs, Recall@K, pointing game, IoU.

Every metric that the bootstrap resamples is written as a *weighted* statistic: a bootstrap
replicate is a vector of multiplicities (how often each sample was drawn), so R replicates are
one ``[R, n]`` weight matrix and one vectorised call, with no loop over replicates or samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np


def _as_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """``weights`` as a float64 ``[R, n]`` matrix (one row of ones when None)."""
    if weights is None:
        return np.ones((1, n), dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[None]
    if weights.shape[1] != n:
        raise ValueError(f"weights have {weights.shape[1]} columns, expected {n} samples")
    return weights


# --------------------------------------------------------------------------- AUROC


def weighted_auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """AUROC of one score column for each row of sample weights; returns ``[R]`` (NaN if one class is empty).

    This is the Mann–Whitney statistic: the probability that a positive scores higher than a
    negative, ties counting one half. With unit weights it equals the trapezoidal ROC area.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("AUROC labels must be 0 or 1 (drop or map uncertain/missing labels first)")
    weights = _as_weights(weights, scores.size)
    # Group equal scores: within a group positives beat negatives of lower groups and tie with their own.
    _, group = np.unique(scores, return_inverse=True)
    n_groups = group.max() + 1 if group.size else 0
    pos = labels.astype(bool)
    pos_w = np.zeros((weights.shape[0], n_groups))
    neg_w = np.zeros((weights.shape[0], n_groups))
    np.add.at(pos_w.T, group[pos], weights[:, pos].T)
    np.add.at(neg_w.T, group[~pos], weights[:, ~pos].T)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    wins = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    total = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / np.where(total > 0, total, 1.0), np.nan)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of one score column against 0/1 labels (ties count one half); NaN if one class is empty."""
    return float(weighted_auroc(scores, labels)[0])


def weighted_multilabel_auroc(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Per-label AUROC ``[R, K]`` for scores/labels ``[n, K]``; labels NaN (missing) are left out of their column."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [n, K]")
    weights = _as_weights(weights, scores.shape[0])
    columns = []
    for k in range(scores.shape[1]):  # a loop over labels (a handful), not over samples
        known = ~np.isnan(labels[:, k])
        columns.append(weighted_auroc(scores[known, k], labels[known, k], weights[:, known]))
    return np.stack(columns, axis=1)


# --------------------------------------------------------------------------- bootstrap


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` multiplicities of ``n_boot`` resamples with replacement of ``n`` samples (fixed seed)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    flat = draws + (np.arange(n_boot) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of a weighted statistic; returns (low, high) with the statistic's trailing shape.

    ``statistic(weights[R, n])`` returns ``[R, ...]``; replicates where it is NaN (e.g. a
    resample without positives) are left out of the percentiles.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    values = np.asarray(statistic(bootstrap_weights(n, n_boot, seed)), dtype=np.float64)
    tail = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN bounds
        low = np.nanquantile(values, tail, axis=0)
        high = np.nanquantile(values, 1.0 - tail, axis=0)
    return low, high


# --------------------------------------------------------------------------- retrieval


def retrieval_hits(similarity: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """``[n_queries, len(ks)]`` booleans: does a relevant candidate rank within the top K of each query?

    ``similarity[q, c]`` scores candidate c for query q; ``relevant[q, c]`` marks the relevant
    ones. The rank of a query's best relevant candidate is one plus the number of *irrelevant*
    candidates scoring at least as high (ties count against the model, so a constant scorer
    gets no credit). A query without any relevant candidate is an error.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if similarity.shape != relevant.shape:
        raise ValueError(f"similarity {similarity.shape} and relevance {relevant.shape} differ")
    if not relevant.any(axis=1).all():
        raise ValueError(f"query {int(np.argmin(relevant.any(axis=1)))} has no relevant candidate")
    best_relevant = np.where(relevant, similarity, -np.inf).max(axis=1, keepdims=True)
    rank = 1 + ((similarity >= best_relevant) & ~relevant).sum(axis=1)
    return rank[:, None] <= np.asarray(ks)[None, :]


def recall_at_k(similarity: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """Recall@K for each K: the fraction of queries with a relevant candidate in their top K."""
    hits = retrieval_hits(similarity, relevant, ks)
    return {k: float(v) for k, v in zip(ks, hits.mean(axis=0))}


def same_label_set(query_labels: np.ndarray, candidate_labels: np.ndarray) -> np.ndarray:
    """``[n_q, n_c]`` relevance: True where the two binary label vectors are equal (NaN counts as 0)."""
    q = np.nan_to_num(np.asarray(query_labels, dtype=np.float64)) > 0.5
    c = np.nan_to_num(np.asarray(candidate_labels, dtype=np.float64)) > 0.5
    return (q[:, None, :] == c[None, :, :]).all(axis=2)


# --------------------------------------------------------------------------- localisation


def pointing_hits(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``[N]`` booleans: does each map's maximum (the first one in row-major order) fall inside its mask?

    ``heatmaps`` and ``masks`` are ``[N, H, W]`` at the same resolution. Taking the first maximum
    makes a flat map point at the top-left pixel, so a map without information scores at most the
    chance of that corner being in the mask.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if heatmaps.shape != masks.shape or heatmaps.ndim != 3:
        raise ValueError(f"heat maps {heatmaps.shape} and masks {masks.shape} must both be [N, H, W]")
    peak = heatmaps.reshape(len(masks), -1).argmax(axis=1)
    return masks.reshape(len(masks), -1)[np.arange(len(masks)), peak]


def threshold_maps(heatmaps: np.ndarray, threshold: float) -> np.ndarray:
    """Binary masks ``[N, H, W]``: each map min–max normalised to [0, 1], then ``>= threshold``.

    A flat map (max == min) gives an empty mask.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    flat = heatmaps.reshape(len(heatmaps), -1)
    low = flat.min(axis=1)[:, None, None]
    span = (flat.max(axis=1) - flat.min(axis=1))[:, None, None]
    normalised = np.where(span > 0, (heatmaps - low) / np.where(span > 0, span, 1.0), 0.0)
    return (normalised >= threshold) & (span > 0)


def iou(predicted: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``[N]`` intersection over union of boolean ``[N, H, W]`` masks; 1.0 where both are empty."""
    predicted = np.asarray(predicted, dtype=bool)
    masks = np.asarray(masks, dtype=bool)
    if predicted.shape != masks.shape:
        raise ValueError(f"predicted {predicted.shape} and masks {masks.shape} differ")
    inter = (predicted & masks).reshape(len(masks), -1).sum(axis=1)
    union = (predicted | masks).reshape(len(masks), -1).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


# --------------------------------------------------------------------------- classification


def weighted_accuracy(
    predictions: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Accuracy ``[R]`` of class predictions against integer targets for each row of sample weights."""
    correct = (np.asarray(predictions) == np.asarray(targets)).astype(np.float64)
    weights = _as_weights(weights, correct.size)
    return (weights * correct).sum(axis=1) / weights.sum(axis=1)


def accuracy(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of class predictions equal to the integer targets."""
    return float(weighted_accuracy(predictions, targets)[0])


def weighted_mean(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean ``[R]`` of per-sample values (e.g. retrieval hits) for each row of weights."""
    values = np.asarray(values, dtype=np.float64).ravel()
    weights = _as_weights(weights, values.size)
    return (weights * values).sum(axis=1) / weights.sum(axis=1)


def dice(predicted: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``[N]`` Dice of boolean ``[N, H, W]`` masks, per image; 1.0 where both are empty (MGCA's convention)."""
    predicted, masks = predicted.astype(bool), masks.astype(bool)
    overlap = (predicted & masks).sum(axis=(1, 2)).astype(np.float64)
    total = predicted.sum(axis=(1, 2)).astype(np.float64) + masks.sum(axis=(1, 2))
    return np.where(total == 0, 1.0, 2 * overlap / np.maximum(total, 1))
