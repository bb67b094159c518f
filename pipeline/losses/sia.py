"""SIA: semantics-aware instance alignment, a CLIP InfoNCE that stops punishing false negatives.

Each rank scores its own B rows (images for image→text, reports for text→image) against all N
gathered columns, so memory is O(B·N). The inter-report similarity R (B × N, no gradient) comes
from precomputed report embeddings, the detached text embeddings, or CheXpert label vectors, and
decides which columns of a row are false negatives (``R_ij ≥ κ``, ``j`` not the paired column):

* ``eliminate``: false negatives leave the softmax denominator;
* ``multi_positive``: they become extra positives, each scored against the true negatives only;
* ``soft``: the target is ``α·onehot + (1 − α)·softmax(R_i / τ_t)``;
* ``none``: plain symmetric InfoNCE (the ``clip`` preset; R is not computed).

See docs/method.md for the equations and defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.losses.distributed import (
    RowLayout,
    all_reduce_sum_no_grad,
    gather_no_grad,
    gather_with_grad,
    row_layout,
)

SIA_MODES = ("eliminate", "multi_positive", "soft", "none")
SIMILARITY_SOURCES = ("precomputed", "online", "labels")
# Keeps the centring denominator (1 − o) away from zero when every report looks alike.
_MIN_CENTER_SPAN = 1e-3

CenterOffset = Callable[[torch.Tensor], torch.Tensor]
# (detector's false-negative mask, paired mask), both local rows × N → the mask SIA uses.
MaskOverride = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SiaTerms:
    """SIA's loss for this rank and what the dashboards need about it."""

    loss: torch.Tensor
    eliminated_per_row: torch.Tensor  # mean over this rank's rows of #{j ≠ i : R_ij ≥ κ}
    global_size: int
    offdiagonal_mean: torch.Tensor | None  # global mean of the raw off-diagonal R (None if not computed)
    false_negative: torch.Tensor | None = None  # [B, N] bool: the columns treated as false negatives
    soft_target: torch.Tensor | None = None  # [B, N] softmax(R_i / τ_t) in soft mode
    paired: torch.Tensor | None = None  # [B, N] bool: each row's own column


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs are promoted for the loss arithmetic)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def label_vectors(labels: torch.Tensor) -> torch.Tensor:
    """CheXpert label values (1 present, 0 absent, −1 uncertain, NaN unmentioned) as vectors for cosine.

    Present → 1, uncertain → 0.5, absent or unmentioned → 0. A study with no positive label is the
    zero vector, whose cosine with everything is 0 (never a false negative).
    """
    values = torch.nan_to_num(labels if labels.is_floating_point() else labels.float(), nan=0.0)
    return torch.where(values < 0, torch.full_like(values, 0.5), values.clamp(min=0.0))


def similarity_rows(source_all: torch.Tensor, layout: RowLayout, dtype: torch.dtype) -> torch.Tensor:
    """Cosine similarity R (local rows × all N columns) of gathered source vectors in ``dtype``, without gradient."""
    with torch.no_grad():
        unit = F.normalize(source_all.to(dtype), dim=-1)
        local = unit[layout.offset : layout.offset + layout.local_size]
        return local @ unit.T


def _paired_mask(rows: int, cols: int, offset: int, device: torch.device) -> torch.Tensor:
    """Boolean [rows, cols], True at each row's paired column (offset + row)."""
    target = torch.arange(rows, device=device) + offset
    return F.one_hot(target, cols).bool()


