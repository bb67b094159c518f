"""Where the default configs are: ``pipeline/configs`` inside the installed package, found through importlib.

In a source checkout (editable install, the Docker image) ``pipeline/configs`` is a symlink to the
repository's ``configs/``; a wheel carries the files themselves as package data. Library code asks
this module, never a path counted up from its own file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CONFIGS_PREFIX = "configs"


def config_root() -> Path:
    """The folder of default configs (data/, pretrain/, eval/, loss/, deepspeed/, slurm/) of the installed package."""
    root = Path(str(resources.files("pipeline").joinpath(CONFIGS_PREFIX)))
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: the package's default configs are missing (a broken install?)")
    return root


def default_config(relative: str) -> Path:
    """A default config by its path below ``configs/`` (e.g. ``data/mimic.yaml``); FileNotFoundError naming it."""
    path = config_root() / relative
    if not path.is_file():
        raise FileNotFoundError(f"no default config {CONFIGS_PREFIX}/{relative} in {config_root()}")
    return path


def locate(value: str | Path) -> Path:
    """A path as given (absolute or relative to the working dir) when it exists; else ``configs/...`` from the package."""
    path = Path(value)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts
    if len(parts) > 1 and parts[0] == CONFIGS_PREFIX:
        packaged = config_root().joinpath(*parts[1:])
        if packaged.exists():
            return packaged
    return path
