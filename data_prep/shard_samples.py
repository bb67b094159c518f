"""One candidate -> one WebDataset sample (image, txt, json, optional report embedding), or a skip.

Only these fields leave through a sample: subject/study/dicom ids, view, split, the report's
sections and training text, the CheXpert labels, the pixel transform and the original size. No
other DICOM header field is copied.
"""

from __future__ import annotations

import io
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_prep.mimic_metadata import CHEXPERT_LABELS, Candidate, Skip
from data_prep.png_writer import WRITER_VERSION as PNG_WRITER_VERSION
from data_prep.png_writer import grayscale_png
from data_prep.report_embedding import ReportEncoder, npy_bytes
from data_prep.reports import count_words, extract_sections, training_text
from data_prep.shard_writer import remove_leftovers, state_path, write_tar
from pipeline.dicom_pixels import DicomReadError, dicom_to_image, quantize, resize_short_side
from pipeline.shard_format import (
    META_MEMBER,
    REPORT_EMBEDDING_MEMBER,
    TEXT_MEMBER,
    SampleLabels,
    SampleMeta,
    WindowSettings,
    write_json_atomic,
)
from pipeline.shard_format.fingerprint import content_digest, digest, file_stamp


@dataclass(frozen=True)
class SampleSettings:
    """What a worker needs to build samples (picklable)."""

    image_source: str
    image_size: int
    output_bits: int
    image_extension: str
    jpg_quality: int
    png_compress_level: int
    png_zlib_strategy: str
    window: WindowSettings
    text_sections: tuple[str, ...]
    use_fallback: bool
    min_words: int
    report_encoder: str | None
    encoder_batch_size: int
    encoder_max_length: int


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its path relative to OUT and its candidates in order."""

    split: str
    index: int
    relative_path: str
    candidates: tuple[Candidate, ...]


class SampleSkipped(Exception):
    """Raised while building a sample; carries the skip reason and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


_ENCODERS: dict[tuple[str, int, int], ReportEncoder] = {}


def _encoder(settings: SampleSettings) -> ReportEncoder:
    """The process's frozen report encoder, loaded once."""
    key = (str(settings.report_encoder), settings.encoder_batch_size, settings.encoder_max_length)
    if key not in _ENCODERS:
        _ENCODERS[key] = ReportEncoder(*key)
    return _ENCODERS[key]


