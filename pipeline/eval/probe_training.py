"""MGCA's linear probe: a linear layer trained by AdamW on a frozen image encoder, augmentation, early stopping.

Every epoch the training images are augmented (MGCA's ``DataTransforms``: short side resized, a
random crop; optionally a horizontal flip and brightness/contrast jitter as in its CheXpert
``Moco2Transform``), encoded by the frozen encoder, and the layer takes AdamW steps on shuffled
mini-batches. After each epoch the loss on the validation features (eval transform, computed once)
decides early stopping, and the layer of the epoch with the lowest validation loss is kept: MGCA
tests its best ``val_loss`` checkpoint. Without augmentation the training features are computed once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.data.transforms import TransformConfig, normalise, sample_generator
from pipeline.eval.adapters.base import ImageLoader, Task
from pipeline.eval.config import MgcaProbeConfig

# yields (features [b, F], row indices [b] into the training targets) for one epoch
EpochBatches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def probe_targets(labels: np.ndarray, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets as a tensor and which of them are known: class indices (multi-class) or ``[n, K]`` 0/1 with NaN unknown."""
    if task == "multiclass":
        targets = torch.from_numpy(np.asarray(labels)).long()
        return targets, torch.ones(len(targets), 1, dtype=torch.bool)
    targets = torch.from_numpy(np.asarray(labels, dtype=np.float64))
    return targets, ~torch.isnan(targets)


def probe_loss(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, task: Task) -> torch.Tensor:
    """Mean cross-entropy of the task; unknown (NaN) multi-label targets are left out."""
    if task == "multiclass":
        return F.cross_entropy(logits, targets.long())
    targets = targets.to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits, torch.where(known, targets, 0.0), reduction="none")
    return (per * known).sum() / known.sum().clamp(min=1)


def probe_probabilities(logits: torch.Tensor, task: Task) -> np.ndarray:
    """``[n, C]`` softmax for multi-class, ``[n, K]`` sigmoid otherwise, float64."""
    probs = torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)
    return probs.double().numpy()


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs whose validation loss is not below the best by more than ``min_delta``."""

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = -1
    waited: int = 0

    def update(self, epoch: int, loss: float) -> bool:
        """Record one epoch's validation loss; True when training should stop."""
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.waited = loss, epoch, 0
        else:
            self.waited += 1
        return self.waited >= self.patience


@dataclass
class HeadFit:
    """The kept linear layer and how its training went."""

    head: nn.Module
    task: Task
    best_epoch: int  # 0-based epoch with the lowest validation loss (its layer is kept)
    epochs: int  # epochs trained
    stopped_early: bool
    valid_losses: list[float] = field(default_factory=list)

    @torch.no_grad()
    def scores(self, features: np.ndarray) -> np.ndarray:
        """Probabilities of the kept layer on cached features (dropout off)."""
        return probe_probabilities(self.head.eval()(torch.as_tensor(features, dtype=torch.float32)), self.task)


def train_head(
    epoch_batches: EpochBatches,
    train_labels: np.ndarray,
    valid: tuple[np.ndarray, np.ndarray],
    task: Task,
    num_outputs: int,
    cfg: MgcaProbeConfig,
    seed: int,
) -> HeadFit:
    """AdamW on a dropout + linear layer over ``epoch_batches(epoch)``; early stopping on the validation loss."""
    train_y, train_known = probe_targets(train_labels, task)
    valid_x = torch.as_tensor(valid[0], dtype=torch.float32)
    valid_y, valid_known = probe_targets(valid[1], task)
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(valid_x.shape[1], num_outputs))
    optimiser = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    stopper = EarlyStopping(cfg.patience, cfg.min_delta)
    best_state, losses, stopped = copy.deepcopy(head.state_dict()), [], False
    with torch.inference_mode(False), torch.enable_grad():  # callers may run under inference mode
        for epoch in range(cfg.max_epochs):
            head.train()
            for features, rows in epoch_batches(epoch):
                loss = probe_loss(head(features.float()), train_y[rows], train_known[rows], task)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            with torch.no_grad():
                losses.append(float(probe_loss(head.eval()(valid_x), valid_y, valid_known, task)))
            stop = stopper.update(epoch, losses[-1])
            if stopper.best_epoch == epoch:
                best_state = copy.deepcopy(head.state_dict())
            if stop:
                stopped = epoch + 1 < cfg.max_epochs
                break
    head.load_state_dict(best_state)
    return HeadFit(head.eval(), task, stopper.best_epoch, len(losses), stopped, losses)


