"""One phantom study end to end: draw its case, render its images, write its files, return its rows.

``render_study`` is pure (no files) so tests and figures can regenerate any study exactly;
``write_study`` is the worker function of the parallel generator. Random streams are seeded
from (seed, study index, stream), so a study never depends on which worker made it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.phantom.anatomy import Anatomy, build_anatomy
from data_prep.phantom.case import Finding, StudyCase, chexpert_labels, pick, sample_case
from data_prep.phantom.cohort import StudyPlan, make_dicom_id
from data_prep.phantom.dicom_io import (
    VIEW_CODES,
    Encoding,
    jpeg_bytes,
    presentation_image,
    sample_encoding,
    stored_pixels,
    to_jpg_pixels,
    write_dicom,
)
from data_prep.phantom.draw import draw_findings
from data_prep.phantom.report import EXAMINATIONS, exam_key, render_report
from data_prep.phantom.voices import finding_sets, make_voices, size_bucket, voiced_case
from pipeline.shard_format.coco_rle import encode_rle, mask_bbox

NON_ASCII_RATE = 0.08


@dataclass(frozen=True)
class Settings:
    """What every worker needs to know about the run."""

    out_dir: str
    seed: int
    jpg: bool
    image_size_range: tuple[int, int]
    downstream: bool
    report_voices: int = 0  # 0: the default generator's words; N: every study written by one of N voices
    finding_sets: int = 0  # 0: findings drawn per study; K (with voices): one of K fixed finding sets


@dataclass
class RenderedImage:
    """One image of a study, with its anatomy (for checks) and the masks of what was drawn."""

    dicom_id: str
    view: str
    anatomy: Anatomy
    presentation: np.ndarray
    masks: list[tuple[Finding, np.ndarray]]
    encoding: Encoding
    stored: np.ndarray
    rng: np.random.Generator


@dataclass
class RenderedStudy:
    """A study's case, report, labels and images, all from the same random streams."""

    plan: StudyPlan
    case: StudyCase
    report: str
    labels: dict[str, float | None]
    orientation: str
    images: list[RenderedImage]


@dataclass
class StudyRecord:
    """Everything the parent process needs from a written study to build the tables."""

    metadata: list[dict[str, Any]]
    labels: dict[str, float | None]
    annotations: dict[str, dict[str, Any]]
    chexpert_rows: list[dict[str, Any]] = field(default_factory=list)


