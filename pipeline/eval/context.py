"""What every evaluation task shares: the loaded model, its tokenizer and transform, caches, and results."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from pipeline.config import ConfigError, config_from_dict
from pipeline.data.transforms import TransformConfig
from pipeline.eval.adapters import LabelledImages, load_shard_split
from pipeline.eval.config import EvalConfig
from pipeline.eval.features import embed_images, embed_texts
from pipeline.models import SistaModel, build_tokenizer
from pipeline.shard_format import WindowSettings, is_pipe, manifest_location, read_manifest

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG_NAME = "config.yaml"  # the trainer saves its resolved config here, beside export/


def resolve_path(value: str | None, key: str) -> Path:
    """A configured path: as given (absolute or relative to the working dir), else relative to the repo."""
    if value is None:
        raise ConfigError(f"key '{key}' is not set: give it on the command line ({key}=PATH)")
    path = Path(value)
    if path.exists() or path.is_absolute():
        return path
    in_repo = REPO_ROOT / path
    return in_repo if in_repo.exists() else path


def training_config(checkpoint: Path) -> dict | None:
    """The training run's resolved config (``<run dir>/config.yaml`` beside ``export/``), if it is there."""
    path = checkpoint.resolve().parent / TRAIN_CONFIG_NAME
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def resolve_transform(cfg: EvalConfig, checkpoint: Path) -> TransformConfig:
    """The eval transform: ``transform`` from the eval config, else the training run's ``data.transform``."""
    if cfg.transform is not None:
        return cfg.transform
    train = training_config(checkpoint)
    tree = (train or {}).get("data", {}).get("transform")
    if tree is None:
        raise ConfigError(
            f"no 'transform' in the eval config and no {checkpoint.resolve().parent / TRAIN_CONFIG_NAME} with "
            "data.transform: set transform.* (image_size, resize_size, mean, std, channels, ...) explicitly"
        )
    return config_from_dict(TransformConfig, tree, str(checkpoint.resolve().parent / TRAIN_CONFIG_NAME))


@dataclass
class TaskResult:
    """One task's numbers (JSON), its Markdown table rows (what, value, 95 % CI) and figure files."""

    task: str
    metrics: dict
    table: list[tuple[str, str, str]]
    figures: list[Path] = field(default_factory=list)


def fmt(value: float | None, ci: list[float] | None = None, scale: float = 100.0) -> tuple[str, str]:
    """A value and its interval as table cells (percent by default); None prints as n/a."""
    if value is None:
        return "n/a", ""
    cell = f"{value * scale:.1f}"
    return cell, "" if ci is None else f"[{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]"


@dataclass
class EvalContext:
    """The model under evaluation and caches shared by the tasks of one run."""

    cfg: EvalConfig
    model: SistaModel
    tokenizer: object
    transform: TransformConfig
    device: torch.device
    out_dir: Path
    _splits: dict = field(default_factory=dict)
    _image_cache: dict = field(default_factory=dict)

    @property
    def group_words(self) -> bool:
        """Whether STA was trained on words (``model.text.token_unit: word``), so token features are per word."""
        train = training_config(Path(self.cfg.checkpoint)) or {}
        return ((train.get("model") or {}).get("text") or {}).get("token_unit") == "word"

    @property
    def max_length(self) -> int:
        """The text encoder's maximum token count."""
        return self.model.config.text.max_length

    def shard_manifest_location(self) -> str:
        """Where ``data.shards``' manifest is: ``data.shards.manifest`` (a path or ``pipe:``), else ``root/manifest.json``."""
        shards = self.cfg.data.shards
        if shards.manifest is not None:
            return shards.manifest if is_pipe(shards.manifest) else str(resolve_path(shards.manifest, "data.shards.manifest"))
        return manifest_location(resolve_path(shards.root, "data.shards.root"))

    def shard_split(self, split: str) -> LabelledImages:
        """One split of ``data.shards`` (read once per run; ``pipe:`` shards through the local cache)."""
        if split not in self._splits:
            shards = self.cfg.data.shards
            cache = None if shards.cache_dir is None else Path(shards.cache_dir)
            self._splits[split] = load_shard_split(
                self.shard_manifest_location(), split, shards.uncertain, shard_root=shards.shard_root, cache_dir=cache
            )
        return self._splits[split]

    def dicom_window(self) -> WindowSettings:
        """The DICOM display window recorded in ``data.shards``' manifest, for downstream DICOM sets (RSNA)."""
        location = self.shard_manifest_location()
        image = read_manifest(location).image
        if image is None or image.window is None:
            raise ConfigError(
                f"{location} records no DICOM window (shards made from JPGs): set data.shards.root to shards made "
                "from DICOMs, whose manifest's image.window says how the training films were displayed"
            )
        return image.window

    def image_features(self, data: LabelledImages, which: str) -> np.ndarray:
        """``global`` (projected, normalised) or ``backbone`` (trunk pooled) features of every image, cached."""
        key = (data.name, hash(tuple(data.ids)), which)
        if key not in self._image_cache:
            emb = embed_images(
                self.model,
                data.loaders,
                self.transform,
                which=which,
                batch_size=self.cfg.batch_size,
                num_workers=self.cfg.num_workers,
                device=self.device,
                desc=f"{data.name} {which}",
            )
            self._image_cache[key] = emb
        return self._image_cache[key]

    def text_features(self, texts: list[str], desc: str = "texts") -> np.ndarray:
        """Global text embeddings (projected, normalised)."""
        return embed_texts(
            self.model,
            self.tokenizer,
            texts,
            max_length=self.max_length,
            batch_size=self.cfg.batch_size,
            device=self.device,
            desc=desc,
        )


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available")
    return torch.device(name)


def tokenizer_for(model: SistaModel) -> object:
    """The tokenizer saved with the exported model."""
    return build_tokenizer(model.config)
