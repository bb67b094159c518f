"""``sta_token``: STA's within-sample token contrast (docs/method.md, STA steps 1-6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pipeline.losses.registry import LossInputs, LossTerm, TermResult, register_term
from pipeline.losses.sta import sta_terms


@dataclass
class StaTokenOptions:
    """Options of ``sta_token`` (defaults: ``loss.options.sta_token`` in configs/pretrain/base.yaml)."""

    threshold: Optional[float]  # σ; None means 1/P


@register_term("sta_token")
class StaToken(LossTerm):
    """Sparse token alignment inside each pair; scalars: sparsity; maps: weights (a [B, L, P], detached)."""

    Options = StaTokenOptions
    needs_tokens = True

    def forward(self, inputs: LossInputs) -> TermResult:
        """This rank's share of the token loss, the alignment weights and their sparsity."""
        image, text = inputs.image, inputs.text
        sta = sta_terms(image.patch_emb, text.token_emb, text.token_mask, inputs.logit_scales["sta"],
                        threshold=self.options.threshold)
        return TermResult(sta.loss, {"sparsity": sta.sparsity}, {"weights": sta.weights.detach()})
