"""Image encoder: any timm trunk, returning a global feature and its patch (ViT) or grid (CNN) tokens."""

from __future__ import annotations

import json
import math
from pathlib import Path

import timm
import torch
from torch import nn

from pipeline.models.config import ImageEncoderConfig

TIMM_CONFIG = "config.json"
TIMM_WEIGHTS = "model.safetensors"


def _create(cfg: ImageEncoderConfig, pretrained: bool, **extra) -> nn.Module:
    """``timm.create_model`` without classifier, with the configured channels and, where the
    architecture fixes its input size at build time (ViTs), ``img_size``."""
    reserved = {"num_classes", "in_chans", "img_size", "pretrained"} & set(cfg.timm_kwargs or {})
    if reserved:
        raise ValueError(f"model.image.timm_kwargs may not set {sorted(reserved)}: they have keys of their own (or are fixed)")
    kwargs = {"num_classes": 0, "in_chans": cfg.in_chans, **(cfg.timm_kwargs or {}), **extra}
    try:
        return timm.create_model(cfg.name, pretrained=pretrained, img_size=cfg.img_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        return timm.create_model(cfg.name, pretrained=pretrained, **kwargs)


def create_trunk(cfg: ImageEncoderConfig) -> nn.Module:
    """The timm model for ``cfg``, with weights from ``cfg.pretrained`` (none | timm | local path)."""
    source = cfg.pretrained
    if source == "none":
        return _create(cfg, pretrained=False)
    if source == "timm":
        try:
            return _create(cfg, pretrained=True)
        except Exception as err:  # noqa: BLE001 - timm raises many kinds when offline
            raise RuntimeError(
                f"model.image: could not fetch pretrained weights for timm model {cfg.name!r} ({err}). Fix: on a "
                f"machine with internet run `huggingface-cli download timm/{cfg.name} --local-dir DIR` and set "
                "model.image.pretrained=DIR, or set model.image.pretrained=none for random init."
            ) from err
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"model.image.pretrained={source!r} is neither 'none', 'timm' nor an existing path: give a .safetensors "
            "file or a folder with timm's config.json + model.safetensors"
        )
    weights = path / TIMM_WEIGHTS if path.is_dir() else path
    if path.is_dir():
        _check_architecture(path / TIMM_CONFIG, cfg.name)
    if not weights.is_file():
        raise FileNotFoundError(f"model.image.pretrained: {weights} not found")
    return _create(cfg, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})


def _check_architecture(config_file: Path, name: str) -> None:
    """Refuse a local timm folder whose ``config.json`` names another architecture than ``name``."""
    if not config_file.is_file():
        return
    saved = json.loads(config_file.read_text(encoding="utf-8")).get("architecture")
    if saved is not None and saved.split(".")[0] != name.split(".")[0]:
        raise ValueError(f"{config_file}: holds weights for {saved!r}, but model.image.name is {name!r}")


class ImageEncoder(nn.Module):
    """A timm ``trunk``; ``forward`` returns (global feature [B, C], tokens [B, P, C], grid (h, w))."""

    def __init__(self, cfg: ImageEncoderConfig, trunk: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = trunk if trunk is not None else create_trunk(cfg)
        self.num_features = int(self.trunk.num_features)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute trunk activations in the backward pass to save memory."""
        self.trunk.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Global feature (the trunk's own pooling), local tokens and their grid for ``images`` [B, C, H, W]."""
        if images.ndim != 4 or images.shape[1] != self.cfg.in_chans:
            raise ValueError(
                f"image encoder expects [B, {self.cfg.in_chans}, H, W] (model.image.in_chans), got {tuple(images.shape)}"
            )
        features = self.trunk.forward_features(images)
        pooled = self.trunk.forward_head(features, pre_logits=True)
        if features.ndim == 4:  # CNN: [B, C, h, w] grid of the last stage
            grid = (features.shape[2], features.shape[3])
            tokens = features.flatten(2).transpose(1, 2)
        else:  # transformer: [B, prefix + P, C]
            tokens = features[:, getattr(self.trunk, "num_prefix_tokens", 0) :]
            grid = self._token_grid(tokens.shape[1])
        return pooled, tokens, grid

    def _token_grid(self, count: int) -> tuple[int, int]:
        """(h, w) of ``count`` patch tokens: the patch embedding's grid, else the square root."""
        grid = getattr(getattr(self.trunk, "patch_embed", None), "grid_size", None)
        if grid is not None and grid[0] * grid[1] == count:
            return int(grid[0]), int(grid[1])
        side = math.isqrt(count)
        if side * side != count:
            raise ValueError(f"cannot arrange {count} patch tokens in a grid")
        return side, side
