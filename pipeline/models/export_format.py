"""``sista_export.json``: what an export folder says about itself, so evaluation needs nothing else.

Written next to the weights (see :meth:`SistaModel.export`): the schema version, the preprocessing
(the training run's image transform, how evaluation resizes and crops, the tokenizer and its
maximum length, the DICOM display window of the shards trained on) and the provenance (MLflow
tracking URI and run id, step, git commit, config hash). Like open_clip's ``open_clip_config.json``
or a Hugging Face ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pipeline.config import ConfigError, config_from_dict, to_dict
from pipeline.data.transforms import TransformConfig
from pipeline.shard_format import WindowSettings

SCHEMA_VERSION = 1
EXPORT_FILE = "sista_export.json"
UPGRADE_COMMAND = "python -m pipeline.train.export upgrade {folder} [--run-dir RUN_DIR]"


@dataclass
class ImagePreprocessing:
    """[0, 1] grey image -> model input: resize the short side to ``transform.resize_size``, centre crop, normalise."""

    resize: Literal["short_side"]  # antialiased bilinear resize of the short side
    crop: Literal["center"]  # a centre crop of transform.image_size
    transform: TransformConfig  # the training run's data.transform (augmentation fields: training only)


@dataclass
class TextPreprocessing:
    """The tokenizer (a folder inside the export) and its maximum length."""

    tokenizer: str  # relative to the export folder
    max_length: int


@dataclass
class DicomWindow:
    """The DICOM display window of the shards the model was trained on (the sharder's ``window.*``)."""

    use_file_voi: bool
    percentile_low: float
    percentile_high: float

    def settings(self) -> WindowSettings:
        """As the DICOM reader takes it."""
        return WindowSettings(self.use_file_voi, self.percentile_low, self.percentile_high)


@dataclass
class Preprocessing:
    """Everything evaluation needs to feed the model as it was trained."""

    image: ImagePreprocessing
    text: TextPreprocessing
    dicom_window: Optional[DicomWindow] = None  # None: unknown (no manifest, or JPG-sourced shards)


@dataclass
class Provenance:
    """Where the export came from; every field may be unknown (None)."""

    tracking_uri: Optional[str] = None
    run_id: Optional[str] = None  # the training run's MLflow run
    step: Optional[int] = None
    git_commit: Optional[str] = None
    config_hash: Optional[str] = None  # sha256 of the training run's resolved config.yaml
    run_dir: Optional[str] = None


@dataclass
class ExportDescription:
    """The content of ``sista_export.json``."""

    schema_version: int
    preprocessing: Preprocessing
    provenance: Provenance


def write_description(folder: str | Path, description: ExportDescription) -> Path:
    """Write ``folder/sista_export.json``; returns its path."""
    path = Path(folder) / EXPORT_FILE
    path.write_text(json.dumps(to_dict(description), indent=2) + "\n", encoding="utf-8")
    return path


def read_description(folder: str | Path) -> ExportDescription:
    """Read ``folder/sista_export.json``; an export without one, or of another schema, is refused with the fix."""
    path = Path(folder) / EXPORT_FILE
    if not path.is_file():
        raise ConfigError(
            f"{folder}: no {EXPORT_FILE} (an export written before schema {SCHEMA_VERSION}); convert it with "
            f"`{UPGRADE_COMMAND.format(folder=folder)}` (RUN_DIR: the training run folder holding config.yaml, "
            "default: the export's parent)"
        )
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from err
    version = tree.get("schema_version") if isinstance(tree, dict) else None
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version {version!r} is not one this package reads (up to "
                          f"{SCHEMA_VERSION}): install the SISTA version that wrote it")
    return config_from_dict(ExportDescription, tree, str(path))
