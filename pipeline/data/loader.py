"""The training data pipeline: WebDataset stages from the shard list to collated batches.

Stages, per worker: epoch shard list (shuffled by seed+epoch, repeated in passes) -> split_by_node ->
split_by_worker -> tar to samples -> deterministic shuffle buffer -> resume cursor -> decode+transform
-> batch -> quota. An epoch is a number of micro-batches fixed from the sample count, the same on every
rank; a worker that runs out of shards wraps around into the next pass. A corrupt sample (or an
unreadable shard) goes to one handler that logs it, counts it and carries on.

Resumption: batch ``j`` of a rank's epoch comes from logical worker ``j % num_workers`` (the
DataLoader's in-order round robin); each batch carries its worker's raw-sample cursor, so the main
process knows, after each consumed batch, how far every worker's stream went. A resumed loader maps
physical worker ``p`` to logical worker ``(p + consumed) % num_workers`` and skips that many raw
samples (tar reading only, no decoding) before continuing the identical stream.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.data.batch import Batch
from pipeline.data.collate import Collator, Sample
from pipeline.data.reading import (
    CorruptCounter,
    NoReadableShard,
    RateLimitedLog,
    ReadingConfig,
    bounded_passes,
    check_complete,
)
from pipeline.data.shards import ShardError, ShardList
from pipeline.data.transforms import (
    TransformConfig,
    decode_image,
    eval_transform,
    sample_generator,
    train_transform,
)
from pipeline.job_env import helper_release, ignore_stop_signals, stop_signals_held
from pipeline.shard_format import IMAGE_EXTENSIONS, REPORT_EMBEDDING_MEMBER, image_extension, read_sample_meta

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Data section of a training config (YAML ``data:``)."""

    manifest: str | None  # the sharder's manifest.json (local path or pipe: command)
    shard_root: str | None  # where shards live if not next to the manifest: dir or template with {path}
    pattern: str | None  # alternative to a manifest: brace pattern of the training shards
    num_samples: int | None  # samples behind ``pattern``
    train_split: str
    val_split: str
    batch_size: int  # per-device micro-batch
    num_workers: int
    prefetch_factor: int
    shuffle_buffer: int
    shuffle_initial: int
    epoch_samples: int | None  # samples per epoch (default: the split's count)
    findings_annotations: str | None  # a phantom set's phantom_annotations.json: batches carry findings signatures
    transform: TransformConfig
    reading: ReadingConfig

    def __post_init__(self) -> None:
        for ok, message in [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (self.prefetch_factor >= 1, f"prefetch_factor must be >= 1, got {self.prefetch_factor}"),
            (self.shuffle_buffer >= 1, f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}"),
            (0 <= self.shuffle_initial <= self.shuffle_buffer,
             f"shuffle_initial must be in [0, shuffle_buffer], got {self.shuffle_initial}"),
            (self.epoch_samples is None or self.epoch_samples >= 1, f"epoch_samples must be null or >= 1, got {self.epoch_samples}"),
            (self.num_samples is None or self.num_samples >= 1, f"num_samples must be null or >= 1, got {self.num_samples}"),
        ]:
            if not ok:
                raise ValueError(message)


@dataclass
class DataPosition:
    """How far a rank's data stream went in its current epoch (saved in checkpoints)."""

    epoch: int
    micro_batches: int = 0  # consumed in this epoch
    cursors: list[int] = field(default_factory=list)  # raw samples consumed, per logical worker
    corrupt: list[int] = field(default_factory=list)  # corrupt samples skipped, per logical worker

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"epoch": self.epoch, "micro_batches": self.micro_batches, "cursors": self.cursors, "corrupt": self.corrupt}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataPosition:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["epoch"]), int(data["micro_batches"]), list(data["cursors"]), list(data["corrupt"]))


def micro_batches_per_epoch(num_samples: int, micro_batch: int, world_size: int, accumulation: int) -> int:
    """Micro-batches every rank takes per epoch: whole optimizer steps of the global batch, times accumulation."""
    global_batch = micro_batch * world_size * accumulation
    steps = num_samples // global_batch
    if steps < 1:
        raise ShardError(f"epoch of {num_samples} samples is smaller than one global batch of {global_batch}")
    return steps * accumulation


