"""Losses: one module per term (pipeline/losses/terms/), combined by the objective from ``loss.terms``."""

from pipeline.losses.config import LossConfig, TermSpec
from pipeline.losses.objective import Objective, ObjectiveResult, build_objective
from pipeline.losses.registry import (
    LossContext,
    LossInputs,
    LossTerm,
    TermResult,
    register_term,
    registered_terms,
)
from pipeline.losses.sia import label_vectors, sia_loss, sia_terms
from pipeline.losses.sta import alignment_weights, sta_image_loss, sta_loss, sta_terms

__all__ = [
    "LossConfig",
    "LossContext",
    "LossInputs",
    "LossTerm",
    "Objective",
    "ObjectiveResult",
    "TermResult",
    "TermSpec",
    "alignment_weights",
    "build_objective",
    "label_vectors",
    "register_term",
    "registered_terms",
    "sia_loss",
    "sia_terms",
    "sta_image_loss",
    "sta_loss",
    "sta_terms",
]
