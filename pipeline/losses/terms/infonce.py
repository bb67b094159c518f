"""``infonce``: plain symmetric CLIP InfoNCE over the all-gathered batch (the global term of clip and sta_only)."""

from __future__ import annotations

from pipeline.losses.registry import LossInputs, LossTerm, TermResult, register_term
from pipeline.losses.sia import sia_terms


@register_term("infonce")
class InfoNCE(LossTerm):
    """Symmetric InfoNCE of the global embeddings with SIA's temperature; scalars: none besides the loss."""

    def forward(self, inputs: LossInputs) -> TermResult:
        """This rank's share of the global InfoNCE loss."""
        terms = sia_terms(inputs.image.global_emb, inputs.text.global_emb, inputs.logit_scales["sia"],
                          mode="none", threshold=float("inf"))
        return TermResult(terms.loss)
