"""Section parser for free-text MIMIC-CXR radiology reports, and the training text built from it.

Real reports look like::

                                     FINAL REPORT
     EXAMINATION:  CHEST (PA AND LAT)
     INDICATION:  ___ with cough  // ? pneumonia
     FINDINGS:
     PA and lateral views of the chest.  The lungs are
     clear.  No pleural effusion or pneumothorax.
     IMPRESSION:  No acute cardiopulmonary process.

A header is a line that starts with a section name and a colon. Known names (``FINDINGS``,
``IMPRESSION``, ``INDICATION``, ...) are recognised in any case anywhere; an unknown all-capital
name (``RECOMMENDATION(S):``) opens a section only at the start of a paragraph, so that an
all-capital label inside a findings paragraph (``LEFT PICC: tip in the SVC``) stays content.
Wrapped lines are joined, numbered lists are kept in order, repeated sections are concatenated,
``___`` de-identification blanks are kept as they are. When neither FINDINGS nor IMPRESSION is
present, the last paragraph that is not an administrative section (indication, technique,
comparison, ...) is the fallback, and ``fallback_source`` says where it came from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

FINDINGS = "findings"
IMPRESSION = "impression"
FALLBACK = "fallback"
SECTION_KEYS = (FINDINGS, IMPRESSION)

# Header names (upper case, single spaces) mapped to the section they feed.
_CANONICAL = {
    "FINDINGS": FINDINGS,
    "FINDING": FINDINGS,
    "FINDINGS AND IMPRESSION": FINDINGS,
    "FINDINGS AND IMPRESSIONS": FINDINGS,
    "FINDINGS/IMPRESSION": FINDINGS,
    "IMPRESSION AND FINDINGS": FINDINGS,
    "IMPRESSION": IMPRESSION,
    "IMPRESSIONS": IMPRESSION,
    "CONCLUSION": IMPRESSION,
    "CONCLUSIONS": IMPRESSION,
}
# Sections that never describe the image: excluded from the fallback.
_ADMINISTRATIVE = {
    "EXAMINATION", "EXAM", "TYPE OF EXAMINATION", "PROCEDURE", "INDICATION", "INDICATIONS",
    "CLINICAL INDICATION", "HISTORY", "CLINICAL HISTORY", "CLINICAL INFORMATION", "REASON FOR EXAM",
    "REASON FOR EXAMINATION", "REASON FOR STUDY", "TECHNIQUE", "COMPARISON", "COMPARISONS",
    "COMPARISON STUDY", "WET READ", "NOTIFICATION", "FINAL REPORT", "REFERENCE EXAM", "DATE",
    "ATTENDING", "PROVIDER", "STUDY", "CLINICAL DATA", "RADIOLOGIST",
}
_KNOWN = set(_CANONICAL) | _ADMINISTRATIVE | {"ADDENDUM", "RECOMMENDATION", "RECOMMENDATIONS", "NOTE"}

_HEADER = re.compile(r"^\s*(?P<name>[A-Za-z][A-Za-z /&()'\-]{0,60}?)\s*:(?P<rest>.*)$")
_UPPER_NAME = re.compile(r"^[A-Z][A-Z /&()'\-]*$")
_TITLE_LINE = re.compile(r"^\s*(FINAL REPORT|ADDENDUM|PRELIMINARY REPORT)\s*$", re.IGNORECASE)
_LIST_ITEM = re.compile(r"^\s*(\d{1,2}[.)]|[-*\u2022])\s+")
_WORD = re.compile(r"[^\W_]+")


def _normalise_name(name: str) -> str:
    """Upper-case a header name and collapse its inner whitespace."""
    return " ".join(name.upper().split())


def _header_of(line: str, paragraph_start: bool) -> tuple[str, str] | None:
    """(normalised name, text after the colon) when ``line`` opens a section, else None."""
    match = _HEADER.match(line)
    if match is None:
        return None
    raw = match.group("name").strip()
    name = _normalise_name(raw)
    if name in _KNOWN:
        return name, match.group("rest")
    if paragraph_start and _UPPER_NAME.match(raw) and len(name) >= 3:
        return name, match.group("rest")
    return None


def _clean(lines: Sequence[str]) -> str | None:
    """Join wrapped lines into one text: list items start a new line, everything else is one space apart."""
    pieces: list[str] = []
    for line in lines:
        text = " ".join(line.split())
        if not text:
            continue
        if pieces and _LIST_ITEM.match(text):
            pieces.append("\n" + text)
        elif pieces:
            pieces.append(" " + text)
        else:
            pieces.append(text)
    out = "".join(pieces).strip()
    return out or None


def _split_blocks(text: str) -> list[tuple[str | None, list[list[str]]]]:
    """Cut a report into (header name or None, paragraphs as lists of lines) blocks in reading order."""
    blocks: list[tuple[str | None, list[list[str]]]] = [(None, [[]])]
    previous_blank = True
    for raw_line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _TITLE_LINE.match(raw_line):
            blocks.append(("FINAL REPORT", [[]]))
            previous_blank = True
            continue
        if not raw_line.strip():
            name, paragraphs = blocks[-1]
            if paragraphs[-1] and name in _ADMINISTRATIVE:
                # administrative sections are one paragraph: untitled text after them is content
                blocks.append((None, [[]]))
            elif paragraphs[-1]:
                paragraphs.append([])
            previous_blank = True
            continue
        header = _header_of(raw_line, previous_blank)
        if header is not None:
            name, rest = header
            blocks.append((name, [[rest] if rest.strip() else []]))
        else:
            blocks[-1][1][-1].append(raw_line)
        previous_blank = False
    return blocks


def extract_sections(text: str) -> dict[str, object]:
    """Parse a MIMIC report into ``{"findings", "impression", "fallback": str | None, "fallback_source": str | None,
    "sections": {NAME: text}}``; repeated sections are joined in order, absent ones are None."""
    collected: dict[str, list[str]] = {}
    last_clinical: tuple[str, str] | None = None
    for name, paragraphs in _split_blocks(text or ""):
        body = [_clean(p) for p in paragraphs]
        body = [b for b in body if b]
        if not body:
            continue
        key = name or "UNTITLED"
        collected.setdefault(key, []).append("\n".join(body))
        if name not in _ADMINISTRATIVE:
            last_clinical = (key, body[-1])
    sections = {name: "\n".join(parts) for name, parts in collected.items()}
    out: dict[str, object] = {FINDINGS: None, IMPRESSION: None, FALLBACK: None, "fallback_source": None}
    for name, section_text in sections.items():
        target = _CANONICAL.get(name)
        if target is not None:
            out[target] = section_text if out[target] is None else f"{out[target]}\n{section_text}"
    if out[FINDINGS] is None and out[IMPRESSION] is None and last_clinical is not None:
        name, paragraph = last_clinical
        out[FALLBACK] = paragraph
        out["fallback_source"] = "last_paragraph" if name == "UNTITLED" else f"last_paragraph:{name}"
    out["sections"] = sections
    return out


def count_words(text: str | None) -> int:
    """Number of word tokens (runs of letters or digits; ``___`` blanks do not count)."""
    return len(_WORD.findall(text or ""))


def training_text(sections: dict[str, object], order: Sequence[str], use_fallback: bool) -> tuple[str, str]:
    """The training text from the sections named in ``order`` (joined by a newline) and its source.

    Falls back to the ``fallback`` paragraph when none of them is present and ``use_fallback``;
    returns ``("", "none")`` when nothing is usable.
    """
    parts = [(key, sections.get(key)) for key in order]
    present = [(key, value) for key, value in parts if isinstance(value, str) and value.strip()]
    if present:
        return "\n".join(value for _, value in present), "+".join(key for key, _ in present)
    fallback = sections.get(FALLBACK)
    if use_fallback and isinstance(fallback, str) and fallback.strip():
        return fallback, str(sections.get("fallback_source") or FALLBACK)
    return "", "none"