# --------------------------------------------------------------------------- training batches


def augment(image: torch.Tensor, transform: TransformConfig, cfg: MgcaProbeConfig, gen: torch.Generator) -> torch.Tensor:
    """Short side to ``resize_size``, random (else centre) ``image_size`` crop, flip, jitter, normalise: [1,H,W] -> [C,S,S]."""
    image = TF.resize(image, [transform.resize_size], antialias=True)
    size = transform.image_size
    if cfg.random_crop:
        _, height, width = image.shape
        if min(height, width) < size:
            raise ValueError(f"transform.resize_size={transform.resize_size} is below image_size={size}: nothing to crop")
        top = int(torch.randint(0, height - size + 1, (), generator=gen))
        left = int(torch.randint(0, width - size + 1, (), generator=gen))
        image = TF.crop(image, top, left, size, size)
    else:
        image = TF.center_crop(image, [size, size])
    if cfg.hflip > 0 and float(torch.rand((), generator=gen)) < cfg.hflip:
        image = TF.horizontal_flip(image)
    if cfg.jitter > 0:
        low, high = 1 - cfg.jitter, 1 + cfg.jitter
        image = TF.adjust_brightness(image, low + (high - low) * float(torch.rand((), generator=gen)))
        image = TF.adjust_contrast(image, low + (high - low) * float(torch.rand((), generator=gen)))
    return normalise(image.clamp(0.0, 1.0), transform).expand(transform.channels, -1, -1).contiguous()


class _AugmentedImages(Dataset):
    """Training images of one epoch, each augmented by a generator seeded with (seed, epoch, sample id)."""

    def __init__(self, loaders: Sequence[ImageLoader], ids: Sequence[str], transform: TransformConfig,
                 cfg: MgcaProbeConfig, seed: int, epoch: int) -> None:
        self.loaders, self.ids, self.transform, self.cfg, self.seed, self.epoch = loaders, ids, transform, cfg, seed, epoch

    def __len__(self) -> int:
        return len(self.loaders)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        gen = sample_generator(self.seed, self.epoch, self.ids[index])
        return augment(self.loaders[index](), self.transform, self.cfg, gen), index


def _epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The seeded shuffle of one epoch."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def augmented_batches(
    encode: Callable[[torch.Tensor], torch.Tensor],
    loaders: Sequence[ImageLoader],
    ids: Sequence[str],
    transform: TransformConfig,
    cfg: MgcaProbeConfig,
    *,
    seed: int,
    num_workers: int,
    device: torch.device,
) -> EpochBatches:
    """Per epoch: shuffled mini-batches of augmented images through the frozen ``encode`` (no gradient)."""

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images = _AugmentedImages(loaders, ids, transform, cfg, seed, epoch)
        loader = DataLoader(images, batch_size=cfg.batch_size, sampler=_epoch_order(len(images), seed, epoch),
                            num_workers=num_workers)
        for pixels, rows in loader:
            with torch.no_grad():  # left before the yield: the caller's step needs gradients
                features = encode(pixels.to(device)).float().cpu()
            yield features, rows

    return batches


def cached_batches(features: np.ndarray, cfg: MgcaProbeConfig, seed: int) -> EpochBatches:
    """Per epoch: shuffled mini-batches of features computed once (training without augmentation)."""
    table = torch.as_tensor(features, dtype=torch.float32)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(_epoch_order(len(table), seed, epoch))
        for rows in order.split(cfg.batch_size):
            yield table[rows], rows

    return batches
