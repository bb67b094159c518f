"""Pre-training: ``python -m pipeline.train --config configs/pretrain/<name>.yaml [key=value ...]``."""

from pipeline.train.cli import main

__all__ = ["main"]
