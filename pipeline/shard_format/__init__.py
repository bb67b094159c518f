"""The shard format's one owner: manifest, shard records, sample metadata, paths, window, RLE, caching.

The sharder (``data_prep``) writes through it; the training loader, the trainer and every evaluation
adapter read through it. It imports nothing else from ``pipeline``. See docs/sharding.md#the-shard-format.
"""

from pipeline.shard_format.atomic import write_json_atomic, write_text_atomic
from pipeline.shard_format.cache import default_cache_dir, local_shard
from pipeline.shard_format.coco_rle import decode_rle, encode_rle, mask_bbox
from pipeline.shard_format.layout import (
    IMAGE_EXTENSIONS,
    MANIFEST,
    META_MEMBER,
    REPORT_EMBEDDING_MEMBER,
    SKIPPED_CSV,
    STATE_DIR,
    TEXT_MEMBER,
    ShardFormatError,
    image_extension,
    shard_index,
    shard_path,
    validate_relative_path,
)
from pipeline.shard_format.location import (
    PATH_FIELD,
    PIPE_PREFIX,
    check_template,
    is_pipe,
    manifest_location,
    read_manifest,
    shard_url,
)
from pipeline.shard_format.manifest import (
    SCHEMA_VERSION,
    ImageInfo,
    ReportEncoderInfo,
    ShardManifest,
    ShardRecord,
    SplitEntry,
    WindowSettings,
    upgrade,
)
from pipeline.shard_format.sample import LABEL_POLICY, SampleLabels, SampleMeta, read_sample_meta

__all__ = [
    "IMAGE_EXTENSIONS", "LABEL_POLICY", "MANIFEST", "META_MEMBER", "PATH_FIELD", "PIPE_PREFIX", "REPORT_EMBEDDING_MEMBER",
    "SCHEMA_VERSION", "SKIPPED_CSV", "STATE_DIR", "TEXT_MEMBER", "ImageInfo", "ReportEncoderInfo", "SampleLabels",
    "SampleMeta", "ShardFormatError", "ShardManifest", "ShardRecord", "SplitEntry", "WindowSettings",
    "check_template", "decode_rle", "default_cache_dir", "encode_rle", "image_extension", "is_pipe",
    "local_shard", "manifest_location", "mask_bbox", "read_manifest", "read_sample_meta", "shard_index",
    "shard_path", "shard_url", "upgrade", "validate_relative_path", "write_json_atomic", "write_text_atomic",
]