def quota(total: int, start: int, worker: int, num_workers: int) -> tuple[int, int]:
    """(batches already consumed, batches still to make) by logical ``worker`` of ``total`` round-robin batches."""
    def count_below(n: int) -> int:
        return max(0, (n - worker + num_workers - 1) // num_workers)

    return count_below(start), count_below(total) - count_below(start)


# --------------------------------------------------------------------------- named stages


def epoch_shards(urls: tuple[str, ...], seed: int, epoch: int, pass_index: int) -> list[str]:
    """The shard list of one pass of one epoch, shuffled identically on every rank."""
    order = list(urls)
    random.Random(f"shards/{seed}/{epoch}/{pass_index}").shuffle(order)
    return order


def split_by_node(urls: list[str], rank: int, world_size: int) -> list[str]:
    """The shards of one rank: every ``world_size``-th from ``rank``."""
    return urls[rank::world_size]


def split_by_worker(urls: list[str], worker: int, num_workers: int) -> list[str]:
    """The shards of one loader worker of a rank."""
    return urls[worker::num_workers]


class RawCursor:
    """Counts raw samples leaving the shuffle buffer and skips the first ``skip`` (resume)."""

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.count = 0

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        for sample in src:
            self.count += 1
            if self.count > self.skip:
                yield sample


def decode_sample(raw: dict[str, Any], with_embedding: bool = False) -> dict[str, Any]:
    """Decode the members of one tar sample: image tensor [1,H,W] in [0,1], text, metadata, embedding.

    ``with_embedding``: the shards carry report embeddings, so a sample without one is incomplete.
    """
    key = raw.get("__key__", "?")
    where = f"sample {key} in {raw.get('__url__', '?')}"
    try:
        ext = image_extension(raw)
        if ext is None:
            raise ValueError(f"no image member (expected one of {IMAGE_EXTENSIONS}; has {sorted(raw)})")
        check_complete(raw, with_embedding)
        _, labels = read_sample_meta(raw["json"], where)
        emb = None
        if REPORT_EMBEDDING_MEMBER in raw:
            emb = np.load(io.BytesIO(raw[REPORT_EMBEDDING_MEMBER]), allow_pickle=False)
            if emb.ndim != 1:
                raise ValueError(f"report_emb.npy has shape {emb.shape}, expected 1-D")
        return {
            "key": key,
            "image": decode_image(raw[ext], ext),
            "text": raw["txt"].decode("utf-8"),
            "labels": list(labels.values),
            "report_emb": emb,
        }
    except Exception as err:
        raise ValueError(f"{where}: {type(err).__name__}: {err}") from err


class TrainStream(IterableDataset):
    """One rank's epoch as an iterable of collated micro-batches (see the module docstring)."""

    def __init__(
        self,
        shards: ShardList,
        cfg: DataConfig,
        collator: Collator,
        *,
        rank: int,
        world_size: int,
        seed: int,
        total_micro_batches: int,
        start: DataPosition,
    ) -> None:
        super().__init__()
        self.num_workers = max(1, cfg.num_workers)
        if len(shards) < world_size * self.num_workers:
            raise ShardError(
                f"split {shards.split!r} has {len(shards)} shards but {world_size} ranks x {self.num_workers} "
                "loader workers need at least one each: write smaller shards or lower data.num_workers"
            )
        if start.cursors and len(start.cursors) != self.num_workers:
            raise ShardError(
                f"checkpoint data position has {len(start.cursors)} loader workers, this run {self.num_workers}: "
                "resume with the same data.num_workers"
            )
        self.shards, self.cfg, self.collator = shards, cfg, collator
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.total, self.start = total_micro_batches, start

    def _logical_worker(self) -> int:
        """This process's logical worker index (shifted by the batches already consumed)."""
        info = get_worker_info()
        physical = info.id if info is not None else 0
        return (physical + self.start.micro_batches) % self.num_workers

    def _pass_shards(self, worker: int, pass_index: int) -> list[str]:
        """This worker's shards in one pass over the epoch's shard list."""
        urls = epoch_shards(self.shards.urls, self.seed, self.start.epoch, pass_index)
        return split_by_worker(split_by_node(urls, self.rank, self.world_size), worker, self.num_workers)

    def _raw_samples(self, worker: int, errors: CorruptCounter) -> Iterator[dict[str, Any]]:
        """Endless passes over this worker's shards, each pass shuffled on its own (so a pass is complete)."""
        rng = random.Random(f"samples/{self.seed}/{self.start.epoch}/{self.rank}/{worker}")

        def one_pass(pass_index: int) -> Iterator[dict[str, Any]]:
            return iter(wds.DataPipeline(
                wds.SimpleShardList(self._pass_shards(worker, pass_index)),
                wds.tarfile_to_samples(handler=errors),
                wds.shuffle(self.cfg.shuffle_buffer, initial=self.cfg.shuffle_initial, rng=rng),
            ))

        yield from bounded_passes(one_pass, lambda i: self._pass_shards(worker, i), self.cfg.reading, errors)

    def _to_sample(self, decoded: dict[str, Any]) -> Sample:
        """Apply the training transform with the sample's own generator."""
        gen = sample_generator(self.seed, self.start.epoch, decoded["key"])
        image = train_transform(decoded["image"], self.cfg.transform, gen)
        return Sample(decoded["key"], image, decoded["text"], decoded["report_emb"], decoded["labels"])

    def __iter__(self) -> Iterator[tuple[Batch, tuple[int, int, int]]]:
        worker = self._logical_worker()
        done, todo = quota(self.total, self.start.micro_batches, worker, self.num_workers)
        if todo <= 0:
            return
        cursors = self.start.cursors or [0] * self.num_workers
        corrupt = self.start.corrupt or [0] * self.num_workers
        reading = self.cfg.reading
        errors = CorruptCounter(corrupt[worker], RateLimitedLog(reading.warn_burst, reading.warn_interval_s))
        cursor = RawCursor(cursors[worker])
        with_embedding = bool(self.shards.report_embeddings)
        pipeline = wds.DataPipeline(
            lambda: self._raw_samples(worker, errors),  # shard list -> node -> worker -> tar -> shuffle
            cursor,
            wds.map(lambda raw: decode_sample(raw, with_embedding), handler=errors),
            wds.map(self._to_sample, handler=errors),
            lambda samples: batch_samples(samples, self.cfg.batch_size, self.collator),
        )
        for batch in itertools.islice(pipeline, todo):
            yield batch, (worker, cursor.count, errors.count)  # the batch and where this worker stands


def batch_samples(samples: Iterator[Sample], size: int, collate: Collator) -> Iterator[Batch]:
    """Full batches of ``size``, each yielded as soon as it is full (no look-ahead, so cursors stay exact)."""
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield collate(batch)
            batch = []


def _worker_init(_: int, release: Event | None = None) -> None:
    """One intra-op thread per loader worker (the main process owns the cores); stop signals go to the main process.

    ``scancel``/``timeout`` signal the whole process group: a worker that died of it would take the
    rank down before it could checkpoint. The main process shuts its workers down itself: when its
    iterator ends or is closed, and at its exit (``release``).
    """
    torch.set_num_threads(1)
    ignore_stop_signals(release)


class EpochLoader:
    """Iterates one epoch of a :class:`TrainStream` through a DataLoader and tracks the position."""

    def __init__(self, stream: TrainStream, cfg: DataConfig, pin_memory: bool = False) -> None:
        self.stream = stream
        self.position = DataPosition(
            stream.start.epoch,
            stream.start.micro_batches,
            list(stream.start.cursors or [0] * stream.num_workers),
            list(stream.start.corrupt or [0] * stream.num_workers),
        )
        gen = torch.Generator()
        gen.manual_seed(stream.seed + stream.start.epoch)  # worker seeds come from here, not the global RNG
        self.loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=cfg.num_workers,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers > 0 else None,
            worker_init_fn=functools.partial(_worker_init, release=helper_release()) if cfg.num_workers > 0 else None,
            generator=gen,
            in_order=True,
            pin_memory=pin_memory,
        )

    def __len__(self) -> int:
        """Micro-batches still to come in this epoch."""
        return self.stream.total - self.stream.start.micro_batches

    @property
    def corrupt_total(self) -> int:
        """Corrupt samples skipped so far in this epoch, all workers."""
        return sum(self.position.corrupt)

    def __iter__(self) -> Iterator[Batch]:
        batches = self._batches()
        try:
            for batch, _ in batches:
                yield batch
        except NoReadableShard as err:  # from a loader worker: its message carries the worker's traceback
            last = str(err).strip().splitlines()[-1]
            raise NoReadableShard(last.split(f"{NoReadableShard.__name__}: ", 1)[-1]) from None
        finally:
            batches.close()

    def _batches(self) -> Iterator[tuple[Batch, tuple[int, int, int]]]:
        with stop_signals_held():  # the workers start here; see stop_signals_held
            batches = iter(self.loader)
        try:
            for batch, (worker, cursor, corrupt) in batches:
                self.position.micro_batches += 1
                self.position.cursors[worker] = cursor
                self.position.corrupt[worker] = corrupt
                yield batch, (worker, cursor, corrupt)
        finally:
            # The only reference: dropping it shuts the workers down now, even while an exception's
            # traceback (kept by a caller) still holds this frame.
            del batches


