"""The segmentation/detection heads on the ablation's CNN trunk (ResNet-18 at output stride 16, not features_only)."""

from __future__ import annotations

import torch

from pipeline.eval.dense_heads import encoder_maps, map_channels
from pipeline.models import ImageEncoderConfig
from pipeline.models.image_encoder import ImageEncoder


def test_map_channels_match_the_maps_of_a_plain_timm_cnn() -> None:
    """timm keeps feature_info as a list of dicts on a plain (not features_only) trunk: the channels still come out."""
    cfg = ImageEncoderConfig(name="resnet18", in_chans=1, img_size=64, pretrained="none",
                             timm_kwargs={"output_stride": 16})
    encoder = ImageEncoder(cfg).eval()
    with torch.no_grad():
        maps = encoder_maps(encoder, torch.randn(2, 1, 64, 64))
    assert map_channels(encoder) == [m.shape[1] for m in maps] == [64, 64, 128, 256, 512]
