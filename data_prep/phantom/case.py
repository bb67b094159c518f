"""What a phantom study shows and says: the finding catalogue, its words, and the CheXpert labels.

This is the one place where a finding, the sentence that reports it and the label it earns are
decided together. A study's report is a list of :class:`Statement` s, each carrying the labels its
words imply; :func:`chexpert_labels` reads the labels off exactly the statements that made it into
the report, and ``draw`` draws exactly the :class:`Finding` s. Nothing else assigns a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

LABEL_NAMES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
PRESENT, UNCERTAIN, NEGATED = 1.0, -1.0, 0.0
REPORT_STYLES = ("full", "impression_only", "findings_only", "short", "neither")
VIEW_SETS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("PA", "LATERAL"), 0.66),
    (("PA", "LL"), 0.08),
    (("AP",), 0.20),
    (("PA",), 0.06),
)

# Labels a drawn finding of each kind forbids to negate (its own and its parents').
CONFLICTS: dict[str, frozenset[str]] = {
    "cardiomegaly": frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum"}),
    "effusion": frozenset({"Pleural Effusion"}),
    "consolidation": frozenset({"Consolidation", "Pneumonia", "Lung Opacity"}),
    "pneumothorax": frozenset({"Pneumothorax"}),
    "lesion": frozenset({"Lung Lesion", "Lung Opacity"}),
    "atelectasis": frozenset({"Atelectasis", "Lung Opacity"}),
    "edema": frozenset({"Edema", "Lung Opacity"}),
    "device": frozenset({"Support Devices"}),
}
KIND_WEIGHTS = {"effusion": 3.0, "consolidation": 2.5, "cardiomegaly": 2.0, "atelectasis": 2.0,
                "edema": 1.5, "lesion": 1.5, "pneumothorax": 1.0, "device": 1.5}  # fmt: skip
ZONE_WORDS = {
    "upper": ("upper lobe", "upper lung"),
    "mid": ("mid lung", "mid lung zone"),
    "lower": ("lower lobe", "lower lung"),
}
# (sentence, labels it negates); sentences with no label are neutral filler.
NEGATIONS: tuple[tuple[str, frozenset[str]], ...] = (
    ("No pleural effusion or pneumothorax.", frozenset({"Pleural Effusion", "Pneumothorax"})),
    ("No pleural effusion.", frozenset({"Pleural Effusion"})),
    ("There is no pneumothorax.", frozenset({"Pneumothorax"})),
    ("No focal consolidation.", frozenset({"Consolidation"})),
    ("No focal consolidation to suggest pneumonia.", frozenset({"Consolidation", "Pneumonia"})),
    ("No pulmonary edema.", frozenset({"Edema"})),
    ("Heart size is normal.", frozenset({"Cardiomegaly"})),
    ("The mediastinal contours are normal.", frozenset({"Enlarged Cardiomediastinum"})),
    ("No displaced rib fractures.", frozenset({"Fracture"})),
    ("No suspicious pulmonary nodules.", frozenset({"Lung Lesion"})),
    ("No focal airspace opacity.", frozenset({"Lung Opacity"})),
    ("Osseous structures are unremarkable.", frozenset()),
    ("The visualized upper abdomen is unremarkable.", frozenset()),
)
# The canonical normal phrasings many patients share: (findings text, impression text, negated labels).
NORMALS: tuple[tuple[str, str, frozenset[str], float], ...] = (
    (
        "The lungs are clear without focal consolidation, pleural effusion or pneumothorax. "
        "The cardiomediastinal silhouette is within normal limits.",
        "No acute cardiopulmonary process.",
        frozenset({"Consolidation", "Pleural Effusion", "Pneumothorax", "Enlarged Cardiomediastinum"}),
        0.4,
    ),
    (
        "Heart size is normal. The mediastinal and hilar contours are normal. The lungs are clear. "
        "No pleural effusion or pneumothorax is seen.",
        "No acute cardiopulmonary abnormality.",
        frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum", "Pleural Effusion", "Pneumothorax"}),
        0.25,
    ),
    (
        "There is no focal consolidation, effusion, or pneumothorax. The cardiomediastinal silhouette "
        "is normal. Imaged osseous structures are intact.",
        "No acute intrathoracic process.",
        frozenset({"Consolidation", "Pleural Effusion", "Pneumothorax", "Enlarged Cardiomediastinum"}),
        0.2,
    ),
    (
        "Lungs are clear. Heart size is normal. No effusion or pneumothorax.",
        "No acute cardiopulmonary process.",
        frozenset({"Cardiomegaly", "Pleural Effusion", "Pneumothorax"}),
        0.15,
    ),
)
PRESENT_TEMPLATES = ("There {be} {art}{phrase}.", "Again seen {be} {art}{phrase}.", "New {phrase}.")
IMPRESSION_TEMPLATES = ("There {be} {art}{phrase}.", "Redemonstration of {art}{phrase}.")
FIRST_STUDY_TEMPLATES = ("There {be} {art}{phrase}.", "Findings are consistent with {art}{phrase}.")
UNCERTAIN_TEMPLATES = ("Possible {phrase}.", "Cannot exclude {art}{phrase}.", "There may be {art}{phrase}.",
                       "Questionable {phrase}.")  # fmt: skip

T = TypeVar("T")


@dataclass(frozen=True)
class Finding:
    """One drawn finding: its kind, the labels it earns, where it is, how big, and its exact phrase."""

    kind: str
    labels: tuple[str, ...]
    status: str  # "present" | "uncertain"
    side: str | None
    zone: str | None
    severity: str | None
    device: str | None
    size_mm: int | None
    phrase: str


@dataclass(frozen=True)
class Statement:
    """One sentence of the report and the CheXpert values its words imply."""

    text: str
    labels: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyCase:
    """A study's clinical truth: views, drawn findings, and the statements of each report section."""

    views: tuple[str, ...]
    style: str
    findings: tuple[Finding, ...]
    findings_section: tuple[Statement, ...] | None
    impression_section: tuple[Statement, ...] | None

    def statements(self) -> list[Statement]:
        """Every statement that appears in the report."""
        return [*(self.findings_section or ()), *(self.impression_section or ())]


