"""The sharder's config schema (defaults live in ``configs/data/mimic.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from data_prep.mimic_metadata import OFFICIAL_SPLITS
from data_prep.reports import SECTION_KEYS
from pipeline.shard_format import WindowSettings


@dataclass
class ShardConfig:
    """Everything ``shard_mimic`` needs: inputs, image rendering, text, sharding, slicing and checks."""

    image_source: Literal["dicom", "jpg"]
    image_size: int
    image_format: Literal["png", "jpg", "png16"]
    jpg_quality: int
    png_compress_level: int
    png_zlib_strategy: Literal["default", "filtered", "huffman_only", "rle"]
    shard_size: int
    workers: int
    views: list[str]
    splits: list[str]
    text_sections: list[str]
    use_fallback: bool
    min_words: int
    window: WindowSettings  # the DICOM display window, recorded in the manifest (image.window)
    encoder_batch_size: int
    encoder_max_length: int
    resume: bool
    max_skip_fraction: float
    num_tasks: int
    task_index: int
    mimic_root: Optional[Path] = None
    out: Optional[Path] = None
    jpg_root: Optional[Path] = None
    csv_root: Optional[Path] = None
    report_encoder: Optional[str] = None
    limit: Optional[int] = None

    def __post_init__(self) -> None:
        checks = [
            (self.image_size > 0, f"image_size must be > 0, got {self.image_size}"),
            (1 <= self.jpg_quality <= 100, f"jpg_quality must be in 1..100, got {self.jpg_quality}"),
            (0 <= self.png_compress_level <= 9, f"png_compress_level must be in 0..9, got {self.png_compress_level}"),
            (self.shard_size > 0, f"shard_size must be > 0, got {self.shard_size}"),
            (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
            (bool(self.views), "views must name at least one view"),
            (bool(self.splits) and set(self.splits) <= set(OFFICIAL_SPLITS),
             f"splits must be a non-empty subset of {list(OFFICIAL_SPLITS)}, got {self.splits}"),
            (len(set(self.splits)) == len(self.splits), f"splits repeat a name: {self.splits}"),
            (bool(self.text_sections) and set(self.text_sections) <= set(SECTION_KEYS),
             f"text_sections must be a non-empty subset of {list(SECTION_KEYS)}, got {self.text_sections}"),
            (self.min_words >= 0, f"min_words must be >= 0, got {self.min_words}"),
            (self.encoder_batch_size > 0, f"encoder_batch_size must be > 0, got {self.encoder_batch_size}"),
            (self.encoder_max_length > 0, f"encoder_max_length must be > 0, got {self.encoder_max_length}"),
            (0.0 <= self.max_skip_fraction <= 1.0, f"max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}"),
            (self.num_tasks >= 1, f"num_tasks must be >= 1, got {self.num_tasks}"),
            (0 <= self.task_index < self.num_tasks, f"task_index must be in [0, num_tasks), got {self.task_index}"),
            (self.limit is None or self.limit >= 0, f"limit must be >= 0, got {self.limit}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.views = [v.strip().upper() for v in self.views]

    @property
    def output_bits(self) -> int:
        """Bits per pixel of the stored image."""
        return 16 if self.image_format == "png16" else 8

    @property
    def image_extension(self) -> str:
        """Tar member extension of the image (``png`` for png16 too)."""
        return "jpg" if self.image_format == "jpg" else "png"