def build_epoch_loader(
    shards: ShardList,
    cfg: DataConfig,
    collator: Collator,
    *,
    rank: int,
    world_size: int,
    seed: int,
    accumulation: int,
    start: DataPosition,
    pin_memory: bool = False,
) -> EpochLoader:
    """The loader of one epoch on one rank, starting at ``start``; ``pin_memory`` when feeding a GPU."""
    samples = cfg.epoch_samples or shards.num_samples
    total = micro_batches_per_epoch(samples, cfg.batch_size, world_size, accumulation)
    stream = TrainStream(
        shards, cfg, collator, rank=rank, world_size=world_size, seed=seed, total_micro_batches=total, start=start
    )
    return EpochLoader(stream, cfg, pin_memory)


def load_fixed_batch(shards: ShardList, cfg: DataConfig, collator: Collator, count: int) -> Batch:
    """The first ``count`` readable samples of a split in shard order, eval-transformed (for figures)."""
    errors = CorruptCounter()
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(shards.urls)),
        wds.tarfile_to_samples(handler=errors),
        wds.map(lambda raw: decode_sample(raw, bool(shards.report_embeddings)), handler=errors),
    )
    samples = []
    for decoded in itertools.islice(pipeline, count):
        image = eval_transform(decoded["image"], cfg.transform)
        samples.append(Sample(decoded["key"], image, decoded["text"], decoded["report_emb"], decoded["labels"]))
    if not samples:
        raise ShardError(f"split {shards.split!r}: no readable sample for the figures")
    return collator(samples)
