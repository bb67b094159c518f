"""``sta_image``: STA's cross-image token contrast over K other images of the global batch (method.md step 7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pipeline.losses.registry import LossInputs, LossTerm, TermResult, register_term
from pipeline.losses.sta import sta_image_loss


@dataclass
class StaImageOptions:
    """Options of ``sta_image`` (defaults: ``loss.options.sta_image`` in configs/pretrain/base.yaml)."""

    negatives: int  # K other images per token; 0 switches the term off (SPARC's within-sample contrast only)
    threshold: Optional[float]  # σ of the grouping; None means 1/P (keep it equal to sta_token's)

    def __post_init__(self) -> None:
        if isinstance(self.negatives, bool) or not isinstance(self.negatives, int) or self.negatives < 0:
            raise ValueError(f"sta_image.negatives must be an integer >= 0, got {self.negatives!r}")


@register_term("sta_image")
class StaImage(LossTerm):
    """Each token must prefer its grouping over its own image to K others; inactive when K = 0."""

    Options = StaImageOptions
    needs_tokens = True

    @property
    def active(self) -> bool:
        """On when ``negatives`` > 0."""
        return self.options.negatives > 0

    def forward(self, inputs: LossInputs) -> TermResult:
        """This rank's share of the cross-image token loss."""
        image, text = inputs.image, inputs.text
        loss = sta_image_loss(image.patch_emb, text.token_emb, text.token_mask, inputs.logit_scales["sta"],
                              negatives=self.options.negatives, threshold=self.options.threshold)
        return TermResult(loss)
