"""Reading shards into training batches: shard lists, transforms, collation and the WebDataset loader."""

from pipeline.data.batch import Batch
from pipeline.data.collate import Collator, Sample
from pipeline.data.loader import (
    DataConfig,
    DataPosition,
    EpochLoader,
    build_epoch_loader,
    load_fixed_batch,
    micro_batches_per_epoch,
)
from pipeline.data.shards import ShardError, ShardList, resolve_shards
from pipeline.data.transforms import TransformConfig, eval_transform, expand_channels, train_transform

__all__ = [
    "Batch",
    "Collator",
    "DataConfig",
    "DataPosition",
    "EpochLoader",
    "Sample",
    "ShardError",
    "ShardList",
    "TransformConfig",
    "build_epoch_loader",
    "eval_transform",
    "expand_channels",
    "load_fixed_batch",
    "micro_batches_per_epoch",
    "resolve_shards",
    "train_transform",
]
