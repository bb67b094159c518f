"""Pre-training: ``python -m pipeline.train --config configs/pretrain/<name>.yaml [key=value ...]``."""

from pipeline.train.cli import main
from pipeline.train.config import checkpoint_dir, run_dir

__all__ = ["checkpoint_dir", "main", "run_dir"]
