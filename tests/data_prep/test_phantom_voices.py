"""Radiologist voices (--report-voices): labels, annotations and report phrases stay consistent; TFNs are paraphrased."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from data_prep.make_phantoms import make_phantoms
from data_prep.phantom.case import NEGATED, PRESENT, UNCERTAIN, chexpert_labels
from data_prep.phantom.cohort import StudyPlan
from data_prep.phantom.report import render_report
from data_prep.phantom.voices import finding_sets, make_voices, voiced_case
from pipeline.data.findings import signatures_from_annotations

PLAN = StudyPlan(0, 10000032, 50414267, "train", 0, 1, "F", 50, 21800506, "213014.531")


def test_voiced_reports_carry_their_phrases_and_labels() -> None:
    voices, sets = make_voices(4), finding_sets(3, 5)
    texts_of_set: dict[tuple, set[str]] = defaultdict(set)
    for i in range(400):
        rng = np.random.default_rng([5, i])
        case = voiced_case(rng, voices[i % 4], sets)
        report = render_report(rng, PLAN, case, non_ascii=False)
        labels = chexpert_labels(case)
        for f in case.findings:
            assert f.phrase in report, (f.phrase, report)
            for name in f.labels:
                assert labels[name] == (PRESENT if f.status == "present" else UNCERTAIN), (name, report)
        drawn = {n for f in case.findings for n in f.labels}
        assert not any(labels[n] == NEGATED for n in drawn), report
        pathology = drawn - {"Support Devices"}
        assert (labels["No Finding"] == PRESENT) == (not pathology), report
        assert ("FINDINGS:" in report) == (not voices[i % 4].impression_only)
        key = tuple((f.kind, f.labels, f.status, f.side, f.zone, f.severity, f.size_mm) for f in case.findings)
        texts_of_set[key].add(" ".join(s.text for s in case.statements()))
    assert len(texts_of_set) <= 6  # five sets plus normal
    assert all(len(texts) >= 3 for texts in texts_of_set.values())  # the same findings in different words


def test_voiced_set_records_voices_and_size_buckets(tmp_path: Path) -> None:
    out = make_phantoms(tmp_path / "v", 12, 3, image_size_range=(64, 72), split_fractions=(0.6, 0.2, 0.2),
                        report_voices=3, finding_sets=2)  # fmt: skip
    doc = json.loads((out / "phantom_annotations.json").read_text(encoding="utf-8"))
    assert doc["generator"]["report_voices"] == 3 and doc["generator"]["finding_sets"] == 2
    findings = [f for ann in doc["images"].values() for f in ann["findings"]]
    assert findings and all("size_bucket" in f for f in findings)
    signatures = signatures_from_annotations(out / "phantom_annotations.json")
    assert set(signatures) == set(doc["images"]) and len(set(signatures.values())) <= 3  # 2 sets + normal
