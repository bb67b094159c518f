"""Batch: one collated micro-batch of training pairs, typed (what the collator produces and the trainer steps on)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """B training pairs: images, tokens, and per-sample side information for the losses.

    To add a per-sample field, add it here as an optional tensor (default None) and fill it in
    ``Collator.__call__``: moving, pinning and slicing follow every tensor field.
    """

    keys: list[str]  # dicom_ids
    images: torch.Tensor  # [B, C, S, S] normalised
    input_ids: torch.Tensor  # [B, L] padded to the tokenizer max length
    attention_mask: torch.Tensor  # [B, L]
    word_ids: torch.Tensor  # [B, L] word index of each token, -1 for specials and padding
    labels: torch.Tensor  # [B, 14] CheXpert values (unknown = 0)
    labels_known: torch.Tensor  # [B, 14] bool: which label values are known
    report_emb: torch.Tensor | None = None  # [B, Dr] float32 precomputed report embeddings, or None
    findings: torch.Tensor | None = None  # [B] int64 findings signatures (pipeline.data.findings), or None

    def __len__(self) -> int:
        return len(self.keys)

    def _map(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Batch:
        """A copy with ``fn(name, tensor)`` applied to every tensor field."""
        return dataclasses.replace(self, **{
            f.name: fn(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        })

    def to(self, device: torch.device | str, image_dtype: torch.dtype | None = None) -> Batch:
        """The batch on ``device`` (non-blocking), images cast to ``image_dtype`` when given."""
        return self._map(lambda name, t: t.to(device, dtype=image_dtype if name == "images" else None,
                                              non_blocking=True))

    def pin_memory(self) -> Batch:
        """Page-locked copies of the tensors (the DataLoader calls this with ``pin_memory=True``)."""
        return self._map(lambda _, t: t.pin_memory())

    def rows(self, start: int, stop: int) -> Batch:
        """Samples ``start:stop`` as a batch."""
        return dataclasses.replace(self._map(lambda _, t: t[start:stop]), keys=self.keys[start:stop])


def concat_optional(batches: list[Batch], name: str) -> torch.Tensor | None:
    """Field ``name`` concatenated over batches (None when any batch lacks it)."""
    values = [getattr(b, name) for b in batches]
    return None if any(v is None for v in values) else torch.cat(values, dim=0)
