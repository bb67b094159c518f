"""What segmentation and detection share: their splits and label fractions, the prepared tensors, and the fit.

Splits are files written once and reused (as the linear probe's): a data set's pool hash names
the folder, ``train_<pct>pct_seed<S>.txt`` each label fraction. Images are resized to a square
input (boxes and masks with them) and normalised as in pre-training. The encoder stays frozen:
with ``dense.augment`` (MGCA's way) each training batch is augmented and sent through it again;
without, its feature maps are computed once per image and cached. Early stopping watches the
validation loss and keeps the best head.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from torch import nn
from torchvision import tv_tensors

from pipeline.eval.adapters import DenseImages, load_object_cxr, load_rsna_boxes, load_siim
from pipeline.eval.config import DenseTrainConfig
from pipeline.eval.context import EvalContext, resolve_path
from pipeline.eval.dense_heads import encoder_maps
from pipeline.eval.splits import fraction_ids, partition_ids, read_or_write_ids, split_folder

log = logging.getLogger(__name__)


@dataclass
class DenseSplits:
    """A data set's training pool, validation and test sets, and the folder of its split files."""

    name: str
    train: DenseImages
    valid: DenseImages
    test: DenseImages
    folder: object


def _written(folder, split: str, ids: list[str], pool: DenseImages) -> DenseImages:
    """``pool`` restricted to the ids of ``folder/<split>.txt`` (written from ``ids`` on first use)."""
    return pool.by_ids(read_or_write_ids(folder / f"{split}.txt", lambda: ids, pool.ids))


def _three_way(name: str, pool: DenseImages, parts: list[list[str]], root) -> DenseSplits:
    """Train / valid / test of one labelled pool from its partition (split files written once)."""
    folder = split_folder(root, f"{name}-dense", pool)
    sets = [_written(folder, split, part, pool) for split, part in zip(("train", "valid", "test"), parts)]
    return DenseSplits(name, *sets, folder)


def balanced_ids(data: DenseImages, seed: int) -> list[str]:
    """All positive images and as many seeded-random negatives (MGCA's SIIM training set), in data-set order."""
    positive = data.positive
    negatives = np.flatnonzero(~positive)
    chosen = np.random.default_rng(seed).permutation(negatives)[: int(positive.sum())]
    keep = np.sort(np.concatenate([np.flatnonzero(positive), chosen]))
    return [data.ids[i] for i in keep]


def load_dense_splits(ctx: EvalContext, name: str) -> DenseSplits:
    """Train / valid / test of ``siim``, ``rsna`` or ``object_cxr`` from its adapter and the split files."""
    data, dense = ctx.cfg.data, ctx.cfg.dense
    root = resolve_path(dense.split_dir, "dense.split_dir")
    if name == "siim":
        pool = load_siim(resolve_path(data.siim.root, "data.siim.root"), ctx.dicom_window())
        out = _three_way(name, pool, partition_ids(pool.ids, data.siim.split_fractions, dense.seed), root)
        if data.siim.balance_train:
            out.train = _written(out.folder, f"train_balanced_seed{dense.seed}", balanced_ids(out.train, dense.seed),
                                 out.train)  # fmt: skip
        return out
    if name == "rsna":
        pool = load_rsna_boxes(resolve_path(data.rsna.root, "data.rsna.root"), ctx.dicom_window())
        if data.rsna.dense_split == "mgca":
            n_valid, n_test = data.rsna.mgca_split_sizes
            if n_valid + n_test >= len(pool):
                raise ValueError(f"data.rsna.mgca_split_sizes {n_valid}+{n_test} leave no training images "
                                 f"in a pool of {len(pool)}")  # fmt: skip
            order = np.random.default_rng(dense.seed).permutation(len(pool))
            cut = [order[n_valid + n_test :], order[:n_valid], order[n_valid : n_valid + n_test]]
            parts = [[pool.ids[i] for i in np.sort(part)] for part in cut]
            return _three_way("rsna-mgca", pool, parts, root)
        return _three_way(name, pool, partition_ids(pool.ids, data.rsna.split_fractions, dense.seed), root)
    if name == "object_cxr":
        base = resolve_path(data.object_cxr.root, "data.object_cxr.root")
        pool = load_object_cxr(base, "train")
        train, valid = partition_ids(pool.ids, [1 - data.object_cxr.valid_fraction, data.object_cxr.valid_fraction],
                                     dense.seed)  # fmt: skip
        folder = split_folder(root, "object_cxr-dense", pool)
        return DenseSplits(name, _written(folder, "train", train, pool), _written(folder, "valid", valid, pool),
                           load_object_cxr(base, "dev"), folder)  # fmt: skip
    raise ValueError(f"unknown segmentation/detection data set {name!r}")


