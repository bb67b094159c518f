"""Frozen text model that embeds each report once (SIA's ``precomputed`` similarity source).

Mean-pooled over non-padding tokens, L2-normalised, stored as float16. The model runs in eval
mode on CPU with one thread, in batches whose composition is fixed by the shard, so the bytes do
not depend on the number of worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EncoderInfo:
    """What the manifest records about the report encoder."""

    name: str
    dim: int
    pooling: str = "mean"


class ReportEncoder:
    """A Hugging Face encoder (hub name or local directory) loaded frozen for report embeddings."""

    def __init__(self, name_or_dir: str, batch_size: int, max_length: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(1)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
            self.model = AutoModel.from_pretrained(name_or_dir).eval()
        except (OSError, ValueError) as err:
            raise ValueError(f"report encoder {name_or_dir!r} cannot be loaded: {err}") from err
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.name, self.batch_size, self.max_length = name_or_dir, batch_size, max_length
        self.info = EncoderInfo(name=name_or_dir, dim=int(self.model.config.hidden_size))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[N, dim] float16 L2-normalised mean-pooled embeddings, computed in fixed batches of ``batch_size``."""
        import torch

        out = np.zeros((len(texts), self.info.dim), dtype=np.float16)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start : start + self.batch_size])
                enc = self.tokenizer(
                    batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
                pooled = torch.nn.functional.normalize(pooled.double(), dim=-1)
                out[start : start + len(batch)] = pooled.numpy().astype(np.float16)
        return out


def npy_bytes(vector: np.ndarray) -> bytes:
    """A 1-D array as ``.npy`` file bytes (deterministic header)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(vector), allow_pickle=False)
    return buf.getvalue()