def offdiagonal_mean(similarity: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal similarity over the global batch (one all-reduce when distributed)."""
    off = similarity.masked_fill(paired, 0.0)
    stats = torch.stack([off.sum(), (~paired).sum().to(off.dtype)])
    total, count = all_reduce_sum_no_grad(stats).unbind()
    return total / count.clamp(min=1.0)


def center_similarity(similarity: torch.Tensor, offset: torch.Tensor | float) -> torch.Tensor:
    """FaNe-style centring R̃ = (R − o) / (1 − o); 1 stays 1, o maps to 0."""
    offset = torch.as_tensor(offset, dtype=similarity.dtype, device=similarity.device)
    return (similarity - offset) / (1.0 - offset).clamp(min=_MIN_CENTER_SPAN)


class _RowReducer:
    """This rank's share of a global row mean: the local mean when ranks hold equal rows, else W/N·Σ.

    Index-target cross-entropies are reduced by ``F.cross_entropy`` itself so that, on one rank,
    the result is bit-identical to a plain ``F.cross_entropy(logits, labels)``.
    """

    def __init__(self, layout: RowLayout, target: torch.Tensor) -> None:
        self.equal = len(set(layout.sizes)) == 1
        self.factor = layout.world_size / layout.global_size
        self.target = target

    def cross_entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Reduced CE of ``logits`` against each row's paired column."""
        if self.equal:
            return F.cross_entropy(logits, self.target)
        return F.cross_entropy(logits, self.target, reduction="sum") * self.factor

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """Reduced per-row values."""
        return values.mean() if self.equal else values.sum() * self.factor


def _direction_loss(
    logits: torch.Tensor,
    reduce: _RowReducer,
    paired: torch.Tensor,
    false_negative: torch.Tensor | None,
    soft_target: torch.Tensor | None,
    mode: str,
    soft_identity_weight: float | None,
) -> torch.Tensor:
    """SIA loss of one direction (logits: local rows × N columns), reduced over rows."""
    floor = torch.finfo(logits.dtype).min
    if mode == "none":
        return reduce.cross_entropy(logits)
    if mode == "soft":
        soft = -(soft_target * F.log_softmax(logits, dim=-1)).sum(dim=-1)
        return soft_identity_weight * reduce.cross_entropy(logits) + (1.0 - soft_identity_weight) * reduce.rows(soft)
    if mode == "eliminate":
        return reduce.cross_entropy(logits.masked_fill(false_negative, floor))
    # multi_positive: every positive q scored against the true negatives only.
    positive = false_negative | paired
    negative_lse = torch.logsumexp(logits.masked_fill(positive, floor), dim=-1, keepdim=True)
    per_positive = torch.logaddexp(logits, negative_lse) - logits
    return reduce.rows(torch.where(positive, per_positive, 0.0).sum(dim=-1) / positive.sum(dim=-1))


def sia_terms(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    report_emb: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    mode: str,
    threshold: float,
    similarity_source: str | None = None,
    soft_temperature: float | None = None,
    soft_identity_weight: float | None = None,
    center: CenterOffset | float | None = None,
    false_negatives: MaskOverride | None = None,
) -> SiaTerms:
    """SIA for this rank's rows with diagnostics; see :func:`sia_loss` for the arguments.

    ``false_negatives`` replaces the detector's mask (R ≥ κ) by another (the oracle and random arms).
    """
    if mode not in SIA_MODES:
        raise ValueError(f"sia mode {mode!r} is not one of {list(SIA_MODES)}")
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must both be [B, D]")
    if mode == "soft" and (soft_temperature is None or soft_identity_weight is None):
        raise ValueError("sia mode 'soft' needs soft_temperature (τ_t) and soft_identity_weight (α)")
    dtype = compute_dtype(image_emb, text_emb)
    with torch.autocast(device_type=image_emb.device.type, enabled=False):
        layout = row_layout(image_emb.shape[0], image_emb.device)
        image_all = gather_with_grad(image_emb.to(dtype), layout)
        text_all = gather_with_grad(text_emb.to(dtype), layout)
        lo, hi = layout.offset, layout.offset + layout.local_size
        image_local, text_local = image_all[lo:hi], text_all[lo:hi]
        scale = torch.as_tensor(logit_scale, device=image_emb.device).to(dtype)
        logits_i2t = scale * image_local @ text_all.T
        logits_t2i = scale * text_local @ image_all.T
        rows, cols = logits_i2t.shape
        target = torch.arange(rows, device=image_emb.device) + lo
        paired = _paired_mask(rows, cols, lo, image_emb.device)

        false_negative = soft_target = offdiag = None
        if mode != "none":
            source_all = _similarity_source(text_all, report_emb, labels, similarity_source, layout)
            similarity = similarity_rows(source_all, layout, dtype)
            if center is not None:
                offdiag = offdiagonal_mean(similarity, paired)
                offset = center(offdiag) if callable(center) else center
                similarity = torch.where(paired, similarity, center_similarity(similarity, offset))
            false_negative = (similarity >= threshold) & ~paired
            if false_negatives is not None:
                false_negative = false_negatives(false_negative, paired) & ~paired
            if mode == "soft":
                soft_target = torch.softmax(similarity / soft_temperature, dim=-1)

        reduce = _RowReducer(layout, target)

        def direction(logits: torch.Tensor) -> torch.Tensor:
            return _direction_loss(logits, reduce, paired, false_negative, soft_target, mode, soft_identity_weight)

        loss = (direction(logits_i2t) + direction(logits_t2i)) / 2
        if false_negative is None:
            eliminated = torch.zeros((), device=image_emb.device)
        else:
            eliminated = false_negative.sum(dim=-1).float().mean()
    return SiaTerms(loss, eliminated.detach(), layout.global_size, offdiag, false_negative, soft_target, paired)


def _similarity_source(
    text_all: torch.Tensor,
    report_emb: torch.Tensor | None,
    labels: torch.Tensor | None,
    source: str | None,
    layout: RowLayout,
) -> torch.Tensor:
    """The gathered vectors whose cosine defines R, picked by ``source`` (or inferred from what is given)."""
    if source is None:
        source = "precomputed" if report_emb is not None else "labels" if labels is not None else "online"
    if source not in SIMILARITY_SOURCES:
        raise ValueError(f"sia similarity_source {source!r} is not one of {list(SIMILARITY_SOURCES)}")
    if source == "online":
        return text_all.detach()
    if source == "precomputed":
        if report_emb is None:
            raise ValueError(
                "sia similarity_source 'precomputed' needs report_emb (the shards' report_emb.npy; "
                "shard with a report encoder or set loss.sia.similarity_source=online)"
            )
        return gather_no_grad(report_emb, layout)
    if labels is None:
        raise ValueError("sia similarity_source 'labels' needs the CheXpert label values of each sample")
    return gather_no_grad(label_vectors(labels), layout)


def sia_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    report_emb: torch.Tensor | None = None,
    *,
    mode: str = "eliminate",
    threshold: float = 0.9,
    **options,
) -> torch.Tensor:
    """Symmetric SIA loss of this rank's rows against the whole (all-gathered) batch.

    ``image_emb``, ``text_emb``: [B, D] L2-normalised embeddings of this rank's pairs;
    ``logit_scale``: the multiplier 1/τ; ``report_emb``: [B, Dr] report embeddings for R (gathered
    without gradient). ``mode``: eliminate | multi_positive | soft | none; ``threshold``: κ.
    ``options``: ``similarity_source`` (precomputed | online | labels; inferred from what is given
    when omitted), ``labels`` ([B, 14] CheXpert values, NaN for unmentioned), ``soft_temperature``
    (τ_t) and ``soft_identity_weight`` (α) for soft mode, ``center`` (a fixed centring offset o or
    a callable from the batch's mean off-diagonal R to o; None: no centring).

    Returns this rank's share: the mean over ranks of the returned values is the global loss, and
    gradients averaged over ranks are the global gradients.
    """
    return sia_terms(image_emb, text_emb, logit_scale, report_emb, mode=mode, threshold=threshold, **options).loss
