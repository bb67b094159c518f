"""``python -m pipeline.train``."""

from pipeline.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
