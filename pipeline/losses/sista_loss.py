"""SistaLoss: λ_SIA·SIA + λ_STA·STA from the model's features, with the dashboards' diagnostics."""

from __future__ import annotations

import logging

import torch
from torch import nn

from pipeline.losses.config import LossConfig
from pipeline.losses.sia import sia_terms
from pipeline.losses.sta import sta_image_loss, sta_terms

log = logging.getLogger(__name__)
# Warn about heavy elimination on the first offending step, then every this many offending steps.
_WARN_EVERY = 100


class SistaLoss(nn.Module):
    """The pre-training objective selected by ``LossConfig.preset``; call it once per step.

    ``report_pooling`` ("mean" | "cls" | None) is how the report embeddings used for R were pooled
    (the shard manifest's ``report_encoder.pooling`` for ``precomputed``, the model's text pooling
    for ``online``); it only resolves ``sia.centering: auto``. The centring offset is an EMA kept
    in the buffer ``center_offset`` (NaN until the first step), identical on every rank.
    """

    def __init__(self, cfg: LossConfig, report_pooling: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.centering = self._resolve_centering(cfg, report_pooling)
        self.register_buffer("center_offset", torch.tensor(float("nan"), dtype=torch.float64))
        self._warnings = 0

    @staticmethod
    def _resolve_centering(cfg: LossConfig, report_pooling: str | None) -> bool:
        """Centring on/off after resolving ``auto`` (on for [CLS]-pooled embeddings, off for labels)."""
        if cfg.sia.centering != "auto":
            return bool(cfg.sia.centering)
        if cfg.sia.similarity_source == "labels":
            return False
        return report_pooling == "cls"

    def _update_center(self, batch_mean: torch.Tensor) -> torch.Tensor:
        """EMA update of the centring offset with this step's global mean off-diagonal similarity."""
        batch_mean = batch_mean.detach().to(self.center_offset)
        if torch.isnan(self.center_offset):
            self.center_offset.copy_(batch_mean)
        elif self.training:
            momentum = self.cfg.sia.centering_momentum
            self.center_offset.mul_(momentum).add_((1.0 - momentum) * batch_mean)
        return self.center_offset.clone()

    def forward(
        self,
        image,
        text,
        logit_scales: dict[str, torch.Tensor],
        report_emb: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms and diagnostics for one step from ``ImageFeatures``, ``TextFeatures`` and ``logit_scales``.

        Keys: loss, sia_loss, sta_loss (= sta_token_loss + weight · sta_image_loss, the latter only when
        ``sta.image_negatives`` > 0), sta_token_loss, fn_eliminated_per_row, fn_eliminated_fraction, sta_sparsity,
        temperature_sia, temperature_sta, sia_center_offset, and sta_weights (a [B, L', P], detached;
        absent when STA is off). Diagnostics are this rank's values.
        """
        cfg = self.cfg
        mode = cfg.sia_mode
        sia = sia_terms(
            image.global_emb,
            text.global_emb,
            logit_scales["sia"],
            report_emb,
            labels,
            mode=mode,
            threshold=cfg.sia.threshold,
            similarity_source=cfg.sia.similarity_source,
            soft_temperature=cfg.sia.soft_temperature,
            soft_identity_weight=cfg.sia.soft_identity_weight,
            center=self._update_center if (self.centering and mode != "none") else None,
        )
        device = sia.loss.device
        out: dict[str, torch.Tensor] = {"sia_loss": sia.loss}
        total = cfg.sia_weight * sia.loss
        if cfg.sta_weight > 0:
            sta = sta_terms(
                image.patch_emb, text.token_emb, text.token_mask, logit_scales["sta"], threshold=cfg.sta.threshold
            )
            sta_total = sta.loss
            if cfg.sta.image_negatives > 0:
                image_loss = sta_image_loss(
                    image.patch_emb, text.token_emb, text.token_mask, logit_scales["sta"],
                    negatives=cfg.sta.image_negatives, threshold=cfg.sta.threshold,
                )
                sta_total = sta_total + cfg.sta.image_negatives_weight * image_loss
                out["sta_image_loss"] = image_loss
            total = total + cfg.sta_weight * sta_total
            out.update(sta_loss=sta_total, sta_token_loss=sta.loss, sta_sparsity=sta.sparsity,
                       sta_weights=sta.weights.detach())
        else:
            zero = torch.zeros((), device=device)
            out.update(sta_loss=zero, sta_token_loss=zero, sta_sparsity=zero)
        fraction = sia.eliminated_per_row / max(sia.global_size - 1, 1)
        self._maybe_warn(float(fraction))
        out.update(
            loss=total,
            fn_eliminated_per_row=sia.eliminated_per_row,
            fn_eliminated_fraction=fraction,
            temperature_sia=(1.0 / logit_scales["sia"]).detach(),
            temperature_sta=(1.0 / logit_scales["sta"]).detach() if "sta" in logit_scales else torch.zeros(()),
            sia_center_offset=self.center_offset.detach().float().clone(),
        )
        return out

    def _maybe_warn(self, fraction: float) -> None:
        """Log a warning when SIA removes more than ``sia.warn_eliminated_fraction`` of a row on average."""
        limit = self.cfg.sia.warn_eliminated_fraction
        if fraction <= limit:
            return
        if self._warnings % _WARN_EVERY == 0:
            log.warning(
                "SIA treats %.1f%% of each row's columns as false negatives (above loss.sia.warn_eliminated_fraction"
                "=%.1f%%): check loss.sia.threshold, the report embeddings' pooling, or turn on loss.sia.centering",
                100 * fraction,
                100 * limit,
            )
        self._warnings += 1
