"""Losses: SIA (semantics-aware instance alignment) and STA (sparse token alignment)."""

from pipeline.losses.config import PRESETS, LossConfig, LossWeights, SiaConfig, StaConfig
from pipeline.losses.sia import label_vectors, sia_loss, sia_terms
from pipeline.losses.sista_loss import SistaLoss
from pipeline.losses.sta import alignment_weights, sta_image_loss, sta_loss, sta_terms

__all__ = [
    "PRESETS",
    "LossConfig",
    "LossWeights",
    "SiaConfig",
    "SistaLoss",
    "StaConfig",
    "alignment_weights",
    "label_vectors",
    "sia_loss",
    "sia_terms",
    "sta_image_loss",
    "sta_loss",
    "sta_terms",
]
