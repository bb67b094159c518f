"""Heads on a frozen image encoder: its feature maps, the segmentation decoders and the ViTDet simple pyramid.

ViT encoders give one map (patch tokens on their grid); CNN encoders give their stage pyramid
(``timm``'s ``forward_intermediates``). Segmentation: a SETR-style decoder on the ViT map (MGCA:
4 x conv-BN-ReLU-2x upsample, 512/256/128/64 channels) or segmentation-models-pytorch's U-Net
decoder over the CNN pyramid. Detection: the CNN's last three stages, or for a ViT a
ViTDet-style simple feature pyramid (strides 8/16/32) built from its one map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from pipeline.models.image_encoder import ImageEncoder

SETR_CHANNELS = (512, 256, 128, 64)
UNET_CHANNELS = (256, 128, 64, 32, 16)  # segmentation-models-pytorch's default


def is_vit(encoder: ImageEncoder) -> bool:
    """Whether the trunk is a transformer with patch tokens (else a CNN with a stage pyramid)."""
    return hasattr(encoder.trunk, "patch_embed")


def encoder_maps(encoder: ImageEncoder, images: torch.Tensor) -> list[torch.Tensor]:
    """Frozen feature maps of ``images`` [B, C, S, S]: ``[tokens as [B, D, h, w]]`` (ViT) or the stage pyramid (CNN)."""
    if is_vit(encoder):
        _, tokens, (h, w) = encoder(images)
        return [tokens.transpose(1, 2).reshape(len(images), -1, h, w)]
    return list(encoder.trunk.forward_intermediates(images, intermediates_only=True))


def map_channels(encoder: ImageEncoder) -> list[int]:
    """Channels of each map :func:`encoder_maps` returns."""
    if is_vit(encoder):
        return [encoder.num_features]
    info = encoder.trunk.feature_info  # a FeatureInfo for features_only trunks, else timm's list of dicts
    return [int(c) for c in (info.channels() if hasattr(info, "channels") else (i["num_chs"] for i in info))]


class SetrDecoder(nn.Module):
    """SETR-PUP-style: per block conv3x3-BN-ReLU then 2x bilinear upsampling; a 1x1 conv to one logit map."""

    def __init__(self, in_channels: int, channels: tuple[int, ...] = SETR_CHANNELS) -> None:
        super().__init__()
        blocks, previous = [], in_channels
        for width in channels:
            blocks += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]  # fmt: skip
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(previous, 1, 1)

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits ``[B, 1, *size]`` from the one ViT map (resized to ``size`` when the patch is not 16)."""
        logits = self.out(self.blocks(maps[-1]))
        return logits if logits.shape[-2:] == size else F.interpolate(logits, size=size, mode="bilinear")


class UnetHead(nn.Module):
    """segmentation-models-pytorch's U-Net decoder over the frozen CNN pyramid (the image itself as the top skip)."""

    def __init__(self, in_chans: int, channels: list[int], decoder_channels: tuple[int, ...] = UNET_CHANNELS) -> None:
        super().__init__()
        self.decoder = UnetDecoder([in_chans, *channels], list(decoder_channels[: len(channels)]),
                                   n_blocks=len(channels))  # fmt: skip
        self.out = nn.Conv2d(decoder_channels[len(channels) - 1], 1, 3, padding=1)

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits ``[B, 1, *size]``; the decoder only reads the size of its first (full-resolution) entry."""
        top = maps[0].new_zeros(maps[0].shape[0], 0, *size)
        return self.out(self.decoder([top, *maps]))


def build_segmentation_head(encoder: ImageEncoder, setr_channels: tuple[int, ...] = SETR_CHANNELS) -> nn.Module:
    """SETR decoder (``setr_channels`` wide) for a ViT, U-Net decoder for a CNN."""
    channels = map_channels(encoder)
    if is_vit(encoder):
        return SetrDecoder(channels[0], tuple(setr_channels))
    return UnetHead(encoder.cfg.in_chans, channels)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple pyramid from the last block's map (stride 16): 2x deconv (8), identity (16), 2x pool (32)."""

    def __init__(self, in_channels: int, out_channels: int = 256) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                          nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
            for c in (in_channels // 2, in_channels, in_channels)
        )  # fmt: skip
        self.channels = [out_channels] * 3

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Three maps at strides 8, 16 and 32 (for a stride-16 patch grid)."""
        x = maps[-1]
        levels = (self.up(x), x, F.max_pool2d(x, 2, ceil_mode=True))
        return [layer(level) for layer, level in zip(self.lateral, levels)]


class LastStages(nn.Module):
    """The CNN pyramid's last three stages (strides 8, 16, 32), unchanged."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.channels = channels[-3:]

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The last three maps."""
        return maps[-3:]


def build_detection_neck(encoder: ImageEncoder) -> nn.Module:
    """Simple feature pyramid for a ViT, the last three stages for a CNN; ``.channels`` lists its outputs."""
    channels = map_channels(encoder)
    return SimpleFeaturePyramid(channels[0]) if is_vit(encoder) else LastStages(channels)
