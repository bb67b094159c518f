"""Detection transfer (MGCA's protocol): frozen encoder, a YOLOv3-style head, mAP at each label fraction.

mAP is torchmetrics' MeanAveragePrecision (pycocotools backend) averaged over
``detection.iou_thresholds`` (MGCA: 0.40:0.05:0.75), on boxes scored >= ``detection.confidence``
after NMS at ``detection.nms_iou``. Test images without a true box are left out of the mAP, as
MGCA does. The 95 % CI resamples the scored images ``detection.n_boot`` times (a full mAP each).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

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
from pipeline.eval.dense_heads import build_detection_neck
from pipeline.eval.figures import dense_grid
from pipeline.eval.yolo import YoloHead, decode, yolo_loss


class Detector(nn.Module):
    """The neck (simple feature pyramid or last CNN stages) and the YOLO head on the frozen maps."""

    def __init__(self, neck: nn.Module, width: int = 256, objectness_prior: float | None = None) -> None:
        super().__init__()
        self.neck, self.head = neck, YoloHead(neck.channels, width=width, objectness_prior=objectness_prior)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw YOLO outputs per level."""
        return self.head(self.neck(maps))


def mean_average_precision(
    predicted: list[tuple[torch.Tensor, torch.Tensor]], truth: list[torch.Tensor], iou_thresholds: list[float]
) -> float:
    """torchmetrics' box mAP (one class) over ``iou_thresholds``; images are taken as given (callers drop empty truths)."""
    metric = MeanAveragePrecision(iou_type="bbox", iou_thresholds=list(iou_thresholds), backend="pycocotools")
    metric.update(
        [{"boxes": b.float(), "scores": s.float(), "labels": torch.zeros(len(b), dtype=torch.long)} for b, s in predicted],
        [{"boxes": t.float(), "labels": torch.zeros(len(t), dtype=torch.long)} for t in truth],
    )
    return float(metric.compute()["map"])


def bootstrap_map(predicted: list, truth: list, iou_thresholds: list[float], n_boot: int, seed: int,
                  level: float) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap interval of the mAP over images (``n_boot`` full mAP computations)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):  # each replicate is a whole mAP computation by the library
        rows = rng.integers(0, len(truth), len(truth))
        values.append(mean_average_precision([predicted[i] for i in rows], [truth[i] for i in rows], iou_thresholds))
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def run_detection(ctx: EvalContext) -> TaskResult:
    """For each data set and label fraction: train the head on the frozen encoder, score mAP on the test split."""
    det, dense, boot = ctx.cfg.detection, ctx.cfg.dense, ctx.cfg.bootstrap
    size = input_size(ctx)
    encoder = FrozenEncoder(ctx)
    result: dict = {"image_size": size, "iou_thresholds": list(det.iou_thresholds), "confidence": det.confidence,
                    "nms_iou": det.nms_iou, "n_boot": det.n_boot, "augment": dense.augment, "datasets": {}}  # fmt: skip
    table, figures = [], []

    def loss(head, maps, boxes):
        return yolo_loss(head(maps), boxes, size)

    def boxes_of(head, maps):
        return [(b.cpu(), s.cpu()) for b, s in decode(head(maps), size, det.confidence, det.nms_iou)]

    for name in det.datasets:
        splits = load_dense_splits(ctx, name)
        valid, test = (prepare(part, size, False, True) for part in (splits.valid, splits.test))
        scored = [i for i, b in enumerate(test.boxes) if len(b)]
        entry = {"split_dir": str(splits.folder), "num_valid": len(valid), "num_test": len(test),
                 "num_test_with_boxes": len(scored), "skipped": {**splits.train.skipped}, "fractions": {}}  # fmt: skip
        for fraction in dense.fractions:
            tag = f"{fraction * 100:g}pct"
            train = prepare(fraction_subset(splits, fraction, dense), size, False, True)
            torch.manual_seed(dense.seed)  # the head's init: the same whatever ran before this fit
            fitted = fit_head(Detector(build_detection_neck(encoder.encoder), objectness_prior=det.objectness_prior), loss, encoder, train, valid, dense,
                              augmenter(dense, rotate=False) if dense.augment else None)  # fmt: skip
            predicted = predict(fitted.head, encoder, test, dense.batch_size, boxes_of)
            kept_pred, kept_truth = [predicted[i] for i in scored], [test.boxes[i] for i in scored]
            value = mean_average_precision(kept_pred, kept_truth, det.iou_thresholds) if scored else None
            ci = bootstrap_map(kept_pred, kept_truth, det.iou_thresholds, det.n_boot, boot.seed, boot.level) \
                if scored else None  # fmt: skip
            entry["fractions"][tag] = {"map": value, "map_ci": None if ci is None else list(ci), "num_train": len(train),
                                       "num_train_with_boxes": sum(len(b) > 0 for b in train.boxes),
                                       "epochs_run": fitted.epochs_run, "best_valid_loss": fitted.best_valid_loss,
                                       "train_images_per_s": fitted.train_images_per_s}  # fmt: skip
            table.append((f"{name} mAP @ {tag} labels (n={len(train)})", *fmt(value, None if ci is None else list(ci))))
            if fraction == dense.fractions[-1]:
                with_boxes = set(scored)  # images with true boxes first, then the others
                shown = (scored + [i for i in range(len(test)) if i not in with_boxes])[: dense.figure_images]
                figures.append(dense_grid(
                    [{"image": test.images[i, 0].numpy(), "truth": test.boxes[i].numpy(),
                      "predicted": predicted[i][0].numpy()} for i in shown],
                    ctx.out_dir / "figures" / f"detection_{name}.png",
                    f"detection, {name} @ {tag} labels: image | truth | prediction"))  # fmt: skip
        result["datasets"][name] = entry
    return TaskResult("detection", result, table, figures)
