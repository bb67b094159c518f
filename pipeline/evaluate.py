"""Entry point: ``python -m pipeline.evaluate --config configs/eval/<task>.yaml checkpoint=DIR [key=value ...]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import ConfigError, add_config_arguments, config_from_args
from pipeline.logging_setup import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Evaluate an exported model; print the Markdown table of the results."""
    parser = argparse.ArgumentParser(prog="sista-evaluate", description=__doc__)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    from pipeline.eval.config import EvalConfig
    from pipeline.eval.evaluate import evaluate

    cfg = config_from_args(EvalConfig, args)
    try:
        _, paths = evaluate(cfg, Path(args.config).stem)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"evaluation error: {err}", file=sys.stderr)
        return 2
    print(paths["table"].read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
