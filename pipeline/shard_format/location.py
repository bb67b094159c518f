"""Where a manifest's shards are: next to it, under a ``shard_root`` folder, or behind a ``{path}`` URL template.

A ``pipe:`` template is a shell command whose stdout is the shard (``pipe:aws s3 cp s3://b/shards/{path} -``).
Every substituted path is quoted with :func:`shlex.quote`, and a template that quotes ``{path}`` itself
(``pipe:cat '{path}'``) is refused: inside the template's quotes the substituted quoting would be undone.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from pipeline.shard_format.layout import MANIFEST, ShardFormatError, validate_relative_path
from pipeline.shard_format.manifest import ShardManifest

PIPE_PREFIX = "pipe:"
PATH_FIELD = "{path}"


def is_pipe(location: str) -> bool:
    """Whether ``location`` is a ``pipe:`` shell command rather than a path or URL."""
    return location.startswith(PIPE_PREFIX)


def manifest_location(root_or_manifest: str | Path) -> str:
    """A manifest location from a shard folder (``DIR`` -> ``DIR/manifest.json``), a manifest path or a ``pipe:`` command."""
    text = str(root_or_manifest)
    if is_pipe(text) or not Path(text).is_dir():
        return text
    return str(Path(text) / MANIFEST)


def run_pipe(command: str, what: str) -> bytes:
    """The stdout of a ``pipe:`` command; ShardFormatError with its exit code and stderr when it fails."""
    result = subprocess.run(command[len(PIPE_PREFIX):], shell=True, capture_output=True, check=False)  # noqa: S602 - pipe: is a shell command by definition
    if result.returncode != 0:
        error = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ShardFormatError(f"{what}: command {command!r} exited with {result.returncode}: "
                               f"{error[-1] if error else 'no error output'}")
    return result.stdout


def read_manifest(location: str | Path) -> ShardManifest:
    """Read and parse the manifest at a local path, a shard folder or a ``pipe:`` command."""
    location = manifest_location(location)
    if is_pipe(location):
        raw = run_pipe(location, "manifest")
    else:
        path = Path(location)
        if not path.is_file():
            raise ShardFormatError(f"manifest not found: {path}")
        raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardFormatError(f"{location}: not valid JSON: {err}") from err
    return ShardManifest.from_json(data, location)


def _quote_state(command: str, end: int) -> str | None:
    """The POSIX shell quote open at ``command[end]``: ``'``, ``"`` or None (a backslash escapes one character)."""
    state, i = None, 0
    while i < end:
        char = command[i]
        if state == "'":
            state = None if char == "'" else state
        elif char == "\\":
            i += 1
        elif char == '"':
            state = None if state == '"' else '"'
        elif char == "'" and state is None:
            state = "'"
        i += 1
    return state


def check_template(shard_root: str) -> None:
    """ShardFormatError when a ``pipe:`` template lacks ``{path}`` or puts it inside quotes of its own."""
    if not is_pipe(shard_root):
        return
    if PATH_FIELD not in shard_root:
        raise ShardFormatError(f"shard_root {shard_root!r} is a pipe: command but has no {PATH_FIELD} placeholder")
    start = shard_root.find(PATH_FIELD)
    while start >= 0:
        quote = _quote_state(shard_root, start)
        if quote is not None:
            raise ShardFormatError(
                f"shard_root {shard_root!r} puts {PATH_FIELD} inside {quote} quotes: remove them, every substituted "
                "path is shell-quoted already"
            )
        start = shard_root.find(PATH_FIELD, start + 1)


def shard_url(relative: str, manifest: str, shard_root: str | None) -> str:
    """The URL of a manifest entry: under ``shard_root`` (a folder, or a template with ``{path}``) or next to the manifest."""
    relative = validate_relative_path(relative, manifest)
    if shard_root is None:
        if is_pipe(manifest):
            raise ShardFormatError(
                f"manifest {manifest!r} is read through a pipe: set shard_root (training: data.shard_root, evaluation: "
                f"data.shards.shard_root) to a URL template containing {PATH_FIELD} "
                f"(e.g. 'pipe:aws s3 cp s3://bucket/shards/{PATH_FIELD} -')"
            )
        return str(Path(manifest).parent / relative)
    check_template(shard_root)
    if PATH_FIELD in shard_root:
        return shard_root.replace(PATH_FIELD, shlex.quote(relative) if is_pipe(shard_root) else relative)
    return str(Path(shard_root) / relative)
