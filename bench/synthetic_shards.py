"""Synthetic shards in the sharder's format (grey PNGs, report text, report embeddings) plus a tokenizer.

For benchmarks on machines without the phantom generator's inputs: sample contents are random, the
format (tar members, manifest) is exactly what ``pipeline.data`` reads.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from data_prep.mimic_metadata import CHEXPERT_LABELS
from pipeline.shard_format import (
    MANIFEST,
    REPORT_EMBEDDING_MEMBER,
    ImageInfo,
    ReportEncoderInfo,
    ShardManifest,
    ShardRecord,
    SplitEntry,
    shard_path,
    write_json_atomic,
)

WORDS = ("no acute cardiopulmonary process small left pleural effusion right lower lobe opacity heart size "
         "normal mild pulmonary edema atelectasis pneumothorax stable support devices lines tubes").split()
LABELS = list(CHEXPERT_LABELS)  # the sharder's label order


def _write_shard(args: tuple[Path, int, int, int, int, int]) -> ShardRecord:
    """Write one shard of ``count`` samples starting at ``start``."""
    import webdataset as wds
    from PIL import Image

    out, index, start, count, size, dim = args
    rng = np.random.default_rng(index)
    rel = shard_path("train", index)
    with wds.TarWriter(str(out / rel)) as sink:
        for i in range(start, start + count):
            base = np.linspace(40, 200, size, dtype=np.float32)[None, :] + rng.normal(0, 20, (size, size))
            buf = io.BytesIO()
            Image.fromarray(base.clip(0, 255).astype(np.uint8), mode="L").save(buf, format="PNG", compress_level=1)
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 40))))
            emb = rng.normal(size=dim)
            emb_buf = io.BytesIO()
            np.save(emb_buf, (emb / np.linalg.norm(emb)).astype(np.float16))
            meta = {"subject_id": i, "study_id": i, "dicom_id": f"syn{i:08d}", "view": "PA", "split": "train",
                    "sections": {"findings": text, "impression": None, "fallback": None},
                    "labels": {"names": LABELS, "values": [float(v) for v in rng.integers(0, 2, 14)]},
                    "transform": {}, "original_size": [size, size]}
            sink.write({"__key__": f"syn{i:08d}", "png": buf.getvalue(), "txt": text,
                        "json": json.dumps(meta).encode(), REPORT_EMBEDDING_MEMBER: emb_buf.getvalue()})
    return ShardRecord(rel, count, (out / rel).stat().st_size)


def write_synthetic_shards(out: Path, samples: int, shard_size: int, image_size: int, workers: int,
                           emb_dim: int = 384) -> Path:
    """Write ``out/train/*.tar``, ``out/manifest.json`` and a WordPiece tokenizer in ``out/tokenizer``."""
    from transformers import BertTokenizerFast

    (out / "train").mkdir(parents=True, exist_ok=True)
    jobs = [(out, i, s, min(shard_size, samples - s), image_size, emb_dim)
            for i, s in enumerate(range(0, samples, shard_size))]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        entries = list(pool.map(_write_shard, jobs))
    manifest = ShardManifest(splits={"train": SplitEntry(samples, tuple(entries))}, label_names=tuple(LABELS),
                             image=ImageInfo("png", 8, image_size, "synthetic"),
                             report_encoder=ReportEncoderInfo("synthetic", emb_dim, "mean"))
    write_json_atomic(out / MANIFEST, manifest.to_json())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(out / "tokenizer")
    return out / MANIFEST
