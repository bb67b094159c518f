"""ModelConfig: the YAML section ``model:`` (defaults in configs/pretrain/base.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional


@dataclass
class ImageEncoderConfig:
    """A timm trunk: ``name`` (e.g. vit_base_patch16_224, resnet50) and where its weights come from.

    ``pretrained``: ``none`` (random init), ``timm`` (timm's own download for ``name``, which may
    carry a tag such as ``.augreg_in21k``), or a local path: a ``.safetensors`` file or a folder
    holding timm's ``config.json`` + ``model.safetensors`` (what ``SistaModel.export`` writes).
    ``timm_kwargs`` go to ``timm.create_model`` as they are (e.g. ``{output_stride: 16}`` for a
    finer CNN grid, ``{depth: 6}`` for a shallower ViT).
    """

    name: str
    in_chans: Literal[1, 3]
    img_size: int
    pretrained: str
    timm_kwargs: Optional[dict[str, Any]] = None


@dataclass
class TextEncoderConfig:
    """A BERT-family ``transformers`` encoder, from ``name`` (hub id or local folder) or a ``tiny`` spec.

    ``tiny`` is a mapping of ``BertConfig`` arguments for a randomly initialised model (tests,
    demo); exactly one of ``name`` and ``tiny`` is set. ``tokenizer`` names the tokenizer's hub
    id or folder (None: same as ``name``). ``keep_layers`` keeps only the first k layers (MGCA).
    ``freeze_layers`` locks the embeddings and the first k transformer layers (0: the embeddings
    only; all layers: the whole encoder, LiT-style, so only the projection heads learn text);
    None trains everything.
    """

    pooling: Literal["cls", "mean"]
    max_length: int
    token_unit: Literal["subword", "word"]  # STA's tokens: WordPieces, or words (pieces summed, as MGCA)
    name: Optional[str] = None
    tiny: Optional[dict[str, Any]] = None
    tokenizer: Optional[str] = None
    keep_layers: Optional[int] = None
    freeze_layers: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.tiny is None):
            raise ValueError("text: set exactly one of 'name' (hub id or folder) and 'tiny' (BertConfig arguments)")
        if self.keep_layers is not None and self.keep_layers < 1:
            raise ValueError(f"text.keep_layers must be >= 1, got {self.keep_layers}")
        if self.freeze_layers is not None and self.freeze_layers < 0:
            raise ValueError(f"text.freeze_layers must be >= 0 (or null), got {self.freeze_layers}")


@dataclass
class TemperatureConfig:
    """A learnable temperature τ, stored as log(1/τ) and clamped to [min, max]."""

    init: float
    min: float
    max: float
    learnable: bool

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.init <= self.max:
            raise ValueError(f"temperature needs 0 < min <= init <= max, got {self.min}, {self.init}, {self.max}")


@dataclass
class TemperaturesConfig:
    """One temperature per loss: SIA's τ and STA's τ_f."""

    sia: TemperatureConfig
    sta: TemperatureConfig


@dataclass
class ModelConfig:
    """Image and text encoders, projection heads into a shared ``embed_dim`` space, temperatures."""

    image: ImageEncoderConfig
    text: TextEncoderConfig
    projection: Literal["linear", "mlp"]
    embed_dim: int
    temperature: TemperaturesConfig
    gradient_checkpointing: bool