def read_report(path: Path) -> str:
    """The report text; SampleSkipped for a missing, unreadable or empty report."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise SampleSkipped("missing_report", f"{path} does not exist") from err
    except OSError as err:
        raise SampleSkipped("unreadable_report", f"{path}: {err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SampleSkipped("unreadable_report", f"{path}: not UTF-8: {err}") from err
    if not text.strip():
        raise SampleSkipped("empty_report", f"{path} is empty")
    return text


def report_text(path: Path, settings: SampleSettings) -> tuple[dict[str, Any], str, str]:
    """(sections for the json, training text, its source); SampleSkipped when no usable text."""
    sections = extract_sections(read_report(path))
    text, source = training_text(sections, settings.text_sections, settings.use_fallback)
    if not text:
        names = ", ".join(sorted(sections["sections"])) or "none"  # type: ignore[arg-type]
        raise SampleSkipped("no_usable_section", f"{path}: no {'/'.join(settings.text_sections)} (sections: {names})")
    words = count_words(text)
    if words < settings.min_words:
        raise SampleSkipped("too_few_words", f"{path}: {words} word(s) < min_words {settings.min_words}")
    kept = {key: sections[key] for key in ("findings", "impression", "fallback", "fallback_source")}
    return kept, text, source


def load_jpg_image(path: Path, size: int, bits: int) -> tuple[np.ndarray, dict[str, Any], tuple[int, int]]:
    """A MIMIC-CXR-JPG image (already windowed, air dark) resized and quantised like a DICOM."""
    try:
        with Image.open(path) as pil:
            pil.load()
            gray = np.asarray(pil.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as err:
        raise SampleSkipped("unreadable_image", f"{path}: {type(err).__name__}: {err}") from err
    resized = resize_short_side(gray, size)
    transform = {
        "source": "jpg",
        "resize": {"from": list(gray.shape), "to": list(resized.shape), "filter": "lanczos"},
        "output_bits": bits,
    }
    return quantize(resized, bits), transform, (int(gray.shape[0]), int(gray.shape[1]))


def encode_image(image: np.ndarray, extension: str, jpg_quality: int, png_compress_level: int,
                 png_zlib_strategy: str) -> bytes:
    """PNG (8 or 16-bit grayscale, zlib ``png_compress_level`` / ``png_zlib_strategy``) or JPEG bytes of a 2-D image."""
    if extension == "png":
        return grayscale_png(image, png_compress_level, png_zlib_strategy)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=jpg_quality)
    return buf.getvalue()


def build_sample(candidate: Candidate, settings: SampleSettings) -> tuple[list[tuple[str, bytes]], str]:
    """(tar members without the embedding, training text) of one candidate; SampleSkipped on bad input."""
    sections, text, source = report_text(candidate.report_path, settings)
    if settings.image_source == "dicom":
        try:
            image, transform, original = dicom_to_image(
                candidate.image_path, settings.image_size, settings.output_bits, settings.window
            )
        except DicomReadError as err:
            raise SampleSkipped(err.reason, str(err)) from err
        transform = {"source": "dicom", **transform}
    else:
        image, transform, original = load_jpg_image(candidate.image_path, settings.image_size, settings.output_bits)
    meta = SampleMeta(
        subject_id=candidate.subject_id,
        study_id=candidate.study_id,
        dicom_id=candidate.dicom_id,
        view=candidate.view,
        split=candidate.split,
        sections=sections,
        text_source=source,
        labels=SampleLabels(CHEXPERT_LABELS, candidate.labels),
        transform=transform,
        original_size=original,
    )
    members = [
        (settings.image_extension, encode_image(image, settings.image_extension, settings.jpg_quality, settings.png_compress_level,
                                                    settings.png_zlib_strategy)),
        (META_MEMBER, meta.to_bytes()),
        (TEXT_MEMBER, text.encode("utf-8")),
    ]
    return members, text


def job_fingerprint(job: ShardJob, settings: SampleSettings) -> str:
    """sha256 of everything a shard is made from (see :mod:`pipeline.shard_format.fingerprint`).

    Settings, PNG writer, the candidates (ids, paths, view, split, labels: what the CSV rows give),
    each report's content and each image file's size and mtime, so an edited input is redone.
    """
    inputs = [{"report": content_digest(c.report_path), "image": file_stamp(c.image_path)} for c in job.candidates]
    return digest({"settings": asdict(settings), "candidates": [asdict(c) for c in job.candidates],
                   "inputs": inputs, "png_writer": PNG_WRITER_VERSION})


def build_shard(job: ShardJob, settings: SampleSettings, out_dir: Path, tick: Callable[[int], None]) -> dict[str, Any]:
    """Write one shard (temp name + rename) and its state record; returns the record."""
    remove_leftovers(out_dir, job.relative_path)
    fingerprint = job_fingerprint(job, settings)  # before reading: an input edited meanwhile fails the next --resume
    samples: list[tuple[str, list[tuple[str, bytes]]]] = []
    texts: list[str] = []
    skipped: list[Skip] = []
    for candidate in job.candidates:
        try:
            members, text = build_sample(candidate, settings)
        except SampleSkipped as skip:
            skipped.append(Skip(candidate.dicom_id, skip.reason, skip.detail))
        except Exception as err:  # noqa: BLE001 - an unforeseen failure on one input is a recorded skip, not a crash
            detail = f"{candidate.image_path}: {type(err).__name__}: {err} | {traceback.format_exc(limit=2)!r}"
            skipped.append(Skip(candidate.dicom_id, "processing_error", detail))
        else:
            samples.append((candidate.dicom_id, members))
            texts.append(text)
        tick(1)
    if settings.report_encoder and samples:
        embeddings = _encoder(settings).embed(texts)
        for (_, members), vector in zip(samples, embeddings):
            members.append((REPORT_EMBEDDING_MEMBER, npy_bytes(vector)))
    count, size, digest = write_tar(out_dir / job.relative_path, samples)
    record = {
        "path": job.relative_path,
        "split": job.split,
        "index": job.index,
        "num_candidates": len(job.candidates),
        "fingerprint": fingerprint,
        "num_samples": count,
        "bytes": size,
        "sha256": digest,
        "skipped": [{"id": s.id, "reason": s.reason, "detail": s.detail} for s in skipped],
    }
    write_json_atomic(state_path(out_dir, job.relative_path), record)
    return record
