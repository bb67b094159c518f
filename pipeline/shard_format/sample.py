"""The ``json`` member of a sample: what the sharder records about one image, and how readers parse it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.shard_format.layout import ShardFormatError

LABEL_POLICY = "raw: 1.0 present, 0.0 negated, -1.0 uncertain, null not mentioned"


@dataclass(frozen=True)
class SampleLabels:
    """CheXpert labels of a sample: names and raw values (1.0 present, 0.0 negated, -1.0 uncertain, None not mentioned)."""

    names: tuple[str, ...]
    values: tuple[float | None, ...]
    policy: str = LABEL_POLICY

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"names": list(self.names), "values": list(self.values), "policy": self.policy}

    @classmethod
    def from_json(cls, data: Any, where: str) -> SampleLabels:
        """Parse ``{names, values[, policy]}``; ShardFormatError naming ``where`` on a malformed entry."""
        if not isinstance(data, Mapping) or not isinstance(data.get("names"), list) or not isinstance(data.get("values"), list):
            raise ShardFormatError(f"{where}: 'labels' is not {{names: [...], values: [...]}}")
        if len(data["names"]) != len(data["values"]):
            raise ShardFormatError(f"{where}: {len(data['names'])} label names but {len(data['values'])} values")
        values = tuple(None if v is None else float(v) for v in data["values"])
        return cls(tuple(str(n) for n in data["names"]), values, str(data.get("policy", LABEL_POLICY)))


@dataclass(frozen=True)
class SampleMeta:
    """Everything the sharder writes about one image; no other DICOM header field leaves through a sample."""

    subject_id: int
    study_id: int
    dicom_id: str
    view: str
    split: str
    sections: dict[str, Any]  # findings, impression, fallback, fallback_source
    text_source: str
    labels: SampleLabels
    transform: dict[str, Any]  # every pixel step and its parameters
    original_size: tuple[int, int]  # (rows, cols) before resizing

    def to_json(self) -> dict[str, Any]:
        """Plain data for the ``json`` member."""
        return {
            "subject_id": self.subject_id, "study_id": self.study_id, "dicom_id": self.dicom_id, "view": self.view,
            "split": self.split, "sections": self.sections, "text_source": self.text_source,
            "labels": self.labels.to_json(), "transform": self.transform, "original_size": list(self.original_size),
        }

    def to_bytes(self) -> bytes:
        """The ``json`` member's bytes (sorted keys, UTF-8)."""
        return json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8")


def read_sample_meta(data: bytes, where: str) -> tuple[dict[str, Any], SampleLabels]:
    """(the parsed ``json`` member, its labels); ShardFormatError naming ``where`` when either is malformed."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardFormatError(f"{where}: json member is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ShardFormatError(f"{where}: json member is not an object")
    return meta, SampleLabels.from_json(meta.get("labels"), where)
