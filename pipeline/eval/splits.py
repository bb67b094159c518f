"""Split files for every task with label fractions: seeded files written once and reused, or committed ones read as given.

Seeded files live under ``<split_dir>/<data set>-<hash of the pool's ids>/`` (``train.txt``,
``valid.txt``, ``train_1pct_seed0.txt``, ...): written on first use, reused on every later run, so
checkpoints are compared on the same images. A data set that ships committed split files (the
BenchX layout) names their folder instead; see :func:`read_committed_splits` for the layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.eval.adapters.base import LabelledImages

# Committed split files (BenchX layout): one sample id per line. The validation file has either name.
COMMITTED_TRAIN, COMMITTED_VALID, COMMITTED_TEST = "train.txt", ("val.txt", "valid.txt"), "test.txt"


def fraction_tag(fraction: float) -> str:
    """The name of a label fraction in outputs and seeded split files: 0.01 -> ``1pct``."""
    return f"{fraction * 100:g}pct"


def committed_fraction_file(folder: Path, fraction: float) -> Path:
    """The committed file of a label fraction (BenchX): 0.01 -> ``train_1.txt``, 0.1 -> ``train_10.txt``."""
    return Path(folder) / f"train_{fraction * 100:g}.txt"


def _write_ids(path: Path, ids: Sequence[str]) -> None:
    """Write one id per line, atomically (a crash never leaves half a split file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    tmp.replace(path)


def read_id_file(path: Path, known: Sequence[str]) -> list[str]:
    """The ids listed in ``path``, each one of ``known``; a line ``folder/name`` may name the id ``name``.

    BenchX lists COVIDx images as ``train/<file>``, where the adapter's id is the file name.
    An unknown or repeated id is an error naming the file and line.
    """
    path = Path(path)
    known_set = set(known)
    ids: list[str] = []
    seen: set[str] = set()
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        sample = entry if entry in known_set else Path(entry).name
        if sample not in known_set:
            raise ValueError(f"{path}:{line_no}: id {entry!r} is not in the data set")
        if sample in seen:
            raise ValueError(f"{path}:{line_no}: id {entry!r} is listed twice")
        seen.add(sample)
        ids.append(sample)
    return ids


def read_or_write_ids(path: Path, make: Callable[[], Sequence[str]], known: Sequence[str]) -> list[str]:
    """The ids listed in ``path``; when it does not exist, ``make()`` them and write the file first.

    A reused file must only name known ids (it belongs to this data set).
    """
    path = Path(path)
    if path.is_file():
        ids = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
        unknown = set(ids) - set(known)
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} ids not in the data set (e.g. {sorted(unknown)[:3]})")
        return ids
    ids = list(make())
    _write_ids(path, ids)
    return ids


def fraction_ids(ids: Sequence[str], fraction: float, seed: int, minimum: int) -> list[str]:
    """A seeded random subset: ``max(round(fraction * n), minimum)`` ids (all of them at 1.0), in data-set order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    count = len(ids) if fraction == 1 else min(len(ids), max(round(fraction * len(ids)), minimum))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(ids))[:count])
    return [ids[i] for i in chosen]


def partition_ids(ids: Sequence[str], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """Split ids into consecutive parts of a seeded permutation with the given fractions (the last takes the rest)."""
    order = np.random.default_rng(seed).permutation(len(ids))
    bounds = np.floor(np.cumsum(fractions)[:-1] * len(ids)).astype(int)
    return [[ids[i] for i in np.sort(part)] for part in np.split(order, bounds)]


def split_folder(root: Path, name: str, pool: LabelledImages) -> Path:
    """``root/<name>-<hash of the pool's ids>``: split files are reused only for the very same pool."""
    digest = hashlib.sha1("\n".join(pool.ids).encode("utf-8")).hexdigest()[:10]
    return Path(root) / f"{name}-{digest}"


def by_ids(data: LabelledImages, ids: Sequence[str]) -> LabelledImages:
    """The samples of ``data`` named by ``ids``, in that order."""
    position = {sample_id: i for i, sample_id in enumerate(data.ids)}
    return data.subset([position[i] for i in ids])


def concat(parts: Sequence[LabelledImages], name: str) -> LabelledImages:
    """One set of the samples of ``parts`` (same task and labels), e.g. every labelled image of a data set."""
    first = parts[0]
    for part in parts[1:]:
        if part.task != first.task or part.label_names != first.label_names:
            raise ValueError(f"{name}: cannot join {part.name} ({part.task}) to {first.name} ({first.task})")
    texts = None if any(p.texts is None for p in parts) else [t for p in parts for t in p.texts]
    meta = None if any(p.meta is None for p in parts) else [m for p in parts for m in p.meta]
    return LabelledImages(
        name=name, ids=[i for p in parts for i in p.ids], loaders=[f for p in parts for f in p.loaders],
        labels=np.concatenate([p.labels for p in parts]), label_names=list(first.label_names), task=first.task,
        texts=texts, meta=meta,
    )


def read_committed_splits(folder: Path, known: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Train / valid / test ids named by a data set's committed split files (the BenchX layout).

    ``folder`` holds ``train.txt`` (the whole training set, 100 %), ``val.txt`` or ``valid.txt``,
    ``test.txt`` and optionally ``train_1.txt`` / ``train_10.txt`` (1 % / 10 % subsets of
    ``train.txt``); one sample id per line, as the data set's adapter names its samples. ``known``
    are the ids of every labelled image the adapter reads; the three sets must not share an id.
    """
    folder = Path(folder)
    valid_file = next((folder / n for n in COMMITTED_VALID if (folder / n).is_file()), None)
    missing = [n for n in (COMMITTED_TRAIN, COMMITTED_TEST) if not (folder / n).is_file()]
    if valid_file is None:
        missing.append(" or ".join(COMMITTED_VALID))
    if missing:
        raise FileNotFoundError(f"committed split folder {folder}: missing {', '.join(missing)}")
    files = (folder / COMMITTED_TRAIN, valid_file, folder / COMMITTED_TEST)
    parts = [read_id_file(path, known) for path in files]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        shared = set(parts[a]) & set(parts[b])
        if shared:
            raise ValueError(f"{files[a]} and {files[b]} share {len(shared)} ids (e.g. {sorted(shared)[:3]})")
    return parts[0], parts[1], parts[2]


def fraction_split(
    train_ids: Sequence[str], fraction: float, *, seed: int, minimum: int, split_dir: Path, committed: Path | None
) -> tuple[list[str], Path]:
    """The training ids of a label fraction and the file they came from.

    With a committed split folder, its ``train_<pct>.txt`` is read as given (100 % is its whole
    ``train.txt``); otherwise a seeded subset is written once to
    ``split_dir/train_<pct>pct_seed<seed>.txt`` and reused.
    """
    if committed is not None:
        if fraction == 1:
            return list(train_ids), Path(committed) / COMMITTED_TRAIN
        path = committed_fraction_file(committed, fraction)
        if path.is_file():
            return read_id_file(path, train_ids), path
    path = Path(split_dir) / f"train_{fraction_tag(fraction)}_seed{seed}.txt"
    ids = read_or_write_ids(path, lambda: fraction_ids(train_ids, fraction, seed, minimum), train_ids)
    return ids, path
