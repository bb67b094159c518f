"""Turn decoded samples into a batch: images, tokens (fixed max length), report embeddings, labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.data.batch import Batch
from pipeline.data.findings import signatures_from_annotations


@dataclass
class Sample:
    """One decoded, transformed training pair."""

    key: str  # dicom_id
    image: torch.Tensor  # [1, S, S] normalised grey
    text: str
    report_emb: np.ndarray | None  # [D] float16, L2-normalised, or None when the shard has none
    labels: list[float | None]  # 14 CheXpert values (1, 0, -1 or None)


def label_tensor(rows: list[list[float | None]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Label values as float [B, K] (unknown = 0) and a bool mask [B, K] of the known ones."""
    known = torch.tensor([[v is not None for v in row] for row in rows], dtype=torch.bool)
    values = torch.tensor([[0.0 if v is None else float(v) for v in row] for row in rows], dtype=torch.float32)
    return values, known


class Collator:
    """Tokenises the texts (padded to ``max_length``) and stacks everything else into a :class:`Batch`.

    With ``findings_annotations`` (a phantom set's annotation file) every batch carries the findings
    signature of each sample (pipeline.data.findings), joined by dicom_id.
    """

    def __init__(self, tokenizer: Any, max_length: int, findings_annotations: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.findings_annotations = findings_annotations
        self.signatures = None if findings_annotations is None else signatures_from_annotations(findings_annotations)

    def tokenise(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask and word_ids ([B, L], -1 for specials and padding)."""
        enc = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        word_ids = torch.tensor(
            [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))], dtype=torch.long
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "word_ids": word_ids}

    def __call__(self, samples: list[Sample]) -> Batch:
        """Collate samples into a batch; report_emb is None unless every sample has one."""
        with_emb = [s.report_emb is not None for s in samples]
        report_emb = None
        if all(with_emb):
            report_emb = torch.from_numpy(np.stack([s.report_emb for s in samples]).astype(np.float32))
        elif any(with_emb):
            missing = [s.key for s in samples if s.report_emb is None]
            raise ValueError(f"samples {missing[:5]} have no report_emb.npy while others in the batch do")
        tokens = self.tokenise([s.text for s in samples])
        labels, known = label_tensor([s.labels for s in samples])
        return Batch(keys=[s.key for s in samples], images=torch.stack([s.image for s in samples]),
                     input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                     word_ids=tokens["word_ids"], labels=labels, labels_known=known, report_emb=report_emb,
                     findings=self.findings([s.key for s in samples]))

    def findings(self, keys: list[str]) -> torch.Tensor | None:
        """The findings signatures [B] int64 of ``keys`` (None without an annotation file)."""
        if self.signatures is None:
            return None
        missing = [k for k in keys if k not in self.signatures]
        if missing:
            raise ValueError(f"samples {missing[:5]} are not in {self.findings_annotations} (data.findings_annotations "
                             "must be the annotation file of the phantom set these shards were made from)")
        return torch.tensor([self.signatures[k] for k in keys], dtype=torch.long)
