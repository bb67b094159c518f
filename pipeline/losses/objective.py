"""The training objective: the weighted sum of the terms listed in ``loss.terms``, with every term's scalars.

Sums run in list order, each group before it is weighted:
``total = w_1·t_1 + w_2·t_2 + …`` where a group's ``t`` is its own weighted sum (the ``sista`` preset:
``w_sia·sia + w_sta·(1·sta_token + w_image·sta_image)``). Scalars are keyed ``<name>/<scalar>``,
every entry also gives ``<name>/loss``, and ``temperature/<scale>`` is logged for each temperature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.losses.config import LossConfig, TermSpec
from pipeline.losses.registry import LossContext, LossInputs, LossTerm, term_class


@dataclass
class ObjectiveResult:
    """The step's total loss, all named scalars, and the terms' non-scalar maps (``<name>/<map>``)."""

    loss: torch.Tensor
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


class TermGroup(nn.Module):
    """Weighted entries (terms or groups) summed in order; an entry of weight 0 or an inactive term is skipped."""

    def __init__(self, cfg: LossConfig, specs: list[TermSpec], context: LossContext) -> None:
        super().__init__()
        self.names = [spec.name for spec in specs]
        self.weights = [cfg.weight(spec) for spec in specs]
        self.entries = nn.ModuleList(
            TermGroup(cfg, spec.terms, context) if spec.group is not None
            else term_class(spec.term)(cfg.term_options(spec.term, spec.options), context)
            for spec in specs
        )

    def live(self) -> list[tuple[str, float, nn.Module]]:
        """(name, weight, module) of the entries that run."""
        return [(n, w, m) for n, w, m in zip(self.names, self.weights, self.entries)
                if w > 0 and (m.active if isinstance(m, LossTerm) else bool(m.live()))]

    def terms(self) -> list[LossTerm]:
        """The active terms below this group, in order."""
        out: list[LossTerm] = []
        for _, _, module in self.live():
            out.extend(module.terms() if isinstance(module, TermGroup) else [module])
        return out

    def forward(self, inputs: LossInputs, scalars: dict[str, torch.Tensor], maps: dict[str, torch.Tensor]):
        """The group's weighted sum; fills ``scalars`` and ``maps`` with its entries' values."""
        total = None
        for name, weight, module in self.live():
            if isinstance(module, TermGroup):
                value = module(inputs, scalars, maps)
            else:
                result = module(inputs)
                value = result.loss
                scalars.update({f"{name}/{k}": v for k, v in result.scalars.items()})
                maps.update({f"{name}/{k}": v for k, v in result.maps.items()})
            scalars[f"{name}/loss"] = value
            weighted = weight * value
            total = weighted if total is None else total + weighted
        return total


class Objective(nn.Module):
    """``loss.terms`` as one module: call it on :class:`LossInputs`, get an :class:`ObjectiveResult`."""

    def __init__(self, cfg: LossConfig, context: LossContext | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.root = TermGroup(cfg, cfg.terms, context or LossContext())
        if not self.root.live():
            raise ValueError("loss.terms: every term is switched off (weight 0 or inactive): nothing to train")

    @property
    def needs_token_features(self) -> bool:
        """Whether any active term reads patch and token embeddings (else the trainer freezes their parameters)."""
        return any(term.needs_tokens for term in self.root.terms())

    @property
    def needs(self) -> frozenset[str]:
        """The optional batch fields (``report_emb``, ``labels``) the active terms read."""
        return frozenset().union(*(term.needs for term in self.root.terms()))

    def find(self, term: str) -> LossTerm | None:
        """The first active term registered as ``term`` (e.g. to read its options), or None."""
        cls = term_class(term)
        return next((t for t in self.root.terms() if type(t) is cls), None)

    def forward(self, inputs: LossInputs) -> ObjectiveResult:
        """Total loss and scalars of one step (this rank's values)."""
        scalars: dict[str, torch.Tensor] = {}
        maps: dict[str, torch.Tensor] = {}
        total = self.root(inputs, scalars, maps)
        for name, scale in inputs.logit_scales.items():
            scalars[f"temperature/{name}"] = (1.0 / scale).detach()
        return ObjectiveResult(total, scalars, maps)


def build_objective(cfg: LossConfig, context: LossContext | None = None) -> Objective:
    """The objective of ``cfg``; ``context`` tells the terms about the run (e.g. how report embeddings were pooled)."""
    return Objective(cfg, context)