def fraction_subset(splits: DenseSplits, fraction: float, dense: DenseTrainConfig) -> DenseImages:
    """The training images of one label fraction (``train_<pct>pct_seed<S>.txt``, written once)."""
    tag = f"{fraction * 100:g}pct"
    ids = read_or_write_ids(splits.folder / f"train_{tag}_seed{dense.seed}.txt",
                            lambda: fraction_ids(splits.train.ids, fraction, dense.seed, dense.min_train),
                            splits.train.ids)  # fmt: skip
    return splits.train.by_ids(ids)


# --------------------------------------------------------------------------- tensors


@dataclass
class Prepared:
    """A split as tensors at the input size: images ``[n, 1, S, S]`` in [0, 1], masks ``[n, S, S]``, boxes."""

    ids: list[str]
    images: torch.Tensor
    masks: torch.Tensor | None
    boxes: list[torch.Tensor] | None

    def __len__(self) -> int:
        return len(self.ids)


def prepare(data: DenseImages, size: int, with_masks: bool, with_boxes: bool) -> Prepared:
    """Read and resize every image (and its mask / boxes) of a split to ``size`` x ``size``."""
    images, masks, boxes = [], [], []
    for i, loader in enumerate(data.loaders):
        image = loader()
        rows, cols = image.shape[-2:]
        if (rows, cols) != tuple(data.sizes[i]):
            raise ValueError(f"{data.name}: image {data.ids[i]} is {rows} x {cols}, its labels are for {data.sizes[i]}")
        images.append(F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0])
        if with_masks:
            mask = torch.from_numpy(data.masks[i]())
            if tuple(mask.shape) != (rows, cols):
                raise ValueError(f"{data.name}: mask of {data.ids[i]} is {tuple(mask.shape)}, image {rows} x {cols}")
            masks.append(F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0.5)
        if with_boxes:
            scale = torch.tensor([size / cols, size / rows, size / cols, size / rows], dtype=torch.float32)
            boxes.append(torch.from_numpy(data.boxes[i]).float().reshape(-1, 4) * scale)
    return Prepared(list(data.ids), torch.stack(images).clamp(0, 1),
                    torch.stack(masks) if with_masks else None, boxes if with_boxes else None)  # fmt: skip


def augmenter(dense: DenseTrainConfig, rotate: bool) -> T.Transform:
    """MGCA-style random affine applied jointly to an image, its mask and its boxes."""
    return T.RandomAffine(degrees=dense.rotate_degrees if rotate else 0.0, translate=(dense.translate,) * 2,
                          scale=tuple(dense.scale))  # fmt: skip


def augment_batch(prepared: Prepared, rows: list[int], transform: T.Transform) -> tuple[torch.Tensor, object]:
    """Augmented images ``[b, 1, S, S]`` and their masks (tensor) or boxes (list), one draw per image."""
    size = prepared.images.shape[-1]
    images, targets = [], []
    for i in rows:  # torchvision's joint transforms work per sample
        parts = [tv_tensors.Image(prepared.images[i].float())]
        if prepared.masks is not None:
            parts.append(tv_tensors.Mask(prepared.masks[i].to(torch.uint8)))
        else:
            parts.append(tv_tensors.BoundingBoxes(prepared.boxes[i], format="XYXY", canvas_size=(size, size)))
        image, target = transform(*parts)
        images.append(image.as_subclass(torch.Tensor))
        if prepared.masks is not None:
            targets.append(target.as_subclass(torch.Tensor).bool())
        else:
            box = target.as_subclass(torch.Tensor)
            targets.append(box[(box[:, 2] - box[:, 0] >= 1) & (box[:, 3] - box[:, 1] >= 1)])
    return torch.stack(images), torch.stack(targets) if prepared.masks is not None else targets


def batch_targets(prepared: Prepared, rows: list[int]) -> object:
    """Masks ``[b, S, S]`` or the list of box tensors of ``rows`` (no augmentation)."""
    return prepared.masks[rows] if prepared.masks is not None else [prepared.boxes[i] for i in rows]


# --------------------------------------------------------------------------- the frozen encoder and the fit