def pick(rng: np.random.Generator, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
    """One element of ``options`` (optionally weighted)."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def chexpert_labels(case: StudyCase) -> dict[str, float | None]:
    """The 14 CheXpert values of a study: 1 present, -1 uncertain, 0 negated, None not mentioned.

    A positive mention beats an uncertain one, which beats a negation. "No Finding" is 1 when the
    report has a section and mentions no pathology (support devices aside) as present or uncertain.
    """
    values: dict[str, float | None] = dict.fromkeys(LABEL_NAMES)
    for statement in case.statements():
        for name, value in statement.labels.items():
            old = values[name]
            if old is None or (old, value) in ((NEGATED, UNCERTAIN), (NEGATED, PRESENT), (UNCERTAIN, PRESENT)):
                values[name] = value
    pathology = [n for n in LABEL_NAMES if n not in ("No Finding", "Support Devices")]
    if case.statements() and not any(values[n] in (PRESENT, UNCERTAIN) for n in pathology):
        values["No Finding"] = PRESENT
    return values


# --------------------------------------------------------------------------- findings and their words


def _sample_finding(rng: np.random.Generator, kind: str, portable: bool) -> Finding:
    """Draw one finding of ``kind`` with its attributes and the exact phrase that reports it."""
    status = "uncertain" if kind != "device" and rng.random() < 0.2 else "present"
    side = zone = severity = device = None
    size_mm = None
    labels: tuple[str, ...]
    if kind == "cardiomegaly":
        severity = pick(rng, ("mild", "moderate", "severe"))
        labels = ("Cardiomegaly",)
        phrase = pick(rng, (f"{severity} cardiomegaly", f"{severity} enlargement of the cardiac silhouette"))
    elif kind == "effusion":
        side = pick(rng, ("left", "right", "bilateral"), (0.35, 0.35, 0.3))
        severity = pick(rng, ("small", "moderate", "large"), (0.5, 0.35, 0.15))
        labels = ("Pleural Effusion",)
        if side == "bilateral":
            phrase = pick(rng, (f"{severity} bilateral pleural effusions", f"{severity} bilateral effusions"))
        else:
            phrase = pick(rng, (f"{severity} {side} pleural effusion", f"{severity} {side}-sided pleural effusion",
                                f"{severity} {side} effusion"))  # fmt: skip
    elif kind == "consolidation":
        side, zone = pick(rng, ("left", "right")), pick(rng, ("upper", "mid", "lower"), (0.25, 0.25, 0.5))
        where = f"{side} {pick(rng, ZONE_WORDS[zone])}"
        labels = pick(rng, (("Consolidation",), ("Pneumonia",), ("Consolidation", "Pneumonia")))
        if labels == ("Consolidation",):
            phrase = pick(rng, (f"{where} consolidation", f"focal consolidation in the {where}"))
        elif labels == ("Pneumonia",):
            phrase = pick(rng, (f"{where} pneumonia", f"pneumonia in the {where}"))
        else:
            phrase = f"{where} consolidation consistent with pneumonia"
    elif kind == "pneumothorax":
        side, zone = pick(rng, ("left", "right")), "upper"
        severity = pick(rng, ("small", "large"), (0.7, 0.3))
        labels = ("Pneumothorax",)
        phrase = pick(rng, (f"{severity} {side} pneumothorax", f"{severity} {side} apical pneumothorax"))
    elif kind == "lesion":
        side, zone = pick(rng, ("left", "right")), pick(rng, ("upper", "mid", "lower"))
        size_mm = int(rng.integers(8, 26))
        where = f"{side} {pick(rng, ZONE_WORDS[zone])}"
        labels = ("Lung Lesion",)
        phrase = pick(rng, (f"{where} nodule measuring {size_mm} mm", f"{where} pulmonary nodule",
                            f"{where} nodule measuring {size_mm} × {max(size_mm - 2, 5)} mm"))  # fmt: skip
    elif kind == "atelectasis":
        side, zone = pick(rng, ("left", "right", "bilateral"), (0.35, 0.35, 0.3)), "lower"
        labels = ("Atelectasis",)
        if side == "bilateral":
            phrase = pick(rng, ("bibasilar atelectasis", "bilateral basilar atelectasis"))
        else:
            phrase = pick(rng, (f"{side} basilar atelectasis", f"plate-like atelectasis at the {side} lung base"))
    elif kind == "edema":
        severity = pick(rng, ("mild", "moderate"))
        labels = ("Edema",)
        phrase = pick(rng, (f"{severity} pulmonary edema", f"{severity} interstitial pulmonary edema"))
    elif kind == "device":
        device = pick(rng, ("ET tube", "line"), (0.6, 0.4) if portable else (0.1, 0.9))
        labels = ("Support Devices",)
        if device == "ET tube":
            phrase = pick(rng, ("endotracheal tube", "ET tube"))
        else:
            side = pick(rng, ("left", "right"), (0.3, 0.7))
            phrase = pick(rng, (f"{side} internal jugular central venous catheter", f"{side} PICC line",
                                f"{side}-sided PICC"))  # fmt: skip
    else:
        raise ValueError(f"unknown finding kind {kind!r}")
    return Finding(kind, labels, status, side, zone, severity, device, size_mm, phrase)


def _countable(finding: Finding) -> bool:
    """Whether the phrase takes the article "a" (a single effusion, pneumothorax or nodule)."""
    return finding.kind in ("effusion", "pneumothorax", "lesion") and finding.side != "bilateral"


def _finding_statement(rng: np.random.Generator, finding: Finding, impression: bool, prior: bool) -> Statement:
    """A sentence that contains the finding's phrase verbatim (never at the sentence start) and its labels."""
    value = PRESENT if finding.status == "present" else UNCERTAIN
    labels = dict.fromkeys(finding.labels, value)
    if finding.kind == "device":
        if finding.device == "ET tube":
            text = f"The {finding.phrase} terminates {int(rng.integers(2, 7))} cm above the carina."
        else:
            text = pick(rng, (f"The {finding.phrase} terminates in the mid SVC.",
                              f"The tip of the {finding.phrase} is at the cavoatrial junction."))  # fmt: skip
        return Statement(text, labels)
    if value == UNCERTAIN:
        templates = UNCERTAIN_TEMPLATES
    elif not prior:  # "again seen" / "new" need an earlier study
        templates = FIRST_STUDY_TEMPLATES
    else:
        templates = IMPRESSION_TEMPLATES if impression else PRESENT_TEMPLATES
    plural = finding.side == "bilateral" and finding.kind == "effusion"
    text = pick(rng, templates).format(
        be="are" if plural else "is", art="a " if _countable(finding) else "", phrase=finding.phrase
    )
    return Statement(text, labels)


def _negations(rng: np.random.Generator, forbidden: frozenset[str], count: int) -> list[Statement]:
    """Up to ``count`` negation sentences that deny nothing in ``forbidden``."""
    allowed = [i for i, (_, labels) in enumerate(NEGATIONS) if not labels & forbidden]
    chosen = sorted(rng.choice(len(allowed), size=min(count, len(allowed)), replace=False).tolist())
    out, denied = [], set()
    for i in chosen:
        text, labels = NEGATIONS[allowed[i]]
        if labels & denied:  # never deny the same thing twice in one section
            continue
        denied |= labels
        out.append(Statement(text, dict.fromkeys(labels, NEGATED)))
    return out


# --------------------------------------------------------------------------- a whole study


def sample_case(rng: np.random.Generator, prior: bool) -> StudyCase:
    """Draw a study's views, findings and report statements, consistent by construction.

    ``prior`` says whether the patient has an earlier study (words like "again seen" need one).
    """
    views = pick(rng, [v for v, _ in VIEW_SETS], [w for _, w in VIEW_SETS])
    portable = views == ("AP",)
    style = pick(rng, REPORT_STYLES, (0.78, 0.07, 0.06, 0.06, 0.03))
    findings: list[Finding] = []
    if style != "neither" and rng.random() > (0.25 if portable else 0.4):
        count = pick(rng, (1, 2, 3), (0.5, 0.35, 0.15))
        weights = dict(KIND_WEIGHTS, device=4.0 if portable else KIND_WEIGHTS["device"])
        kinds = list(weights)
        p = np.array([weights[k] for k in kinds])
        chosen = sorted(rng.choice(len(kinds), size=count, replace=False, p=p / p.sum()).tolist())
        findings = [_sample_finding(rng, kinds[i], portable) for i in chosen]
    if style == "neither":
        return StudyCase(views, style, (), None, None)
    pathology = [f for f in findings if f.kind != "device"]
    devices = [f for f in findings if f.kind == "device"]
    forbidden = frozenset().union(*(CONFLICTS[f.kind] for f in findings))
    normal = None if pathology else pick(rng, NORMALS, [n[3] for n in NORMALS])

    body = [_finding_statement(rng, f, impression=False, prior=prior) for f in devices + pathology]
    if normal is not None:
        body.append(Statement(normal[0], dict.fromkeys(normal[2], NEGATED)))
    else:
        body += _negations(rng, forbidden, int(rng.integers(1, 4)))
    summary = [_finding_statement(rng, f, impression=True, prior=prior) for f in pathology]
    if normal is not None:
        summary.append(Statement(normal[1]))
    elif rng.random() < 0.3:
        summary += _negations(rng, forbidden, 1)
    device_summary = [_finding_statement(rng, f, impression=True, prior=prior) for f in devices]

    if style == "full":
        summary = [s for s in device_summary if rng.random() < 0.5] + summary
        return StudyCase(views, style, tuple(findings), tuple(body), tuple(summary))
    if style == "findings_only":
        return StudyCase(views, style, tuple(findings), tuple(body), None)
    if style == "impression_only":
        return StudyCase(views, style, tuple(findings), None, tuple(device_summary + summary))
    short = [_finding_statement(rng, f, impression=True, prior=prior) for f in findings]
    return StudyCase(views, style, tuple(findings), None, tuple(short or [Statement(normal[1])]))
