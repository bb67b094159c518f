"""Frozen-encoder features: images through the eval transform and the image tower, texts through the text tower."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pipeline.data.collate import Collator
from pipeline.data.transforms import TransformConfig, eval_transform
from pipeline.eval.adapters.base import ImageLoader


class _EvalImages(Dataset):
    """Loaders through the eval transform (resize, centre crop, normalise)."""

    def __init__(self, loaders: Sequence[ImageLoader], transform: TransformConfig) -> None:
        self.loaders, self.transform = loaders, transform

    def __len__(self) -> int:
        return len(self.loaders)

    def __getitem__(self, index: int) -> torch.Tensor:
        return eval_transform(self.loaders[index](), self.transform)


def image_batches(
    loaders: Sequence[ImageLoader], transform: TransformConfig, batch_size: int, num_workers: int, desc: str
):
    """Yield eval-transformed image batches ``[b, C, S, S]`` in order, with a progress bar."""
    loader = DataLoader(
        _EvalImages(loaders, transform), batch_size=batch_size, num_workers=num_workers, shuffle=False
    )
    # disable=None: no bar when stderr is not a TTY (CI logs)
    yield from tqdm(loader, desc=desc, unit="batch", disable=None, leave=False)


FEATURE_KINDS = ("global", "backbone")


def image_feature(model: torch.nn.Module, images: torch.Tensor, which: str) -> torch.Tensor:
    """``[b, D]`` projected, L2-normalised embedding (``global``) or ``[b, F]`` trunk pooled feature (``backbone``)."""
    if which == "global":
        return model.encode_image(images).global_emb
    if which == "backbone":
        return model.image_encoder(images)[0]
    raise ValueError(f"which must be one of {FEATURE_KINDS}, got {which!r}")


@torch.inference_mode()
def embed_images(
    model: torch.nn.Module,
    loaders: Sequence[ImageLoader],
    transform: TransformConfig,
    *,
    which: str,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    desc: str = "images",
) -> np.ndarray:
    """One feature row per image (eval transform, no augmentation), float32.

    ``which="global"``: the projected, L2-normalised global embedding ``[n, D]`` (zero-shot,
    retrieval); ``which="backbone"``: the trunk's pooled feature before the projection head
    ``[n, F]`` (the usual linear-probe input).
    """
    if which not in FEATURE_KINDS:
        raise ValueError(f"which must be one of {FEATURE_KINDS}, got {which!r}")
    model.eval()
    rows = [image_feature(model, images.to(device), which).float().cpu()
            for images in image_batches(loaders, transform, batch_size, num_workers, desc)]
    return torch.cat(rows).numpy()


@torch.inference_mode()
def embed_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
    desc: str = "texts",
) -> np.ndarray:
    """Projected, L2-normalised global text embeddings ``[n, D]`` (float32)."""
    model.eval()
    rows = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=None, leave=False):
        enc = Collator(tokenizer, max_length).tokenise(list(texts[start : start + batch_size]))
        features = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        rows.append(features.global_emb.float().cpu())
    return torch.cat(rows).numpy() if rows else np.zeros((0, 0), dtype=np.float32)
