"""``sia``: semantics-aware instance alignment (docs/method.md, SIA) with its centring EMA and elimination warning."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Union

import torch

from pipeline.losses.distributed import rank_and_world
from pipeline.losses.fn_truth import batch_tfn_mask, detector_scores, random_like, soft_tfn_mass
from pipeline.losses.registry import LossContext, LossInputs, LossTerm, TermResult, register_term
from pipeline.losses.sia import MaskOverride, SiaTerms, sia_terms

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
    false_negatives: Literal["detector", "oracle", "random"]  # which columns count as false negatives
    random_seed: int  # seed of the ``random`` arm's draws

    def __post_init__(self) -> None:
        if self.false_negatives != "detector" and self.mode == "soft":
            raise ValueError(f"sia.false_negatives={self.false_negatives!r} needs a hard mask: mode eliminate or "
                             "multi_positive, not soft")
        if not 0.0 <= self.soft_identity_weight <= 1.0:
            raise ValueError(f"sia.soft_identity_weight must be in [0, 1], got {self.soft_identity_weight}")
        if self.soft_temperature <= 0:
            raise ValueError(f"sia.soft_temperature must be > 0, got {self.soft_temperature}")
        if not 0.0 <= self.centering_momentum < 1.0:
            raise ValueError(f"sia.centering_momentum must be in [0, 1), got {self.centering_momentum}")


@register_term("sia")
class SIA(LossTerm):
    """SIA on the global embeddings; scalars: fn_eliminated_per_row, fn_eliminated_fraction, center_offset.

    When the batch carries findings signatures (phantom sets) it also scores the detector against the
    truth: tfn_per_row, tfn_fraction, fn_precision and fn_recall of the mask it used (hard modes) or
    tfn_target_mass (soft mode). ``false_negatives: oracle`` eliminates exactly the TFNs, ``random``
    as many columns per row as the detector, at random (its own generator: the global RNG is untouched).

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
        self._draws = 0  # random arm: how many masks it has drawn (seeds the next one)

    @property
    def needs(self) -> frozenset[str]:
        """report_emb for ``precomputed``, labels for ``labels``; findings for the oracle arm."""
        needs = {"precomputed": {"report_emb"}, "labels": {"labels"}}.get(self.options.similarity_source, set())
        return frozenset(needs | ({"findings"} if self.options.false_negatives == "oracle" else set()))

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
        truth: dict[str, torch.Tensor] = {}
        sia = sia_terms(
            inputs.image.global_emb, inputs.text.global_emb, inputs.logit_scales["sia"], inputs.report_emb,
            inputs.labels, mode=opt.mode, threshold=opt.threshold, similarity_source=opt.similarity_source,
            soft_temperature=opt.soft_temperature, soft_identity_weight=opt.soft_identity_weight,
            center=self._update_center if self.centering else None,
            false_negatives=self._mask_override(inputs.findings, truth),
        )
        fraction = sia.eliminated_per_row / max(sia.global_size - 1, 1)
        self._maybe_warn(float(fraction))
        scalars = {
            "fn_eliminated_per_row": sia.eliminated_per_row,
            "fn_eliminated_fraction": fraction,
            "center_offset": self.center_offset.detach().float().clone(),
        }
        if inputs.findings is not None:
            scalars.update(self._scores(sia, truth.get("mask"), inputs.findings))
        return TermResult(sia.loss, scalars)

    def _mask_override(self, findings: torch.Tensor | None, truth: dict[str, torch.Tensor]) -> MaskOverride | None:
        """The hook that swaps the detector's mask for the oracle's or a random one (None: the detector's).

        Puts the TFN mask it computes into ``truth["mask"]`` so the scores reuse it.
        """
        arm = self.options.false_negatives
        if arm == "detector" and findings is None:
            return None
        if arm == "oracle" and findings is None:
            raise ValueError("loss.options.sia.false_negatives=oracle needs findings signatures in the batch "
                             "(data.findings_annotations: the phantom set's phantom_annotations.json)")

        def override(detected: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
            if findings is not None:
                truth["mask"] = batch_tfn_mask(findings.to(detected.device), paired)
            if arm == "oracle":
                return truth["mask"]
            if arm == "random":
                return random_like(detected, paired, self._generator(detected.device))
            return detected

        return override

    def _generator(self, device: torch.device) -> torch.Generator:
        """The random arm's generator for this draw: seeded by (random_seed, rank, draw), never the global RNG."""
        rank = rank_and_world()[0]
        generator = torch.Generator(device=device)
        generator.manual_seed((self.options.random_seed * 1_000_003 + rank) * 1_000_003 + self._draws)
        self._draws += 1
        return generator

    def _scores(self, sia: SiaTerms, truth: torch.Tensor | None, findings: torch.Tensor) -> dict[str, torch.Tensor]:
        """The detector's scores against the truth (TFN mask) for this step."""
        if sia.paired is None:  # mode none: no detector
            return {}
        if truth is None:
            truth = batch_tfn_mask(findings.to(sia.paired.device), sia.paired)
        if self.options.mode == "soft":
            scores = detector_scores(truth, truth)
            return {"tfn_per_row": scores["tfn_per_row"], "tfn_fraction": scores["tfn_fraction"],
                    "tfn_target_mass": soft_tfn_mass(sia.soft_target, truth, sia.paired)}
        return detector_scores(sia.false_negative, truth)

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
