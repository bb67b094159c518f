"""Tiny WebDataset shards in the sharder's format, built on the fly (no dependency on the sharder)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_prep.mimic_metadata import CHEXPERT_LABELS
from pipeline import shard_format as fmt

LABELS = list(CHEXPERT_LABELS)  # the sharder's label order


def _png(value: int, size: int) -> bytes:
    """An 8-bit grey PNG whose pixels encode ``value`` (so tests can recognise samples)."""
    array = np.full((size, size), value % 256, dtype=np.uint8)
    array[0, 0] = 0
    buf = io.BytesIO()
    Image.fromarray(array, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_tiny_shards(
    out: Path, num_samples: int, shard_size: int, *, corrupt: tuple[int, ...] = (), image_size: int = 24, dim: int = 8
) -> Path:
    """Write ``out/train/train-%06d.tar`` + ``out/manifest.json``; sample i has key ``d{i:05d}``."""
    (out / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for start in range(0, num_samples, shard_size):
        rel = fmt.shard_path("train", start // shard_size)
        count = 0
        with wds.TarWriter(str(out / rel)) as sink:
            for i in range(start, min(start + shard_size, num_samples)):
                emb = rng.normal(size=dim)
                emb = (emb / np.linalg.norm(emb)).astype(np.float16)
                buf = io.BytesIO()
                np.save(buf, emb)
                meta = {
                    "subject_id": i, "study_id": i, "dicom_id": f"d{i:05d}", "view": "PA", "split": "train",
                    "sections": {"findings": None, "impression": f"report {i}", "fallback": None},
                    "labels": {"names": LABELS, "values": [1.0, 0.0, -1.0, None] + [0.0] * 10},
                    "transform": {}, "original_size": [image_size, image_size],
                }
                image = b"not a png" if i in corrupt else _png(i, image_size)
                sink.write({"__key__": f"d{i:05d}", "png": image, "txt": f"report number {i} no effusion",
                            "json": json.dumps(meta).encode(), "report_emb.npy": buf.getvalue()})
                count += 1
        entries.append(fmt.ShardRecord(rel, count, (out / rel).stat().st_size))
    manifest = fmt.ShardManifest(splits={"train": fmt.SplitEntry(num_samples, tuple(entries))}, label_names=tuple(LABELS),
                             image=fmt.ImageInfo("png", 8, image_size, "synthetic"),
                             report_encoder=fmt.ReportEncoderInfo("random", dim, "mean"))
    (out / "manifest.json").write_text(json.dumps(manifest.to_json()))
    return out / "manifest.json"


@pytest.fixture
def tiny_shards(tmp_path: Path):
    """Factory fixture: ``tiny_shards(num_samples, shard_size, corrupt=())`` -> manifest path."""

    def make(num_samples: int, shard_size: int, corrupt: tuple[int, ...] = ()) -> Path:
        return write_tiny_shards(tmp_path / f"shards{num_samples}_{shard_size}", num_samples, shard_size, corrupt=corrupt)

    return make
