"""MIMIC-style report text: the header sections and the layout around the statements of ``case``.

The header (examination, indication, technique, comparison) carries no finding words, so the
labels stay exactly those of the statements. Lines are wrapped like MIMIC's (about 78 columns, a
leading space) without ever breaking a finding's phrase, so each phrase appears verbatim.
"""

from __future__ import annotations

import numpy as np

from data_prep.phantom.case import StudyCase, pick
from data_prep.phantom.cohort import StudyPlan

LINE_WIDTH = 78
EXAMINATIONS = {"PA+LAT": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)", "PA": "CHEST (PA)"}
TECHNIQUES = {
    "PA+LAT": ("PA and lateral views of the chest.", "Chest PA and lateral."),
    "AP": ("Portable AP chest radiograph.", "Single frontal view of the chest."),
    "PA": ("Single PA view of the chest.",),
}
COMPLAINTS = ("shortness of breath", "cough and fever", "chest pain", "hypoxia", "status post fall",
              "weakness", "pre-operative evaluation", "dyspnea on exertion", "tachycardia")  # fmt: skip
QUESTIONS = ("eval for acute process", "r/o pneumonia", "eval for infiltrate", "assess interval change",
             "eval for effusion", "please evaluate")  # fmt: skip
NON_ASCII_INDICATIONS = ("fever to 38.9 °C", "SpO₂ 88% on room air", "transfer from Hôpital ___",
                         "cough × 3 days", "pain – worse on inspiration")  # fmt: skip


def exam_key(views: tuple[str, ...]) -> str:
    """The examination kind of a view set: "PA+LAT", "AP" or "PA"."""
    if views == ("AP",):
        return "AP"
    return "PA+LAT" if len(views) > 1 else "PA"


def _wrap(text: str, protected: list[str]) -> list[str]:
    """Greedy word wrap at ``LINE_WIDTH`` that keeps every protected phrase on one line."""
    glue = "\u0000"
    for phrase in sorted(protected, key=len, reverse=True):
        text = text.replace(phrase, phrase.replace(" ", glue))
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > LINE_WIDTH:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return [ln.replace(glue, " ") for ln in lines]


def render_report(rng: np.random.Generator, plan: StudyPlan, case: StudyCase, non_ascii: bool) -> str:
    """The full report text of one study (UTF-8; ``non_ascii`` puts a non-ASCII character in the indication)."""
    protected = [f.phrase for f in case.findings]
    key = exam_key(case.views)
    man_woman = "woman" if plan.sex == "F" else "man"
    complaint = pick(rng, NON_ASCII_INDICATIONS) if non_ascii else pick(rng, COMPLAINTS)
    if any(f.kind == "device" for f in case.findings) and rng.random() < 0.5:
        complaint = "line placement"
    indication = pick(rng, (f"___-year-old {man_woman} with {complaint}.  // {pick(rng, QUESTIONS)}",
                            f"___{plan.sex} with {complaint}", f"History: ___{plan.sex} with {complaint}"))  # fmt: skip
    comparison = "None." if plan.study_in_patient == 0 else pick(rng, ("___", "Chest radiograph from ___.", "___."))
    header = [
        f"EXAMINATION:  {EXAMINATIONS[key]}",
        f"INDICATION:  {indication}",
        f"TECHNIQUE:  {pick(rng, TECHNIQUES[key])}",
        f"COMPARISON:  {comparison}",
    ]
    if case.style == "short":
        impression = " ".join(s.text for s in case.impression_section or ())
        return f"{'FINAL REPORT':>46}\n IMPRESSION:  {impression}\n"
    blocks: list[list[str]] = [[line] for line in header]
    if case.findings_section is not None:
        blocks.append(["FINDINGS:", "", *_wrap(" ".join(s.text for s in case.findings_section), protected)])
    if case.impression_section is not None:
        blocks.append(["IMPRESSION:", "", *_wrap(" ".join(s.text for s in case.impression_section), protected)])
    if case.style == "neither":
        blocks.append(_wrap("NOTIFICATION:  The study was reviewed with Dr. ___ at the time of the exam; "
                            "the complete interpretation follows under a separate accession ___.", []))  # fmt: skip
    lines = [f"{'FINAL REPORT':>45}"]
    for i, block in enumerate(blocks):
        if i:
            lines.append("")
        lines.extend(block)
    return "\n".join(" " + ln for ln in lines) + "\n"
