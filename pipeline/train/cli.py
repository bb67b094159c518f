"""Command line of the trainer (console script ``sista-train``)."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.config import add_config_arguments, config_from_args
from pipeline.data.shards import ShardError
from pipeline.job_env import WorldSizeError
from pipeline.logging_setup import setup_logging
from pipeline.train.checkpoint_verify import CheckpointError
from pipeline.train.config import PretrainConfig
from pipeline.train.faults import BadStepError


def main(argv: list[str] | None = None) -> int:
    """Parse ``--config`` and overrides, train, return the exit code (0 also after a stop signal)."""
    parser = argparse.ArgumentParser(prog="sista-train", description="SISTA pre-training with DeepSpeed ZeRO")
    add_config_arguments(parser)
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    args = parser.parse_args(argv)
    setup_logging()
    cfg = config_from_args(PretrainConfig, args)
    from pipeline.train.fit import fit
    from pipeline.train.run import build_run

    try:
        return fit(build_run(cfg))
    except (ShardError, BadStepError, CheckpointError, WorldSizeError) as err:
        logging.getLogger("sista.train").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, WorldSizeError) else 1  # 2: how it was started, 1: what it found


if __name__ == "__main__":
    raise SystemExit(main())
