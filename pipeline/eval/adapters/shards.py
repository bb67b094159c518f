"""The project's WebDataset shards (MIMIC-CXR or the phantom set): one split of a manifest, read as training reads it.

The manifest is found and parsed by :mod:`pipeline.shard_format`, with the same ``shard_root``
and ``pipe:`` templates as training. Every tar is indexed once (member offsets), and images are
read lazily by seeking, so a test split of thousands of images does not sit in memory; a shard
behind a ``pipe:`` URL is first copied into the local shard cache (seeking needs a file). Labels come from each sample's ``json``
(1.0 present, 0.0 negated, -1.0 uncertain, null not mentioned = negative); uncertain follows
the policy: ``ones``, ``zeros`` or ``ignore`` (NaN, left out of that label's AUROC).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.data.transforms import decode_image
from pipeline.eval.adapters.base import ImageLoader, LabelledImages
from pipeline.shard_format import (
    META_MEMBER,
    TEXT_MEMBER,
    image_extension,
    local_shard,
    manifest_location,
    read_manifest,
    read_sample_meta,
    shard_url,
)

ShardUncertainPolicy = Literal["ones", "zeros", "ignore"]


def _member_loader(tar_path: Path, ext: str, offset: int, size: int) -> ImageLoader:
    """A loader that reads one tar member's bytes by offset and decodes them."""

    def load() -> torch.Tensor:
        data = _read_member(tar_path, (offset, size))
        try:
            return decode_image(data, ext)
        except Exception as err:  # PIL raises several unrelated types for broken files
            raise ValueError(f"{tar_path}: image member at byte {offset} is not readable ({err})") from err

    return load


def _index_tar(tar_path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """``{key: {extension: (data offset, size)}}`` for every file member of one shard."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                samples.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)
    except tarfile.TarError as err:
        raise ValueError(f"{tar_path}: not a readable tar shard ({err})") from err
    return samples


def _read_member(tar_path: Path, location: tuple[int, int]) -> bytes:
    """The raw bytes of one member."""
    with tar_path.open("rb") as handle:
        handle.seek(location[0])
        return handle.read(location[1])


def _label_row(values: list, policy: ShardUncertainPolicy) -> list[float]:
    """Map stored CheXpert values (1/0/-1/null) to 1/0/NaN under the uncertainty policy."""
    uncertain = {"ones": 1.0, "zeros": 0.0, "ignore": float("nan")}[policy]
    return [1.0 if v == 1.0 else uncertain if v == -1.0 else 0.0 for v in values]


def load_shard_split(
    manifest: str | Path,
    split: str,
    uncertain: ShardUncertainPolicy,
    *,
    shard_root: str | None = None,
    cache_dir: Path | None = None,
) -> LabelledImages:
    """Read one split of a shard set: images (lazy), training texts, label matrix and per-sample json.

    ``manifest`` is a shard folder, a manifest path or a ``pipe:`` command; ``shard_root`` as in training
    (a folder or a ``{path}`` template); ``pipe:`` shards are copied into ``cache_dir`` (see
    :func:`pipeline.shard_format.local_shard`).
    """
    location = manifest_location(manifest)
    parsed = read_manifest(location)
    entry = parsed.split(split, location)
    label_names = list(parsed.label_names)
    ids, loaders, texts, labels, metas = [], [], [], [], []
    for shard in entry.shards:
        url = shard_url(shard.path, location, shard_root)
        tar_path = local_shard(url, shard, cache_dir)
        if not tar_path.is_file():
            raise FileNotFoundError(f"{location}: shard {shard.path} is missing ({tar_path})")
        index = _index_tar(tar_path)
        if len(index) != shard.num_samples:
            raise ValueError(f"{tar_path}: {len(index)} samples, manifest says {shard.num_samples}")
        for key, members in index.items():
            image_ext = image_extension(members)
            if image_ext is None or TEXT_MEMBER not in members or META_MEMBER not in members:
                raise ValueError(f"{tar_path}: sample {key!r} lacks an image, txt or json member")
            meta, sample_labels = read_sample_meta(_read_member(tar_path, members[META_MEMBER]), f"{tar_path}: sample {key!r}")
            if list(sample_labels.names) != label_names:
                raise ValueError(f"{tar_path}: sample {key!r} label names differ from the manifest's")
            ids.append(key)
            loaders.append(_member_loader(tar_path, image_ext, *members[image_ext]))
            texts.append(_read_member(tar_path, members[TEXT_MEMBER]).decode("utf-8"))
            labels.append(_label_row(list(sample_labels.values), uncertain))
            metas.append(meta)
    if not ids:
        raise ValueError(f"{location}: split {split!r} has no samples")
    return LabelledImages(
        name=f"shards/{split}",
        ids=ids,
        loaders=loaders,
        labels=np.asarray(labels, dtype=np.float64),
        label_names=label_names,
        task="multilabel",
        texts=texts,
        meta=metas,
    )
