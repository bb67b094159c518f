"""LossConfig: the YAML section ``loss:`` (defaults in configs/pretrain/base.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

PRESETS = ("clip", "sia_only", "sta_only", "sista")


@dataclass
class SiaConfig:
    """Semantics-aware instance alignment (docs/method.md, SIA)."""

    mode: Literal["eliminate", "multi_positive", "soft"]
    similarity_source: Literal["precomputed", "online", "labels"]
    threshold: float  # κ: R_ij ≥ κ marks a false negative
    soft_temperature: float  # τ_t of the soft targets
    soft_identity_weight: float  # α: weight of the paired report in the soft targets
    centering: Union[bool, Literal["auto"]]  # auto: on when report embeddings are [CLS]-pooled
    centering_momentum: float  # EMA momentum of the centring offset o
    warn_eliminated_fraction: float  # warn when a row loses more than this fraction of its columns

    def __post_init__(self) -> None:
        if not 0.0 <= self.soft_identity_weight <= 1.0:
            raise ValueError(f"sia.soft_identity_weight must be in [0, 1], got {self.soft_identity_weight}")
        if self.soft_temperature <= 0:
            raise ValueError(f"sia.soft_temperature must be > 0, got {self.soft_temperature}")
        if not 0.0 <= self.centering_momentum < 1.0:
            raise ValueError(f"sia.centering_momentum must be in [0, 1), got {self.centering_momentum}")


@dataclass
class StaConfig:
    """Sparse token alignment (docs/method.md, STA)."""

    token_unit: Literal["subword", "word"]
    threshold: Optional[float] = None  # σ; None means 1/P
    image_negatives: int = 0  # K other images per token in the cross-image term; 0 = off (SPARC)
    image_negatives_weight: float = 1.0  # weight of the cross-image term inside L_STA

    def __post_init__(self) -> None:
        if isinstance(self.image_negatives, bool) or not isinstance(self.image_negatives, int) or self.image_negatives < 0:
            raise ValueError(f"sta.image_negatives must be an integer >= 0, got {self.image_negatives!r}")
        if self.image_negatives_weight < 0:
            raise ValueError(f"sta.image_negatives_weight must be >= 0, got {self.image_negatives_weight}")


@dataclass
class LossWeights:
    """λ_SIA and λ_STA (a preset may switch a term off, never change its weight)."""

    sia: float
    sta: float


@dataclass
class LossConfig:
    """The whole objective: one preset switch plus the options of each term."""

    preset: Literal["clip", "sia_only", "sta_only", "sista"]
    weights: LossWeights
    sia: SiaConfig
    sta: StaConfig

    @property
    def sia_mode(self) -> str:
        """The SIA mode the preset runs: ``none`` (plain InfoNCE) for clip and sta_only."""
        return self.sia.mode if self.preset in ("sia_only", "sista") else "none"

    @property
    def sia_weight(self) -> float:
        """λ of the global (SIA or plain InfoNCE) term; every preset keeps it."""
        return self.weights.sia

    @property
    def sta_weight(self) -> float:
        """λ of STA; 0 for clip and sia_only."""
        return self.weights.sta if self.preset in ("sta_only", "sista") else 0.0

    @property
    def needs_token_features(self) -> bool:
        """Whether the model must return patch and token embeddings (STA is on)."""
        return self.sta_weight > 0