def study_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The random stream ``stream`` of study ``index`` (0: case and report, 1+i: image i)."""
    return np.random.default_rng([seed, index, stream])


def render_study(seed: int, plan: StudyPlan, image_size_range: tuple[int, int], report_voices: int = 0,
                 fixed_sets: int = 0) -> RenderedStudy:
    """Draw a study's case and report and render every image (no files are touched).

    ``report_voices`` > 0 writes the report in one of that many voices (data_prep.phantom.voices),
    with findings from ``fixed_sets`` fixed finding sets when > 0.
    """
    rng = study_rng(seed, plan.index, 0)
    if report_voices:
        sets = _finding_sets(seed, fixed_sets) if fixed_sets else None
        case = voiced_case(rng, pick(rng, _voices(report_voices)), sets)
    else:
        case = sample_case(rng, prior=plan.study_in_patient > 0)
    report = render_report(rng, plan, case, non_ascii=bool(rng.random() < NON_ASCII_RATE))
    orientation = "Recumbent" if case.views == ("AP",) and rng.random() < 0.7 else "Erect"
    cardiomegaly = next((f.severity for f in case.findings if f.kind == "cardiomegaly"), None)
    lo, hi = image_size_range
    images = []
    for i, view in enumerate(case.views):
        irng = study_rng(seed, plan.index, 1 + i)
        rows, cols = (int(v) for v in irng.integers(lo, hi + 1, size=2))
        anatomy = build_anatomy(irng, view, rows, cols, cardiomegaly)
        density, masks = draw_findings(irng, anatomy, case.findings)
        presentation = presentation_image(irng, density)
        encoding = sample_encoding(irng)
        stored = stored_pixels(irng, presentation, encoding)
        dicom_id = make_dicom_id(seed, plan.index, i)
        images.append(RenderedImage(dicom_id, view, anatomy, presentation, masks, encoding, stored, irng))
    return RenderedStudy(plan, case, report, chexpert_labels(case), orientation, images)


_voices = functools.lru_cache(maxsize=4)(make_voices)
_finding_sets = functools.lru_cache(maxsize=4)(finding_sets)


def study_dir(plan: StudyPlan) -> Path:
    """``files/p1X/pSSSSSSSS/sTTTTTTTT`` relative to the data set root."""
    subject = f"p{plan.subject_id}"
    return Path("files") / subject[:3] / subject / f"s{plan.study_id}"


def image_annotation(plan: StudyPlan, image: RenderedImage, with_size_bucket: bool = False) -> dict[str, Any]:
    """The ``phantom_annotations.json`` entry of one image: one finding per CheXpert label it earns.

    ``with_size_bucket`` (voiced sets) adds each nodule's ``size_bucket``, which "identical findings" compares.
    """
    findings = []
    for finding, mask in image.masks:
        rle, bbox = encode_rle(mask), mask_bbox(mask)
        for label in finding.labels:
            entry = {
                "label": label,
                "status": finding.status,
                "side": finding.side,
                "zone": finding.zone,
                "severity": finding.severity,
                "phrase": finding.phrase,
                "bbox": bbox,
                "mask_rle": rle,
            }
            if with_size_bucket:
                entry["size_bucket"] = size_bucket(finding.size_mm)
            findings.append(entry)
    rows, cols = image.stored.shape
    return {"subject_id": plan.subject_id, "study_id": plan.study_id, "view": image.view,
            "rows": rows, "cols": cols, "findings": findings}  # fmt: skip


def _chexpert_downstream_row(plan: StudyPlan, study: RenderedStudy, j: int, image: RenderedImage) -> dict[str, Any]:
    """One row of the CheXpert-style CSV (path relative to ``downstream/chexpert``)."""
    frontal = image.view in ("PA", "AP")
    folder = "train" if plan.split == "train" else "valid"
    path = f"{folder}/patient{plan.patient_index + 1:05d}/study{plan.study_in_patient + 1}/view{j + 1}_" + (
        "frontal.jpg" if frontal else "lateral.jpg"
    )
    return {"Path": path, "Sex": "Female" if plan.sex == "F" else "Male", "Age": plan.age,
            "Frontal/Lateral": "Frontal" if frontal else "Lateral", "AP/PA": image.view if frontal else "",
            "labels": study.labels}  # fmt: skip


def write_study(settings: Settings, plan: StudyPlan) -> StudyRecord:
    """Render one study and write its report, DICOMs, JPGs and downstream files; return its table rows."""
    out = Path(settings.out_dir)
    study = render_study(settings.seed, plan, settings.image_size_range, settings.report_voices,
                         settings.finding_sets)
    folder = study_dir(plan)
    (out / folder).mkdir(parents=True, exist_ok=True)
    (out / folder.parent / f"{folder.name}.txt").write_text(study.report, encoding="utf-8")
    exam = EXAMINATIONS[exam_key(study.case.views)]
    record = StudyRecord(metadata=[], labels=study.labels, annotations={})
    for j, image in enumerate(study.images):
        write_dicom(out / folder / f"{image.dicom_id}.dcm", image.stored, image.encoding, plan,
                    seed=settings.seed, dicom_id=image.dicom_id, view=image.view, exam=exam,
                    orientation=study.orientation, series_number=j + 1, rng=image.rng)  # fmt: skip
        pixels8 = to_jpg_pixels(image.presentation) if settings.jpg or settings.downstream else None
        if settings.jpg:
            jpg_path = out / "jpg" / folder / f"{image.dicom_id}.jpg"
            jpg_path.parent.mkdir(parents=True, exist_ok=True)
            jpg_path.write_bytes(jpeg_bytes(pixels8))
        rows, cols = image.stored.shape
        record.metadata.append(
            {"dicom_id": image.dicom_id, "subject_id": plan.subject_id, "study_id": plan.study_id,
             "PerformedProcedureStepDescription": exam, "ViewPosition": image.view, "Rows": rows, "Columns": cols,
             "StudyDate": plan.study_date, "StudyTime": repr(float(plan.study_time)),
             "ProcedureCodeSequence_CodeMeaning": exam, "ViewCodeSequence_CodeMeaning": VIEW_CODES[image.view][1],
             "PatientOrientationCodeSequence_CodeMeaning": study.orientation}  # fmt: skip
        )
        record.annotations[image.dicom_id] = image_annotation(plan, image, settings.report_voices > 0)
        if settings.downstream and plan.split != "validate":
            row = _chexpert_downstream_row(plan, study, j, image)
            target = out / "downstream" / "chexpert" / row["Path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(jpeg_bytes(pixels8))
            record.chexpert_rows.append(row)
    return record
