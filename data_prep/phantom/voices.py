"""Radiologist voices: the same finding sets written in different words (``--report-voices N``).

A voice fixes, for every finding kind, which paraphrase of its phrase it uses, which sentence
templates, which normal phrasing, the order of its sentences, and whether it writes only an
IMPRESSION. With ``--finding-sets K`` the abnormal studies draw their findings from K fixed sets
(and 40 % of studies are normal), so studies with identical findings meet in a batch of 32 while
their reports differ. Labels stay exactly those of the statements (``case.chexpert_labels``), and
every finding's phrase appears verbatim in the report, as in the default generator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from data_prep.phantom.case import (
    CONFLICTS,
    KIND_WEIGHTS,
    NEGATED,
    PRESENT,
    UNCERTAIN,
    VIEW_SETS,
    Finding,
    Statement,
    StudyCase,
    _negations,
    _sample_finding,
    pick,
)

NORMAL_SHARE = 0.4  # share of normal studies when finding sets are fixed
ADVERBS = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}
ZONES = {"upper": ("upper lobe", "upper lung", "upper zone"), "mid": ("mid lung", "mid lung zone", "mid zone"),
         "lower": ("lower lobe", "lower lung", "lower zone")}  # fmt: skip
# Phrase templates per kind (a bilateral effusion or atelectasis has its own list); a leading "*" marks a
# countable phrase (takes "a"), a leading "+" a plural one (takes "are").
PHRASES: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("{severity} cardiomegaly", "{severity} enlargement of the cardiac silhouette",
                     "{adverb} enlarged cardiac silhouette", "*{adverb} enlarged heart"),
    "effusion": ("*{severity} {side} pleural effusion", "*{severity} {side}-sided pleural effusion",
                 "*{severity} amount of {side} pleural fluid", "*{severity} {side} effusion"),
    "effusion_bilateral": ("+{severity} bilateral pleural effusions", "+{severity} bilateral effusions",
                           "*{severity} amount of bilateral pleural fluid", "+{severity} effusions, bilateral"),
    "Consolidation": ("{where} consolidation", "focal consolidation in the {where}",
                      "airspace consolidation of the {where}", "{where} airspace consolidation"),
    "Pneumonia": ("{where} pneumonia", "pneumonia in the {where}", "*{where} pneumonic infiltrate",
                  "infection in the {where}"),
    "Consolidation+Pneumonia": ("{where} consolidation consistent with pneumonia",
                                "consolidation in the {where} compatible with pneumonia",
                                "{where} consolidation representing pneumonia",
                                "pneumonia with consolidation in the {where}"),
    "pneumothorax": ("*{severity} {side} pneumothorax", "*{severity} {side} apical pneumothorax",
                     "*{severity} pneumothorax on the {side}", "*{severity} {side}-sided pneumothorax"),
    "lesion": ("*{where} nodule measuring {size} mm", "*{size} mm {where} nodule",
               "*{where} pulmonary nodule of {size} mm", "*{size} mm nodular opacity in the {where}"),
    "atelectasis": ("{side} basilar atelectasis", "plate-like atelectasis at the {side} lung base",
                    "{side} basal atelectasis", "subsegmental atelectasis at the {side} base"),
    "atelectasis_bilateral": ("bibasilar atelectasis", "bilateral basilar atelectasis",
                              "atelectasis at both lung bases, bilateral", "bilateral basal atelectasis"),
    "edema": ("{severity} pulmonary edema", "{severity} interstitial pulmonary edema", "{severity} interstitial edema",
              "{severity} edema of the lungs"),
    "ET tube": ("endotracheal tube", "ET tube", "ETT", "endotracheal tube"),
    "line": ("{side} internal jugular central venous catheter", "{side} PICC line", "{side}-sided PICC",
             "{side} IJ line"),
}
PRESENT_SENTENCES = ("There {be} {art}{phrase}.", "The study shows {art}{phrase}.",
                     "Findings are consistent with {art}{phrase}.", "Radiographs demonstrate {art}{phrase}.")
UNCERTAIN_SENTENCES = ("Possible {phrase}.", "Cannot exclude {art}{phrase}.", "Findings may represent {art}{phrase}.",
                       "Equivocal {phrase}.")  # fmt: skip
DEVICE_SENTENCES = ("The {phrase} is in standard position.", "Interval placement of the {phrase}, well positioned.",
                    "The tip of the {phrase} is appropriately positioned.", "The {phrase} is unchanged in position.")
# (findings text, impression text, negated labels)
NORMALS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("The lungs are clear without focal consolidation, pleural effusion or pneumothorax. "
     "The cardiomediastinal silhouette is within normal limits.", "No acute cardiopulmonary process.",
     frozenset({"Consolidation", "Pleural Effusion", "Pneumothorax", "Enlarged Cardiomediastinum"})),
    ("Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax is seen.",
     "Normal chest radiograph.", frozenset({"Cardiomegaly", "Pleural Effusion", "Pneumothorax"})),
    ("Clear lungs. No effusion, consolidation or pneumothorax. Normal heart size.",
     "No radiographic evidence of acute disease.",
     frozenset({"Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation"})),
    ("The lungs are well expanded and clear. There is no pleural effusion or pneumothorax. "
     "Cardiac and mediastinal contours are normal.", "No acute intrathoracic abnormality.",
     frozenset({"Pleural Effusion", "Pneumothorax", "Cardiomegaly", "Enlarged Cardiomediastinum"})),
    ("No focal airspace opacity, edema or effusion. The heart is not enlarged.", "Unremarkable chest.",
     frozenset({"Lung Opacity", "Edema", "Pleural Effusion", "Cardiomegaly"})),
)  # fmt: skip


@dataclass(frozen=True)
class Voice:
    """One radiologist's way of writing: a paraphrase index per kind, templates, normal text, order, sections."""

    index: int
    phrase_choice: int
    sentence_choice: int
    normal: int
    reversed_order: bool
    impression_only: bool

    def phrase(self, finding: Finding, key: str) -> tuple[str, bool, bool]:
        """(phrase, countable, plural) of ``finding`` in this voice."""
        options = PHRASES[key]
        template = options[(self.phrase_choice + len(key)) % len(options)]
        countable, plural = template.startswith("*"), template.startswith("+")
        zone_words = ZONES.get(finding.zone or "", ("",))
        where = f"{finding.side} {zone_words[self.phrase_choice % len(zone_words)]}"
        text = template.lstrip("*+").format(severity=finding.severity, adverb=ADVERBS.get(finding.severity or ""),
                                            side=finding.side, where=where, size=finding.size_mm)  # fmt: skip
        return text, countable, plural


