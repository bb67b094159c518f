"""The export describes itself: old exports are refused with the fix, and evaluation never imports the trainer."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config, save_config
from pipeline.models.export_format import EXPORT_FILE, SCHEMA_VERSION, read_description


def test_eval_imports_nothing_from_the_trainer(repo_root: Path) -> None:
    """Statically (every import, lazy ones too) and at run time (the modules an evaluation loads)."""
    offenders = []
    for path in sorted((repo_root / "pipeline" / "eval").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n == "pipeline.train" or n.startswith("pipeline.train.")]
    assert offenders == []
    code = ("import sys, pipeline.evaluate, pipeline.eval.evaluate; "
            "print(sorted(m for m in sys.modules if m.startswith('pipeline.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert out.stdout.strip() == "[]"


def test_old_export_is_refused_then_upgraded(tmp_path: Path, repo_root: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri of earlier tests sets it
    from pipeline.train.config import PretrainConfig
    from pipeline.train.export import main as export_main

    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"python -m pipeline\.train\.export upgrade"):
        read_description(export)
    cfg = load_config(PretrainConfig, "configs/pretrain/tiny.yaml", ["data.manifest=null"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert export_main(["upgrade", str(export)]) == 0
    described = read_description(export)
    assert described.schema_version == SCHEMA_VERSION
    assert described.preprocessing.image.transform == cfg.data.transform
    assert described.preprocessing.text.max_length == cfg.model.text.max_length
    assert described.provenance.config_hash.startswith("sha256:")
    assert described.provenance.tracking_uri == (f"sqlite:///{(tmp_path / 'run' / 'mlflow.db').resolve()}"
                                                 if cfg.tracking.enabled else None)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / EXPORT_FILE).write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ConfigError, match="schema_version"):
        read_description(tmp_path)
