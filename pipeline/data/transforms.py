"""Image decoding and the training / evaluation transforms (float tensors, explicit random generators).

Augmentations draw from a ``torch.Generator`` seeded per sample (run seed, epoch, sample key), so a
sample gets the same augmentation whichever worker or rank reads it and after a resume.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image


@dataclass
class TransformConfig:
    """Image geometry, augmentation strengths and normalisation (YAML section ``data.transform``)."""

    image_size: int  # side of the square crop fed to the model, pixels
    resize_size: int  # eval: short side resized to this before the centre crop, pixels
    crop_scale: tuple[float, float]  # train: random resized crop area fraction range
    crop_ratio: tuple[float, float]  # train: random resized crop aspect ratio range
    rotate_degrees: float  # train: affine rotation drawn from [-r, r]
    translate: float  # train: affine translation, fraction of the side
    scale: tuple[float, float]  # train: affine zoom range
    brightness: float  # train: brightness factor drawn from [1-b, 1+b]
    contrast: float  # train: contrast factor drawn from [1-c, 1+c]
    mean: float  # normalisation of [0, 1] intensities
    std: float
    channels: int  # grey repeated to this many channels (eval: in the transform; train: after the device copy)


def decode_image(data: bytes, ext: str) -> torch.Tensor:
    """Decode PNG (8- or 16-bit grey) or JPEG bytes to a float32 tensor [1, H, W] in [0, 1]."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img, dtype=np.float32) / 65535.0
        else:
            if img.mode != "L":
                img = img.convert("L")
            array = np.asarray(img, dtype=np.float32) / 255.0
    if array.ndim != 2:
        raise ValueError(f"{ext} image has shape {array.shape}, expected a 2-D grey image")
    return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0)


def sample_generator(seed: int, epoch: int, key: str) -> torch.Generator:
    """A generator seeded by (seed, epoch, sample key), independent of worker and rank."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return gen


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    """One float drawn uniformly from [low, high]."""
    return low + (high - low) * float(torch.rand((), generator=gen))


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a random area fraction and aspect ratio (centre crop fallback)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def normalise(image: torch.Tensor, cfg: TransformConfig) -> torch.Tensor:
    """(x - mean) / std on [0, 1] intensities; stays one grey channel (the loader ships 1/C of the bytes)."""
    return (image - cfg.mean) / cfg.std


def expand_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat the grey channel of a batch [B, 1, S, S] to ``channels`` (a view; done after the device copy)."""
    return images if images.shape[1] == channels else images.expand(-1, channels, -1, -1)


def train_transform(image: torch.Tensor, cfg: TransformConfig, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop, small affine, brightness/contrast jitter, normalise: [1,H,W] -> [1,S,S]."""
    _, height, width = image.shape
    top, left, h, w = random_resized_crop_box(height, width, cfg.crop_scale, cfg.crop_ratio, gen)
    size = [cfg.image_size, cfg.image_size]
    image = TF.resized_crop(image, top, left, h, w, size, antialias=True)
    angle = _uniform(gen, -cfg.rotate_degrees, cfg.rotate_degrees)
    shift = [round(_uniform(gen, -cfg.translate, cfg.translate) * cfg.image_size) for _ in range(2)]
    zoom = _uniform(gen, *cfg.scale)
    image = TF.affine(image, angle=angle, translate=shift, scale=zoom, shear=[0.0, 0.0],
                      interpolation=TF.InterpolationMode.BILINEAR)
    image = TF.adjust_brightness(image, _uniform(gen, 1 - cfg.brightness, 1 + cfg.brightness))
    image = TF.adjust_contrast(image, _uniform(gen, 1 - cfg.contrast, 1 + cfg.contrast))
    return normalise(image.clamp_(0.0, 1.0), cfg)  # one channel: expand_channels runs on the device


def eval_transform(image: torch.Tensor, cfg: TransformConfig) -> torch.Tensor:
    """Resize the short side to ``resize_size``, centre crop ``image_size``, normalise: [1,H,W] -> [C,S,S]."""
    image = TF.resize(image, [cfg.resize_size], antialias=True)
    image = TF.center_crop(image, [cfg.image_size, cfg.image_size])
    return normalise(image.clamp_(0.0, 1.0), cfg).expand(cfg.channels, -1, -1).contiguous()
