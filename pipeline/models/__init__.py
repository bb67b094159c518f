"""Models: timm image encoder, transformers text encoder, projection heads, temperatures."""

from pipeline.models.config import (
    ImageEncoderConfig,
    ModelConfig,
    TemperatureConfig,
    TemperaturesConfig,
    TextEncoderConfig,
)
from pipeline.models.sista_model import ImageFeatures, SistaModel, TextFeatures, build_model, load_exported
from pipeline.models.tokenizer import build_tokenizer

__all__ = [
    "ImageEncoderConfig",
    "ImageFeatures",
    "ModelConfig",
    "SistaModel",
    "TemperatureConfig",
    "TemperaturesConfig",
    "TextEncoderConfig",
    "TextFeatures",
    "build_model",
    "build_tokenizer",
    "load_exported",
]
