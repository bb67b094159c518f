"""One rank-aware logging setup for every entry point."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s [rank %(rank)s/%(world)s] %(levelname)s %(name)s: %(message)s"


def discover_rank_world() -> tuple[int, int]:
    """Rank and world size from the launcher's environment (torchrun, DeepSpeed, SLURM), else (0, 1)."""
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and world_key in os.environ:
            return int(os.environ[rank_key]), int(os.environ[world_key])
    return 0, 1


class _RankFilter(logging.Filter):
    """Stamps every record with the process's rank and world size."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.rank, self.world = rank, world

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank, record.world = self.rank, self.world
        return True


def setup_logging(
    rank: int | None = None, world_size: int | None = None, level: str | None = None, all_ranks: bool = False
) -> logging.Logger:
    """Configure the root logger with a ``[rank r/W]`` prefix; only rank 0 logs INFO unless ``all_ranks``.

    Other ranks log WARNING and above. ``level`` (or ``SISTA_LOG_LEVEL``) sets rank 0's level.
    Calling it again (e.g. once the process group knows the rank) reconfigures in place.
    """
    env_rank, env_world = discover_rank_world()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    level_name = (level or os.environ.get("SISTA_LOG_LEVEL", "INFO")).upper()
    if rank != 0 and not all_ranks:
        level_name = "WARNING" if logging.getLevelName(level_name) < logging.WARNING else level_name
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_sista", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._sista = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_RankFilter(rank, world_size))
    root.addHandler(handler)
    root.setLevel(level_name)
    for noisy in ("urllib3", "matplotlib", "PIL", "filelock", "git", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("sista")
