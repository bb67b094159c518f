"""Findings signatures and the TFN mask against a hand-made batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.data.findings import UNKNOWN, signature_of, signatures_from_annotations, tfn_mask

EFFUSION = {"label": "Pleural Effusion", "status": "present", "side": "left", "zone": None, "severity": "small"}


def test_signature_ignores_words_order_and_repeats_but_not_attributes() -> None:
    a = signature_of([dict(EFFUSION, phrase="small left effusion"), {"label": "Edema", "status": "present"}])
    b = signature_of([{"label": "Edema", "status": "present", "phrase": "x"}, dict(EFFUSION, phrase="y"),
                      dict(EFFUSION, phrase="z")])  # fmt: skip
    assert a == b and a >= 0
    assert signature_of([dict(EFFUSION, side="right")]) != signature_of([EFFUSION])
    assert signature_of([dict(EFFUSION, status="uncertain")]) != signature_of([EFFUSION])
    assert signature_of([]) == signature_of([])  # normal studies are identical to each other


def test_annotation_join_is_per_study(tmp_path: Path) -> None:
    images = {"d1": {"study_id": 1, "findings": [EFFUSION]}, "d2": {"study_id": 1, "findings": []},
              "d3": {"study_id": 2, "findings": [EFFUSION]}, "d4": {"study_id": 3, "findings": []}}  # fmt: skip
    path = tmp_path / "phantom_annotations.json"
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    sig = signatures_from_annotations(path)
    assert sig["d1"] == sig["d2"] == sig["d3"] != sig["d4"]
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json"):
        signatures_from_annotations(tmp_path / "bad.json")


def test_tfn_mask_on_a_hand_made_batch() -> None:
    sig = torch.tensor([7, 7, 3, UNKNOWN, 7, UNKNOWN])
    paired = torch.eye(6, dtype=torch.bool)
    mask = tfn_mask(sig, sig, paired)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for i, j in ((0, 1), (0, 4), (1, 4)):
        expected[i, j] = expected[j, i] = True
    assert torch.equal(mask, expected)


def test_collator_joins_signatures_by_dicom_id(tmp_path: Path) -> None:
    from pipeline.data.collate import Collator

    path = tmp_path / "phantom_annotations.json"
    path.write_text(json.dumps({"images": {"a": {"study_id": 1, "findings": [EFFUSION]},
                                           "b": {"study_id": 2, "findings": []}}}), encoding="utf-8")  # fmt: skip
    collator = Collator(tokenizer=None, max_length=8, findings_annotations=str(path))
    assert collator.findings(["b", "a"]).tolist() == [signature_of([]), signature_of([EFFUSION])]
    assert Collator(None, 8).findings(["a"]) is None
    with pytest.raises(ValueError, match="'zz'"):
        collator.findings(["a", "zz"])
