"""The MIMIC report section parser against a table of tricky texts."""

from __future__ import annotations

import pytest

from data_prep.reports import count_words, extract_sections, training_text

CASES = [
    pytest.param(
        """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with cough  // ? pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 PA and lateral views of the chest provided.  The lungs are
 clear.  No pleural effusion or pneumothorax.

 IMPRESSION:  No acute cardiopulmonary process.
""",
        "PA and lateral views of the chest provided. The lungs are clear. No pleural effusion or pneumothorax.",
        "No acute cardiopulmonary process.",
        None,
        id="standard-wrapped-lines-blanks",
    ),
    pytest.param(
        "FINDINGS: Heart size normal.\n\nIMPRESSION:\n\n1. No pneumonia.\n2. Stable small left\n   effusion.\n3. ET tube in place.\n",
        "Heart size normal.",
        "1. No pneumonia.\n2. Stable small left effusion.\n3. ET tube in place.",
        None,
        id="numbered-list-with-wrapped-item",
    ),
    pytest.param(
        "INDICATION: ___M with chest pain.\n\nIMPRESSION: No acute process.\n",
        None, "No acute process.", None, id="impression-only",
    ),
    pytest.param(
        "EXAMINATION: CHEST PORTABLE\nFINDINGS: Lines and tubes unchanged.\n", "Lines and tubes unchanged.", None, None,
        id="findings-only",
    ),
    pytest.param(
        "FINDINGS: Mild edema.\nIMPRESSION: Edema.\n\nADDENDUM\nFINDINGS: On review, also a small right effusion.\n"
        "IMPRESSION: Edema and small right effusion.\n",
        "Mild edema.\nOn review, also a small right effusion.",
        "Edema.\nEdema and small right effusion.",
        None,
        id="repeated-sections-after-addendum",
    ),
    pytest.param(
        "EXAMINATION: CHEST (PORTABLE AP)\n\nINDICATION: ___ year old man, intubated.\n\n"
        "Portable AP chest radiograph was obtained.\n\nThe endotracheal tube terminates 4 cm above the carina.\n"
        "No pneumothorax.\n",
        None, None, "The endotracheal tube terminates 4 cm above the carina. No pneumothorax.",
        id="no-sections-last-paragraph-fallback",
    ),
    pytest.param(
        "EXAMINATION: CHEST (PA AND LAT)\nINDICATION: ___ with fever\nTECHNIQUE: PA and lateral\nCOMPARISON: None.\n",
        None, None, None, id="only-administrative-sections",
    ),
    pytest.param(
        "FINDINGS:\nLines:\nLEFT PICC: tip in the low SVC.\nRIGHT IJ: removed.\n\nIMPRESSION: Lines as described.\n",
        "Lines: LEFT PICC: tip in the low SVC. RIGHT IJ: removed.", "Lines as described.", None,
        id="capital-labels-inside-findings-stay-content",
    ),
    pytest.param(
        "Findings: Left lower lobe opacity; Dr. ___ was notified at 10:30 on ___.\nImpression: Pneumonia, left.\n",
        "Left lower lobe opacity; Dr. ___ was notified at 10:30 on ___.", "Pneumonia, left.", None,
        id="title-case-headers-times-and-blanks",
    ),
    pytest.param(
        "FINDINGS AND IMPRESSION: Cardiomegaly with moderate pulmonary edema.\n",
        "Cardiomegaly with moderate pulmonary edema.", None, None, id="combined-header",
    ),
    pytest.param(
        "CONCLUSION:\nKleine Pleuraergüsse beidseits, Herzgröße normal.\r\n",
        None, "Kleine Pleuraergüsse beidseits, Herzgröße normal.", None, id="conclusion-alias-crlf-non-ascii",
    ),
    pytest.param("", None, None, None, id="empty"),
    pytest.param("   \n\n  ___  \n", None, None, "___", id="only-blanks"),
]


@pytest.mark.parametrize(("text", "findings", "impression", "fallback"), CASES)
def test_extract_sections_table(text: str, findings: str | None, impression: str | None, fallback: str | None) -> None:
    """Each tricky text yields exactly the expected findings, impression and fallback."""
    sections = extract_sections(text)
    assert sections["findings"] == findings
    assert sections["impression"] == impression
    assert sections["fallback"] == fallback
    assert (sections["fallback_source"] is None) == (fallback is None)


def test_fallback_records_its_source() -> None:
    """The fallback says it came from the last paragraph (and from which section when it had a header)."""
    assert extract_sections("Some free text.\n\nMore text here.\n")["fallback_source"] == "last_paragraph"
    named = extract_sections("INDICATION: x\n\nRECOMMENDATION(S): Follow-up CT in 3 months.\n")
    assert named["fallback"] == "Follow-up CT in 3 months."
    assert named["fallback_source"] == "last_paragraph:RECOMMENDATION(S)"


def test_training_text_order_fallback_and_word_count() -> None:
    """Training text = configured sections in order; fallback only when allowed; ___ is not a word."""
    sections = extract_sections("FINDINGS: Lungs clear.\nIMPRESSION: Normal chest.\n")
    assert training_text(sections, ["impression", "findings"], True) == ("Normal chest.\nLungs clear.", "impression+findings")
    assert training_text(sections, ["findings"], True) == ("Lungs clear.", "findings")
    fallback_only = extract_sections("Portable chest. No change.\n")
    assert training_text(fallback_only, ["impression", "findings"], True) == ("Portable chest. No change.", "last_paragraph")
    assert training_text(fallback_only, ["impression", "findings"], False) == ("", "none")
    assert count_words("___ M with ___ 2 views, é-test") == 6