class FrozenEncoder:
    """The pre-trained image encoder in eval mode without gradients, fed normalised images."""

    def __init__(self, ctx: EvalContext) -> None:
        self.encoder, self.transform, self.device = ctx.model.image_encoder.eval(), ctx.transform, ctx.device
        self.encoder.requires_grad_(False)

    @torch.no_grad()
    def maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of ``[b, 1, S, S]`` images in [0, 1]."""
        x = ((images.to(self.device).float() - self.transform.mean) / self.transform.std)
        return encoder_maps(self.encoder, x.expand(-1, self.encoder.cfg.in_chans, -1, -1))

    def cached(self, images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
        """Feature maps of every image, computed once (CPU tensors, one per level)."""
        chunks = [self.maps(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return [torch.cat([c[level].cpu() for c in chunks]) for level in range(len(chunks[0]))]


@dataclass
class FitResult:
    """The head with the lowest validation loss, the epochs run and the training speed."""

    head: nn.Module
    best_valid_loss: float
    epochs_run: int
    train_images_per_s: float


def fit_head(
    head: nn.Module,
    loss_fn: Callable[[nn.Module, list[torch.Tensor], object], torch.Tensor],
    encoder: FrozenEncoder,
    train: Prepared,
    valid: Prepared,
    dense: DenseTrainConfig,
    transform: T.Transform | None,
) -> FitResult:
    """AdamW on the head only; ``transform`` None = cached features; early stopping on the validation loss."""
    torch.manual_seed(dense.seed)  # the augmentation draws and the batch order
    head = head.to(encoder.device)
    optimiser = torch.optim.AdamW(head.parameters(), lr=dense.learning_rate, weight_decay=dense.weight_decay)
    train_maps = None if transform is not None else encoder.cached(train.images, dense.batch_size)
    valid_maps = encoder.cached(valid.images, dense.batch_size)
    best, best_loss, stale, epochs, seen, seconds = copy.deepcopy(head.state_dict()), math.inf, 0, 0, 0, 0.0
    for epoch in range(max_epochs(dense, len(train))):
        head.train()
        started = time.perf_counter()
        order = torch.randperm(len(train)).tolist()
        for start in range(0, len(order), dense.batch_size):
            rows = order[start : start + dense.batch_size]
            if len(rows) < 2 and len(order) > 1:
                continue  # BatchNorm needs two samples
            if transform is None:
                maps = [level[rows].to(encoder.device) for level in train_maps]
                targets = batch_targets(train, rows)
            else:
                images, targets = augment_batch(train, rows, transform)
                maps = encoder.maps(images)
            loss = loss_fn(head, maps, targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            seen += len(rows)
        seconds += time.perf_counter() - started
        epochs = epoch + 1
        valid_loss = evaluate_loss(head, loss_fn, valid_maps, valid, dense.batch_size, encoder.device)
        log.info("epoch %d: validation loss %.4f", epochs, valid_loss)
        if valid_loss < best_loss:
            best, best_loss, stale = copy.deepcopy(head.state_dict()), valid_loss, 0
        else:
            stale += 1
            if stale >= dense.patience:
                break
    head.load_state_dict(best)
    return FitResult(head.eval(), best_loss, epochs, seen / max(seconds, 1e-9))


def max_epochs(dense: DenseTrainConfig, num_train: int) -> int:
    """``dense.epochs``, or more when that is fewer than ``dense.min_steps`` optimizer steps on ``num_train`` images."""
    per_epoch = max(1, math.ceil(num_train / dense.batch_size))
    return max(dense.epochs, math.ceil(dense.min_steps / per_epoch))


@torch.no_grad()
def evaluate_loss(head: nn.Module, loss_fn, maps: list[torch.Tensor], data: Prepared, batch_size: int, device) -> float:
    """Mean loss per batch over a split with cached maps (the head in eval mode)."""
    head.eval()
    losses = []
    for start in range(0, len(data), batch_size):
        rows = list(range(start, min(start + batch_size, len(data))))
        losses.append(float(loss_fn(head, [m[rows].to(device) for m in maps], batch_targets(data, rows))))
    return float(np.mean(losses)) if losses else math.inf


@torch.no_grad()
def predict(head: nn.Module, encoder: FrozenEncoder, data: Prepared, batch_size: int, fn: Callable) -> list:
    """``fn(head, maps)`` per test batch (no augmentation), results concatenated as a list per image."""
    head.eval()
    out = []
    for start in range(0, len(data), batch_size):
        out.extend(fn(head, encoder.maps(data.images[start : start + batch_size])))
    return out


def input_size(ctx: EvalContext) -> int:
    """``dense.image_size``, else the pre-training transform's image size."""
    return ctx.cfg.dense.image_size or ctx.transform.image_size
