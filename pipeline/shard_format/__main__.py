"""``python -m pipeline.shard_format upgrade DIR``: rewrite an older ``DIR/manifest.json`` at the current schema."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pipeline.shard_format.atomic import write_json_atomic
from pipeline.shard_format.layout import MANIFEST, ShardFormatError
from pipeline.shard_format.manifest import SCHEMA_VERSION, ShardManifest, schema_version_of


def upgrade_folder(folder: Path) -> str:
    """Upgrade ``folder/manifest.json`` in place (the old one kept as ``manifest.schema<N>.json``); what was done."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ShardFormatError(f"{path}: no manifest to upgrade")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardFormatError(f"{path}: cannot read it: {err}") from err
    version = schema_version_of(data, str(path))
    if version == SCHEMA_VERSION:
        return f"{path}: already schema_version {SCHEMA_VERSION}"
    upgraded = ShardManifest.from_json(data, str(path)).to_json()
    backup = folder / f"manifest.schema{version}.json"
    shutil.copy2(path, backup)
    write_json_atomic(path, upgraded)
    return f"{path}: schema_version {version} -> {SCHEMA_VERSION} (old manifest kept as {backup.name})"


def main(argv: list[str] | None = None) -> int:
    """Command line; exit 0 on success, 1 with a one-line message otherwise."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.shard_format", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="rewrite DIR/manifest.json at the current schema version")
    up.add_argument("folders", nargs="+", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    try:
        for folder in args.folders:
            print(upgrade_folder(folder))
    except ShardFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
