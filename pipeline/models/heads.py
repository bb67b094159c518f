"""Projection heads into the shared embedding space, and the learnable temperatures."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.config import TemperatureConfig


def projection_head(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """``linear``: one Linear; ``mlp``: Linear → GELU → Linear (hidden width = ``in_dim``)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))
    raise ValueError(f"model.projection {kind!r} is not one of ['linear', 'mlp']")


class LogitScale(nn.Module):
    """1/τ parametrised as log(1/τ); the value is clamped to [1/τ_max, 1/τ_min] when read."""

    def __init__(self, cfg: TemperatureConfig) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init)), requires_grad=cfg.learnable)
        self.low, self.high = 1.0 / cfg.max, 1.0 / cfg.min

    def forward(self) -> torch.Tensor:
        """The clamped multiplier 1/τ (a 0-d tensor)."""
        return self.log_scale.exp().clamp(self.low, self.high)
