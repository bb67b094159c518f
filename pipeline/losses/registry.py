"""The contract of a loss term and the registry that maps a YAML ``term:`` name to its class.

A term is a small ``nn.Module``: it reads a :class:`LossInputs` and returns a :class:`TermResult`
(its loss and a fixed set of named scalars). Register it with ``@register_term("name")`` in a module
of ``pipeline/losses/terms/``; every module there is imported when a term is first looked up, so a
new term is one file plus one YAML entry (see docs: "Adding a loss term").
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class LossInputs:
    """What every term may read: the step's features, temperatures and per-sample side information."""

    image: Any  # ImageFeatures: global_emb [B, D], patch_emb [B, P, D] (L2-normalised, fp32 or fp64)
    text: Any  # TextFeatures: global_emb [B, D], token_emb [B, L, D], token_mask [B, L]
    logit_scales: dict[str, torch.Tensor]  # {"sia": 1/τ, "sta": 1/τ_f}
    report_emb: torch.Tensor | None = None  # [B, Dr] precomputed report embeddings
    labels: torch.Tensor | None = None  # [B, 14] CheXpert label values
    findings: torch.Tensor | None = None  # [B] int64 findings signatures (phantom sets; pipeline.data.findings)


@dataclass
class TermResult:
    """A term's loss for this rank, its named scalars (same keys every step) and non-scalar maps."""

    loss: torch.Tensor
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. STA's alignment weights [B, L, P]


@dataclass
class LossContext:
    """Facts about the run a term may need when it is built (not per step)."""

    report_pooling: str | None = None  # how the shards' precomputed report embeddings were pooled: mean | cls
    text_pooling: str | None = None  # how the model pools its global text embedding: mean | cls


@dataclass
class NoOptions:
    """Options of a term that has none."""


class LossTerm(nn.Module):
    """Base class of a term: ``Options`` is its options schema; ``needs_tokens`` whether it reads token features."""

    Options: ClassVar[type] = NoOptions
    needs_tokens: ClassVar[bool] = False

    def __init__(self, options: Any, context: LossContext) -> None:
        super().__init__()
        self.options = options
        self.context = context

    @property
    def active(self) -> bool:
        """False when the options switch the term off (it is then neither computed nor logged)."""
        return True

    @property
    def needs(self) -> frozenset[str]:
        """The optional :class:`LossInputs` fields this term reads (``report_emb``, ``labels``)."""
        return frozenset()

    def forward(self, inputs: LossInputs) -> TermResult:  # pragma: no cover - abstract
        """This rank's loss and scalars for one step."""
        raise NotImplementedError


_REGISTRY: dict[str, type[LossTerm]] = {}
_DISCOVERED = False


def register_term(name: str):
    """Class decorator: make ``name`` usable as ``term: name`` in ``loss.terms``."""

    def add(cls: type[LossTerm]) -> type[LossTerm]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss term {name!r} is registered twice ({_REGISTRY[name].__module__}, {cls.__module__})")
        _REGISTRY[name] = cls
        return cls

    return add


def _discover() -> None:
    """Import every module of ``pipeline.losses.terms`` once (they register themselves)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    from pipeline.losses import terms

    for module in sorted(m.name for m in pkgutil.iter_modules(terms.__path__)):
        importlib.import_module(f"{terms.__name__}.{module}")


def registered_terms() -> dict[str, type[LossTerm]]:
    """Every registered term by name."""
    _discover()
    return dict(_REGISTRY)


def term_class(name: str) -> type[LossTerm]:
    """The class registered as ``name``; a ValueError lists the known names."""
    known = registered_terms()
    if name not in known:
        raise ValueError(f"unknown loss term {name!r} (known: {', '.join(sorted(known))})")
    return known[name]
