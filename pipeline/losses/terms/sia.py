"""``sia``: semantics-aware instance alignment (docs/method.md, SIA) with its centring EMA and elimination warning."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Union

import torch

from pipeline.losses.registry import LossContext, LossInputs, LossTerm, TermResult, register_term
from pipeline.losses.sia import sia_terms

log = logging.getLogger(__name__)
# Warn about heavy elimination on the first offending step, then every this many offending steps.
_WARN_EVERY = 100


@dataclass
class SiaOptions:
    """Options of ``sia`` (defaults: ``loss.options.sia`` in configs/pretrain/base.yaml)."""

    mode: Literal["eliminate", "multi_positive", "soft"]
    similarity_source: Literal["precomputed", "online", "labels"]
    threshold: float  # κ: R_ij ≥ κ marks a false negative
    soft_temperature: float  # τ_t of the soft targets
    soft_identity_weight: float  # α: weight of the paired report in the soft targets
    centering: Union[bool, Literal["auto"]]  # auto: on when report embeddings are [CLS]-pooled
    centering_momentum: float  # EMA momentum of the centring offset o
    warn_eliminated_fraction: float  # warn when a row loses more than this fraction of its columns

    def __post_init__(self) -> None:
        if not 0.0 <= self.soft_identity_weight <= 1.0:
            raise ValueError(f"sia.soft_identity_weight must be in [0, 1], got {self.soft_identity_weight}")
        if self.soft_temperature <= 0:
            raise ValueError(f"sia.soft_temperature must be > 0, got {self.soft_temperature}")
        if not 0.0 <= self.centering_momentum < 1.0:
            raise ValueError(f"sia.centering_momentum must be in [0, 1), got {self.centering_momentum}")


@register_term("sia")
class SIA(LossTerm):
    """SIA on the global embeddings; scalars: fn_eliminated_per_row, fn_eliminated_fraction, center_offset.

    ``centering: auto`` is on when the embeddings behind R are [CLS]-pooled: ``context.report_pooling``
    for ``precomputed`` (the shard manifest's report encoder), ``context.text_pooling`` for ``online``. The centring offset
    is an EMA kept in the buffer ``center_offset`` (NaN until the first step), identical on every rank;
    it moves only in training mode.
    """

    Options = SiaOptions

    def __init__(self, options: SiaOptions, context: LossContext) -> None:
        super().__init__(options, context)
        self.centering = self._resolve_centering(options, context)
        self.register_buffer("center_offset", torch.tensor(float("nan"), dtype=torch.float64))
        self._warnings = 0

    @property
    def needs(self) -> frozenset[str]:
        """report_emb for ``precomputed``, labels for ``labels``."""
        return frozenset({"precomputed": {"report_emb"}, "labels": {"labels"}}.get(self.options.similarity_source, ()))

    @staticmethod
    def _resolve_centering(options: SiaOptions, context: LossContext) -> bool:
        """Centring on/off after resolving ``auto``: on when R's embeddings are [CLS]-pooled, off for labels."""
        if options.centering != "auto":
            return bool(options.centering)
        pooling = {"precomputed": context.report_pooling, "online": context.text_pooling}.get(options.similarity_source)
        return pooling == "cls"

    def _update_center(self, batch_mean: torch.Tensor) -> torch.Tensor:
        """EMA update of the centring offset with this step's global mean off-diagonal similarity."""
        batch_mean = batch_mean.detach().to(self.center_offset)
        if torch.isnan(self.center_offset):
            self.center_offset.copy_(batch_mean)
        elif self.training:
            momentum = self.options.centering_momentum
            self.center_offset.mul_(momentum).add_((1.0 - momentum) * batch_mean)
        return self.center_offset.clone()

    def forward(self, inputs: LossInputs) -> TermResult:
        """This rank's SIA loss and its false-negative diagnostics (this rank's values)."""
        opt = self.options
        sia = sia_terms(
            inputs.image.global_emb, inputs.text.global_emb, inputs.logit_scales["sia"], inputs.report_emb,
            inputs.labels, mode=opt.mode, threshold=opt.threshold, similarity_source=opt.similarity_source,
            soft_temperature=opt.soft_temperature, soft_identity_weight=opt.soft_identity_weight,
            center=self._update_center if self.centering else None,
        )
        fraction = sia.eliminated_per_row / max(sia.global_size - 1, 1)
        self._maybe_warn(float(fraction))
        return TermResult(sia.loss, {
            "fn_eliminated_per_row": sia.eliminated_per_row,
            "fn_eliminated_fraction": fraction,
            "center_offset": self.center_offset.detach().float().clone(),
        })

    def _maybe_warn(self, fraction: float) -> None:
        """Log a warning when SIA removes more than ``warn_eliminated_fraction`` of a row on average."""
        limit = self.options.warn_eliminated_fraction
        if fraction <= limit:
            return
        if self._warnings % _WARN_EVERY == 0:
            log.warning(
                "SIA treats %.1f%% of each row's columns as false negatives (above loss.options.sia."
                "warn_eliminated_fraction=%.1f%%): check loss.options.sia.threshold, the report embeddings' "
                "pooling, or turn on loss.options.sia.centering",
                100 * fraction,
                100 * limit,
            )
        self._warnings += 1
