"""The findings-geometry metric (retrieval task) against a hand-computed case, a pair loop, and without annotations."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.eval.adapters.base import LabelledImages
from pipeline.eval.config import EvalConfig
from pipeline.eval.retrieval import findings_geometry, run_retrieval

# Findings A = {A, A, A, B, B}; texts x, y, x, z, w. Pairs i<j: (0,1) (1,2) (3,4) identical findings in
# other words = positives; (0,2) identical findings and words = left out; the 6 cross pairs = negatives.
SIGNATURES = np.array([5, 5, 5, 9, 9])
TEXTS = ["x", "y", "x", "z", "w"]


def _unit(degrees: list[float]) -> np.ndarray:
    """2-D unit vectors at these angles (their cosines are cos of the angle differences)."""
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# Text angles 0, 90, 0, 180, 90: positives (0,1) (1,2) (3,4) all cos 0; negatives (0,3) -1, (0,4) 0,
# (1,3) 0, (1,4) 1, (2,3) -1, (2,4) 0. Each positive beats 2, ties 3, loses 1: AUROC = 3.5/6 = 7/12.
# (Had (0,2), cos 1, counted as a positive it would be (3 x 3.5 + 5) / 24.)
TEXT_EMB = _unit([0, 90, 0, 180, 90])
# Image angles 0, 0, 180, 90, 90: positives cos 1, -1, 1; every negative cos 0. AUROC = (6 + 0 + 6)/18 = 2/3.
IMAGE_EMB = 3.0 * _unit([0, 0, 180, 90, 90])  # not unit length: the metric normalises


def test_findings_geometry_hand_case() -> None:
    got = findings_geometry(IMAGE_EMB, TEXT_EMB, TEXTS, SIGNATURES)
    assert got["paraphrase_pairs"] == 3 and got["different_findings_pairs"] == 6
    assert got["text_auroc"] == pytest.approx(7 / 12)
    assert got["image_auroc"] == pytest.approx(2 / 3)


def test_findings_geometry_matches_a_pair_loop() -> None:
    rng = np.random.default_rng(0)
    n = 30
    sig = rng.integers(0, 4, n)
    texts = [f"t{v}" for v in rng.integers(0, 6, n)]
    emb = rng.normal(size=(n, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pos, neg = [], []
    for i, j in itertools.combinations(range(n), 2):
        cos = float(emb[i] @ emb[j])
        if sig[i] != sig[j]:
            neg.append(cos)
        elif texts[i] != texts[j]:
            pos.append(cos)
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    got = findings_geometry(emb, emb, texts, sig)
    assert (got["paraphrase_pairs"], got["different_findings_pairs"]) == (len(pos), len(neg))
    assert got["text_auroc"] == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


def test_findings_geometry_undefined_without_paraphrases() -> None:
    got = findings_geometry(IMAGE_EMB, TEXT_EMB, ["x", "x", "x", "z", "z"], SIGNATURES)
    assert got["paraphrase_pairs"] == 0 and got["text_auroc"] is None and got["image_auroc"] is None


class _Context:
    """The three things run_retrieval asks of an EvalContext, over fixed embeddings."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg

    def shard_split(self, split: str) -> LabelledImages:
        ids = [f"d{i}" for i in range(5)]
        return LabelledImages("test", ids, [None] * 5, np.eye(5)[:, :2], ["a", "b"], "multilabel", texts=TEXTS)

    def image_features(self, data: LabelledImages, which: str) -> np.ndarray:
        return IMAGE_EMB

    def text_features(self, texts: list[str], desc: str) -> np.ndarray:
        return TEXT_EMB


def _config(tmp_path: Path, repo_root: Path, *overrides: str) -> EvalConfig:
    return load_config(EvalConfig, repo_root / "configs/eval/retrieval.yaml",
                       [f"checkpoint={tmp_path}", "bootstrap.n_boot=10", *overrides])  # fmt: skip


def test_retrieval_reports_geometry_only_with_annotations(tmp_path: Path, repo_root: Path) -> None:
    finding = {"label": "Edema", "status": "present", "side": None, "zone": None, "severity": "mild"}
    images = {f"d{i}": {"study_id": i, "findings": [finding] if i < 3 else []} for i in range(5)}
    annotations = tmp_path / "phantom_annotations.json"
    annotations.write_text(json.dumps({"images": images}), encoding="utf-8")

    plain = run_retrieval(_Context(_config(tmp_path, repo_root)))
    assert "findings_geometry" not in plain.metrics
    assert not any("findings geometry" in row[0] for row in plain.table)

    with_truth = run_retrieval(_Context(_config(tmp_path, repo_root, f"data.phantom_annotations={annotations}")))
    geometry = with_truth.metrics["findings_geometry"]
    assert geometry["text_auroc"] == pytest.approx(7 / 12) and geometry["image_auroc"] == pytest.approx(2 / 3)
    rows = {row[0]: row[1] for row in with_truth.table if "findings geometry" in row[0]}
    assert sorted(rows.values()) == ["58.3", "66.7"] and all("3 vs 6 pairs" in what for what in rows)

    del images["d4"]
    annotations.write_text(json.dumps({"images": images}), encoding="utf-8")
    with pytest.raises(ValueError, match="'d4'"):
        run_retrieval(_Context(_config(tmp_path, repo_root, f"data.phantom_annotations={annotations}")))
