"""COVIDx in its published layout: ``train.txt`` / ``test.txt`` split files and ``train/`` / ``test/`` image folders.

Each line of a split file is ``patient_id filename label source`` separated by spaces
(the label is e.g. ``positive``/``negative`` in COVIDx 8-9, or ``normal``/``pneumonia``/
``COVID-19`` in earlier releases). Class names come from the config, in a fixed order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.eval.adapters.base import LabelledImages, file_loader

SPLITS = ("train", "test")


def load_covidx(root: Path, split: str, class_names: Sequence[str]) -> LabelledImages:
    """Read ``root/<split>.txt`` into a multi-class set whose targets index ``class_names``."""
    if split not in SPLITS:
        raise ValueError(f"COVIDx split must be one of {SPLITS}, got {split!r}")
    list_path = Path(root) / f"{split}.txt"
    if not list_path.is_file():
        raise FileNotFoundError(f"COVIDx split file not found: {list_path}")
    lookup = {name.lower(): i for i, name in enumerate(class_names)}
    ids, loaders, targets = [], [], []
    for line_no, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 3:
            raise ValueError(f"{list_path}:{line_no}: expected 'patient_id filename label source', got {line!r}")
        # Filenames never contain spaces, but some releases omit the source column.
        filename, label = fields[1], fields[2]
        if label.lower() not in lookup:
            raise ValueError(f"{list_path}:{line_no}: label {label!r} is not one of {list(class_names)}")
        path = Path(root) / split / filename
        if not path.is_file():
            raise FileNotFoundError(f"{list_path}:{line_no}: image not found: {path}")
        ids.append(filename)
        loaders.append(file_loader(path))
        targets.append(lookup[label.lower()])
    if not ids:
        raise ValueError(f"{list_path}: no images listed")
    return LabelledImages(
        name=f"covidx/{split}",
        ids=ids,
        loaders=loaders,
        labels=np.asarray(targets, dtype=np.int64),
        label_names=list(class_names),
        task="multiclass",
    )
