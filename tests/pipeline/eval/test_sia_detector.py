"""The standalone detector scorer against a hand-made set."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.eval.sia_detector import score_detector


def test_score_detector_on_a_hand_made_set() -> None:
    # Samples 0,1 identical findings with identical words; 2,3 identical findings in different words (cos 0);
    # 4 differs in findings but shares 0's words.
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    signatures = torch.tensor([1, 1, 2, 2, 3])
    (row,) = score_detector(vectors, signatures, [0.99], centering=False, batch_size=5, batches=3, seed=0,
                            soft_temperature=0.05)  # fmt: skip
    # predicted pairs: (0,1), (0,4), (1,4) both ways = 6; true: (0,1), (2,3) both ways = 4; hits: 2
    assert row["eliminated_per_row"] == pytest.approx(6 / 5)
    assert row["tfn_per_row"] == pytest.approx(4 / 5)
    assert row["fn_precision"] == pytest.approx(2 / 6) and row["fn_recall"] == pytest.approx(2 / 4)
    (none,) = score_detector(vectors, signatures, [1.5], centering=True, batch_size=5, batches=1, seed=0,
                             soft_temperature=0.05)  # fmt: skip
    assert none["eliminated_per_row"] == 0.0 and math.isnan(none["fn_precision"]) and none["fn_recall"] == 0.0


def test_each_threshold_has_its_own_counts() -> None:
    # Several κ in one call score exactly as each κ alone (counters were once shared across κ).
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    signatures = torch.tensor([1, 1, 2, 2, 3])
    common = {"centering": False, "batch_size": 5, "batches": 2, "seed": 0, "soft_temperature": 0.05}
    together = score_detector(vectors, signatures, [0.5, 0.99, 1.5], **common)
    alone = [score_detector(vectors, signatures, [k], **common)[0] for k in (0.5, 0.99, 1.5)]
    assert [r["eliminated_per_row"] for r in together] == [r["eliminated_per_row"] for r in alone]
    # κ 0.5 also takes sample 3 (cos 0.71 with every other sample): 6 + 8 ordered pairs
    assert [r["eliminated_per_row"] for r in together] == pytest.approx([14 / 5, 6 / 5, 0.0])