def make_voices(count: int) -> tuple[Voice, ...]:
    """``count`` distinct voices (paraphrases, templates, normals, order and impression-only vary with the index)."""
    if count < 1:
        raise ValueError(f"report voices must be >= 1, got {count}")
    return tuple(Voice(v, phrase_choice=v % 4, sentence_choice=(v // 2 + v) % 4, normal=v % len(NORMALS),
                       reversed_order=v % 2 == 1, impression_only=v % 3 == 2) for v in range(count))  # fmt: skip


def size_bucket(size_mm: int | None) -> str | None:
    """A nodule's size bucket (what "identical findings" compares): small < 12 mm ≤ medium < 20 mm ≤ large."""
    if size_mm is None:
        return None
    return "small" if size_mm < 12 else "medium" if size_mm < 20 else "large"


def _phrase_key(finding: Finding) -> str:
    """Which list of :data:`PHRASES` a finding's words come from."""
    if finding.kind in ("effusion", "atelectasis") and finding.side == "bilateral":
        return f"{finding.kind}_bilateral"
    if finding.kind == "consolidation":
        return "+".join(finding.labels)
    if finding.kind == "device":
        return str(finding.device)
    return finding.kind


def _draw_findings(rng: np.random.Generator, portable: bool) -> list[Finding]:
    """One to three findings drawn like the default generator's (kinds weighted, attributes sampled)."""
    count = pick(rng, (1, 2, 3), (0.5, 0.35, 0.15))
    weights = dict(KIND_WEIGHTS, device=4.0 if portable else KIND_WEIGHTS["device"])
    kinds = list(weights)
    p = np.array([weights[k] for k in kinds])
    chosen = sorted(rng.choice(len(kinds), size=count, replace=False, p=p / p.sum()).tolist())
    return [_sample_finding(rng, kinds[i], portable) for i in chosen]


def finding_sets(seed: int, count: int) -> tuple[tuple[Finding, ...], ...]:
    """``count`` fixed abnormal finding sets (their attributes; the words come from each study's voice)."""
    if count < 1:
        raise ValueError(f"finding sets must be >= 1, got {count}")
    rng = np.random.default_rng([seed, 0xF1DE])
    return tuple(tuple(_draw_findings(rng, portable=bool(rng.random() < 0.3))) for _ in range(count))


def _statement(voice: Voice, finding: Finding, rng: np.random.Generator, countable: bool, plural: bool) -> Statement:
    """The voice's sentence for one finding (its phrase verbatim, never first) and the labels it implies."""
    value = PRESENT if finding.status == "present" else UNCERTAIN
    labels = dict.fromkeys(finding.labels, value)
    if finding.kind == "device":
        return Statement(DEVICE_SENTENCES[voice.sentence_choice].format(phrase=finding.phrase), labels)
    templates = UNCERTAIN_SENTENCES if value == UNCERTAIN else PRESENT_SENTENCES
    text = templates[(voice.sentence_choice + int(rng.integers(2))) % len(templates)]
    return Statement(text.format(be="are" if plural else "is", art="a " if countable else "", phrase=finding.phrase),
                     labels)  # fmt: skip


def voiced_case(
    rng: np.random.Generator, voice: Voice, sets: tuple[tuple[Finding, ...], ...] | None = None
) -> StudyCase:
    """A study whose findings (fresh, or one of ``sets``) are written in ``voice``'s words."""
    views = pick(rng, [v for v, _ in VIEW_SETS], [w for _, w in VIEW_SETS])
    portable = views == ("AP",)
    if sets is None:
        drawn = _draw_findings(rng, portable) if rng.random() > (0.25 if portable else 0.4) else []
    else:
        drawn = list(pick(rng, sets)) if rng.random() >= NORMAL_SHARE else []
    findings, words = [], []
    for finding in drawn:
        phrase, countable, plural = voice.phrase(finding, _phrase_key(finding))
        findings.append(dataclasses.replace(finding, phrase=phrase))
        words.append((countable, plural))
    statements = [_statement(voice, f, rng, c, p) for f, (c, p) in zip(findings, words)]
    if voice.reversed_order:
        statements.reverse()
    pathology = [f for f in findings if f.kind != "device"]
    style = "impression_only" if voice.impression_only else "full"
    if not pathology:
        body_text, impression_text, negated = NORMALS[voice.normal]
        normal = [Statement(body_text, dict.fromkeys(negated, NEGATED))]
        body, summary = statements + normal, [*statements, Statement(impression_text)]
    else:
        forbidden = frozenset().union(*(CONFLICTS[f.kind] for f in findings))
        negations = _negations(rng, forbidden, int(rng.integers(1, 3)))
        body = negations + statements if voice.reversed_order else statements + negations
        summary = statements if voice.impression_only else [s for s in statements if s.labels.keys() - {"Support Devices"}]
    if voice.impression_only:
        return StudyCase(views, style, tuple(findings), None, tuple(summary))
    return StudyCase(views, style, tuple(findings), tuple(body), tuple(summary))
