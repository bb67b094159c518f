"""The project's WebDataset shards (MIMIC-CXR or the phantom set): one split of ``OUT/manifest.json``.

Every tar is indexed once (member offsets), and images are read lazily by seeking, so a test
split of thousands of images does not sit in memory. Labels come from each sample's ``json``
(1.0 present, 0.0 negated, -1.0 uncertain, null not mentioned = negative); uncertain follows
the policy: ``ones``, ``zeros`` or ``ignore`` (NaN, left out of that label's AUROC).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.data.transforms import decode_image
from pipeline.eval.adapters.base import ImageLoader, LabelledImages

ShardUncertainPolicy = Literal["ones", "zeros", "ignore"]
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")


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


def load_shard_split(root: Path, split: str, uncertain: ShardUncertainPolicy) -> LabelledImages:
    """Read one split of a shard set: images (lazy), training texts, label matrix and per-sample json."""
    manifest_path = Path(root) / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"shard manifest not found: {manifest_path}")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ValueError(f"{manifest_path}: no split {split!r} (has {sorted(splits)})")
    label_names = list(manifest["label_names"])
    ids, loaders, texts, labels, metas = [], [], [], [], []
    for shard in splits[split]["shards"]:
        tar_path = Path(root) / shard["path"]
        if not tar_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: shard {shard['path']} is missing")
        index = _index_tar(tar_path)
        if len(index) != shard["num_samples"]:
            raise ValueError(f"{tar_path}: {len(index)} samples, manifest says {shard['num_samples']}")
        for key, members in index.items():
            image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
            if image_ext is None or "txt" not in members or "json" not in members:
                raise ValueError(f"{tar_path}: sample {key!r} lacks an image, txt or json member")
            meta = json.loads(_read_member(tar_path, members["json"]).decode("utf-8"))
            if list(meta["labels"]["names"]) != label_names:
                raise ValueError(f"{tar_path}: sample {key!r} label names differ from the manifest's")
            ids.append(key)
            loaders.append(_member_loader(tar_path, image_ext, *members[image_ext]))
            texts.append(_read_member(tar_path, members["txt"]).decode("utf-8"))
            labels.append(_label_row(meta["labels"]["values"], uncertain))
            metas.append(meta)
    if not ids:
        raise ValueError(f"{manifest_path}: split {split!r} has no samples")
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
