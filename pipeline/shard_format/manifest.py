"""The typed ``manifest.json`` of a shard set, its schema version and the upgrade of older manifests.

Schema history (``schema_version``):

1. (no ``schema_version`` key) the manifest before this package owned it: no DICOM window.
2. ``schema_version: 2``; ``image.window`` records the DICOM display window the sharder used
   (null for shards made from JPGs). A version-1 manifest is upgraded when read (the window comes
   from its ``args.window``), and ``python -m pipeline.shard_format upgrade DIR`` rewrites it on disk.

A manifest with a newer ``schema_version`` than :data:`SCHEMA_VERSION` is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.shard_format.layout import ShardFormatError, validate_relative_path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
UPGRADE_COMMAND = "python -m pipeline.shard_format upgrade DIR"


@dataclass(frozen=True)
class WindowSettings:
    """The DICOM display window: the file's VOI LUT / window when ``use_file_voi`` and present, else percentiles in [0, 100]."""

    use_file_voi: bool
    percentile_low: float
    percentile_high: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.percentile_low < self.percentile_high <= 100.0:
            raise ValueError(
                f"window percentiles must satisfy 0 <= low < high <= 100, got {self.percentile_low}, {self.percentile_high}"
            )

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"use_file_voi": self.use_file_voi, "percentile_low": self.percentile_low,
                "percentile_high": self.percentile_high}

    @classmethod
    def from_json(cls, data: Any, where: str) -> WindowSettings:
        """Parse ``{use_file_voi, percentile_low, percentile_high}``; ShardFormatError naming ``where``."""
        try:
            return cls(bool(data["use_file_voi"]), float(data["percentile_low"]), float(data["percentile_high"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ShardFormatError(f"{where}: not a window {{use_file_voi, percentile_low, percentile_high}}: {err}") from err


@dataclass(frozen=True)
class ShardRecord:
    """One shard of a split: its path relative to the shard root, sample count, size and sha256 (None when unknown)."""

    path: str
    num_samples: int
    bytes: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        validate_relative_path(self.path, "shard record")

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"path": self.path, "num_samples": self.num_samples, "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ShardRecord:
        """Parse a manifest entry, validating its path (see :func:`validate_relative_path`)."""
        if not isinstance(data, Mapping):
            raise ShardFormatError(f"{where}: shard entry {data!r} is not an object")
        path = validate_relative_path(data.get("path"), where)
        try:
            size = data.get("bytes")
            return cls(path, int(data["num_samples"]), None if size is None else int(size), data.get("sha256") or None)
        except (KeyError, TypeError, ValueError) as err:
            raise ShardFormatError(f"{where}: shard {path}: bad num_samples or bytes: {err}") from err


@dataclass(frozen=True)
class SplitEntry:
    """The shards of one split and their total sample count."""

    num_samples: int
    shards: tuple[ShardRecord, ...]

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"num_samples": self.num_samples, "shards": [s.to_json() for s in self.shards]}

    @classmethod
    def from_json(cls, data: Any, where: str) -> SplitEntry:
        """Parse ``{num_samples, shards: [...]}``."""
        try:
            shards = tuple(ShardRecord.from_json(s, where) for s in data["shards"])
            return cls(int(data["num_samples"]), shards)
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, ShardFormatError):
                raise
            raise ShardFormatError(f"{where}: not a split {{num_samples, shards}}: {err}") from err


@dataclass(frozen=True)
class ImageInfo:
    """How the images were stored: member format, bit depth, short side, source and the DICOM window used."""

    format: str
    bits: int | None
    size: int | None
    source: str | None
    window: WindowSettings | None = None  # None for JPG-sourced shards (and version-1 manifests without args)

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"format": self.format, "bits": self.bits, "size": self.size, "source": self.source,
                "window": None if self.window is None else self.window.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ImageInfo:
        """Parse ``{format, bits, size, source, window}``."""
        if not isinstance(data, Mapping) or "format" not in data:
            raise ShardFormatError(f"{where}: 'image' is not an object with a 'format'")
        window = data.get("window")
        return cls(str(data["format"]), data.get("bits"), data.get("size"), data.get("source"),
                   None if window is None else WindowSettings.from_json(window, f"{where} image.window"))


@dataclass(frozen=True)
class ReportEncoderInfo:
    """The frozen text model whose embeddings are in ``report_emb.npy``: name, dimension, pooling."""

    name: str
    dim: int
    pooling: str

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"name": self.name, "dim": self.dim, "pooling": self.pooling}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ReportEncoderInfo:
        """Parse ``{name, dim, pooling}``."""
        try:
            return cls(str(data["name"]), int(data["dim"]), str(data["pooling"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ShardFormatError(f"{where}: report_encoder is not {{name, dim, pooling}}: {err}") from err


@dataclass(frozen=True)
class ShardManifest:
    """A shard set's manifest: splits, label names, image storage, report encoder and the sharder's accounts."""

    splits: dict[str, SplitEntry]
    label_names: tuple[str, ...]
    image: ImageInfo | None = None
    report_encoder: ReportEncoderInfo | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # skip reason -> count
    filtered: dict[str, int] = field(default_factory=dict)  # documented filter -> count
    candidates: dict[str, int] = field(default_factory=dict)  # split -> candidates listed
    args: dict[str, Any] = field(default_factory=dict)  # the sharder's resolved config
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def split(self, name: str, where: str) -> SplitEntry:
        """The entry of split ``name``; ShardFormatError naming ``where`` and the splits it has."""
        if name not in self.splits:
            raise ShardFormatError(f"{where}: no split {name!r} (has: {', '.join(sorted(self.splits)) or 'none'})")
        return self.splits[name]

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``manifest.json``."""
        return {
            "schema_version": self.schema_version,
            "splits": {name: entry.to_json() for name, entry in self.splits.items()},
            "label_names": list(self.label_names),
            "image": None if self.image is None else self.image.to_json(),
            "report_encoder": None if self.report_encoder is None else self.report_encoder.to_json(),
            "skipped": dict(self.skipped),
            "filtered": dict(self.filtered),
            "candidates": dict(self.candidates),
            "args": dict(self.args),
            "versions": dict(self.versions),
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> ShardManifest:
        """Parse (and upgrade, see :func:`upgrade`) a manifest; ShardFormatError naming ``where`` when it is not one."""
        data = upgrade(data, where)
        if not isinstance(data.get("splits"), Mapping) or not isinstance(data.get("label_names"), list):
            raise ShardFormatError(f"{where}: a manifest needs 'splits' (an object) and 'label_names' (a list)")
        splits = {str(name): SplitEntry.from_json(entry, f"{where} split {name!r}") for name, entry in data["splits"].items()}
        encoder = data.get("report_encoder")
        image = data.get("image")
        return cls(
            splits=splits,
            label_names=tuple(str(n) for n in data["label_names"]),
            image=None if image is None else ImageInfo.from_json(image, where),
            report_encoder=None if encoder is None else ReportEncoderInfo.from_json(encoder, where),
            skipped=dict(data.get("skipped") or {}),
            filtered=dict(data.get("filtered") or {}),
            candidates=dict(data.get("candidates") or {}),
            args=dict(data.get("args") or {}),
            versions=dict(data.get("versions") or {}),
            seconds=float(data.get("seconds") or 0.0),
            schema_version=int(data["schema_version"]),
        )


def schema_version_of(data: Any, where: str) -> int:
    """The schema version of parsed manifest JSON (1 when absent); ShardFormatError for a non-manifest or a bad version."""
    if not isinstance(data, Mapping) or "splits" not in data:
        raise ShardFormatError(f"{where}: not a shard manifest (no 'splits' key)")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ShardFormatError(f"{where}: schema_version {version!r} is not a positive integer")
    if version > SCHEMA_VERSION:
        raise ShardFormatError(
            f"{where}: manifest schema_version {version} was written by a newer sharder; this code reads versions "
            f"1 to {SCHEMA_VERSION}: install the sista-pipeline version that wrote it, or re-shard"
        )
    return version


def _upgrade_1_to_2(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Version 1 -> 2: record the DICOM window (from the sharder's ``args.window``) in ``image.window``."""
    out = dict(data)
    image = dict(out["image"]) if isinstance(out.get("image"), Mapping) else None
    if image is not None:
        window = (out.get("args") or {}).get("window")
        dicom = image.get("source") == "dicom"
        image["window"] = WindowSettings.from_json(window, f"{where} args.window").to_json() if dicom and window else None
        out["image"] = image
    out["schema_version"] = 2
    return out


_UPGRADES = {1: _upgrade_1_to_2}  # version n -> n + 1


def upgrade(data: Any, where: str) -> dict[str, Any]:
    """Parsed manifest JSON brought to :data:`SCHEMA_VERSION` (a copy); older versions are upgraded step by step."""
    version = schema_version_of(data, where)
    out = dict(data)
    if version < SCHEMA_VERSION:
        log.warning("%s: manifest schema_version %d is older than %d; reading it upgraded (rewrite it with: %s)",
                    where, version, SCHEMA_VERSION, UPGRADE_COMMAND)
    while version < SCHEMA_VERSION:
        out = _UPGRADES[version](out, where)
        version += 1
    return out
