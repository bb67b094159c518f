"""Build test ModelConfigs from a ``model:`` tree with per-section changes."""

from __future__ import annotations

import copy
from typing import Any

from pipeline.config import config_from_dict
from pipeline.models import ModelConfig


def make_config(tree: dict[str, Any], **changes: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from ``tree`` with per-section changes, e.g. ``image={"name": "resnet18"}``."""
    tree = copy.deepcopy(tree)
    for section, values in changes.items():
        if isinstance(values, dict):
            tree[section].update(values)
        else:
            tree[section] = values
    return config_from_dict(ModelConfig, tree, "test")
