"""Segmentation transfer (MGCA's protocol): frozen encoder, a learned decoder, Dice at each label fraction.

Headline Dice is MGCA's: per image, prediction = probability >= ``segmentation.threshold``,
averaged over test images, an image with empty truth and empty prediction scoring 1. Also
reported: Dice over the test images whose truth is non-empty, and per-image IoU. Masks are
scored at the model's input size. Loss: MGCA's MixedLoss, ``alpha x focal - log(soft Dice)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.eval import metrics
from pipeline.eval.context import EvalContext, TaskResult, fmt
from pipeline.eval.dense_fit import (
    FrozenEncoder,
    augmenter,
    fit_head,
    fraction_subset,
    input_size,
    load_dense_splits,
    predict,
    prepare,
)  # fmt: skip
from pipeline.eval.dense_heads import build_segmentation_head
from pipeline.eval.figures import dense_grid


def mixed_loss(logits: torch.Tensor, masks: torch.Tensor, alpha: float, gamma: float = 2.0) -> torch.Tensor:
    """MGCA's MixedLoss on ``[b, 1, S, S]`` logits: ``alpha`` x mean focal loss - log(batch soft Dice)."""
    target = masks.to(logits.dtype).view_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = logits.sigmoid()
    p_true = torch.where(target > 0.5, prob, 1 - prob)
    focal = ((1 - p_true) ** gamma * bce).mean()
    soft_dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return alpha * focal - torch.log(soft_dice)


def dice_summary(dice: np.ndarray, positive: np.ndarray, iou: np.ndarray, n_boot: int, seed: int, level: float) -> dict:
    """Dice (all images), Dice over positive images and IoU, each with a percentile bootstrap CI over test images."""
    out = {}
    for key, values, rows in (("dice", dice, slice(None)), ("dice_positive", dice, positive), ("iou", iou, slice(None))):
        chosen = values[rows]
        if chosen.size == 0:
            out[key], out[key + "_ci"] = None, None
            continue
        low, high = metrics.bootstrap_ci(lambda w, v=chosen: metrics.weighted_mean(v, w), chosen.size,
                                         n_boot=n_boot, seed=seed, level=level)  # fmt: skip
        out[key], out[key + "_ci"] = float(chosen.mean()), [float(low), float(high)]
    return out


def run_segmentation(ctx: EvalContext) -> TaskResult:
    """For each data set and label fraction: train a decoder on the frozen encoder, score Dice on the test split."""
    seg, dense, boot = ctx.cfg.segmentation, ctx.cfg.dense, ctx.cfg.bootstrap
    size = input_size(ctx)
    encoder = FrozenEncoder(ctx)
    result: dict = {"image_size": size, "threshold": seg.threshold, "augment": dense.augment, "datasets": {}}
    table, figures = [], []

    def loss(head, maps, masks):
        return mixed_loss(head(maps, (size, size)), masks.to(ctx.device), seg.focal_alpha)

    def masks_of(head, maps):
        return list((head(maps, (size, size)).sigmoid()[:, 0] >= seg.threshold).cpu().numpy())

    for name in seg.datasets:
        splits = load_dense_splits(ctx, name)
        valid, test = (prepare(part, size, True, False) for part in (splits.valid, splits.test))
        truth = test.masks.numpy()
        positive = truth.any(axis=(1, 2))
        entry = {"split_dir": str(splits.folder), "num_valid": len(valid), "num_test": len(test),
                 "num_test_positive": int(positive.sum()), "skipped": splits.train.skipped, "fractions": {}}  # fmt: skip
        for fraction in dense.fractions:
            tag = f"{fraction * 100:g}pct"
            subset = fraction_subset(splits, fraction, dense)
            train = prepare(subset, size, True, False)
            torch.manual_seed(dense.seed)  # the head's init: the same whatever ran before this fit
            fitted = fit_head(build_segmentation_head(encoder.encoder, seg.setr_channels), loss, encoder, train, valid, dense,
                              augmenter(dense, rotate=True) if dense.augment else None)  # fmt: skip
            predicted = np.stack(predict(fitted.head, encoder, test, dense.batch_size, masks_of))
            scores = dice_summary(metrics.dice(predicted, truth), positive, metrics.iou(predicted, truth),
                                  boot.n_boot, boot.seed, boot.level)  # fmt: skip
            entry["fractions"][tag] = {**scores, "num_train": len(train),
                                       "num_train_positive": int(train.masks.any(dim=(1, 2)).sum()),
                                       "epochs_run": fitted.epochs_run, "best_valid_loss": fitted.best_valid_loss,
                                       "train_images_per_s": fitted.train_images_per_s}  # fmt: skip
            table.append((f"{name} Dice @ {tag} labels (n={len(train)})", *fmt(scores["dice"], scores["dice_ci"])))
            table.append((f"{name} Dice, positive images @ {tag}", *fmt(scores["dice_positive"],
                                                                         scores["dice_positive_ci"])))  # fmt: skip
            if fraction == dense.fractions[-1]:
                shown = _figure_rows(positive, dense.figure_images)
                figures.append(dense_grid(
                    [{"image": test.images[i, 0].numpy(), "truth": truth[i], "predicted": predicted[i]} for i in shown],
                    ctx.out_dir / "figures" / f"segmentation_{name}.png",
                    f"segmentation, {name} @ {tag} labels: image | truth | prediction"))  # fmt: skip
        result["datasets"][name] = entry
    return TaskResult("segmentation", result, table, figures)


def _figure_rows(positive: np.ndarray, count: int) -> list[int]:
    """Test rows for the figure: positives first, then negatives."""
    order = np.concatenate([np.flatnonzero(positive), np.flatnonzero(~positive)])
    return [int(i) for i in order[:count]]
