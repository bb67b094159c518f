"""Fake ``sbatch`` / ``srun`` / ``scontrol`` executables that record what they are handed."""

from __future__ import annotations

import os
import re
import shlex
import stat
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "slurm" / "example.yaml"
EXAMPLE_SHARD = EXAMPLE.with_name("example_shard.yaml")


def sbatch_options(script: str) -> dict[str, str | bool]:
    """``#SBATCH --key=value`` lines of a script as {key: value}, bare flags as True."""
    options: dict[str, str | bool] = {}
    for line in script.splitlines():
        match = re.fullmatch(r"#SBATCH --([\w-]+)(?:=(.*))?", line)
        if match:
            assert match.group(1) not in options, f"duplicate directive {line}"
            options[match.group(1)] = shlex.split(match.group(2))[0] if match.group(2) is not None else True
    return options


# sbatch: copy the submitted script, record argv, answer like SLURM with increasing job ids
# (a preflight ``--test-only`` is answered as feasible and not recorded).
_SBATCH = """#!/bin/bash
set -e
rec="{record}"
if [[ $1 == --test-only ]]; then echo "sbatch: Job 1 to start at now using 1 processors" >&2; exit 0; fi
n=$(ls "$rec"/sbatch-*.args 2>/dev/null | wc -l)
id=$((4242 + n))
printf '%s\\n' "$@" > "$rec/sbatch-$n.args"
cp "${{@: -1}}" "$rec/sbatch-$n.sh"
echo "Submitted batch job $id"
"""

# srun / scontrol: record argv and the SLURM variables they were run with.
_RECORDER = """#!/bin/bash
rec="{record}"
n=$(ls "$rec"/{name}-*.args 2>/dev/null | wc -l)
printf '%s\\n' "$@" > "$rec/{name}-$n.args"
env | grep -E '^(SLURM_|SUBMITIT_|FAKE_)' | sort > "$rec/{name}-$n.env"
"""


def install_fake_slurm(bin_dir: Path, record_dir: Path) -> None:
    """Write fake ``sbatch``, ``srun`` and ``scontrol`` into ``bin_dir`` (put it first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    record_dir.mkdir(parents=True, exist_ok=True)
    scripts = {"sbatch": _SBATCH.format(record=record_dir)}
    for name in ("srun", "scontrol"):
        scripts[name] = _RECORDER.format(record=record_dir, name=name)
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def recorded(record_dir: Path, name: str) -> list[list[str]]:
    """The argv of every recorded call of ``name``, in call order."""
    files = sorted(record_dir.glob(f"{name}-*.args"), key=lambda p: int(p.stem.split("-")[1]))
    return [p.read_text().splitlines() for p in files]


def recorded_script(record_dir: Path, index: int) -> str:
    """The text of the ``index``-th script handed to sbatch."""
    return (record_dir / f"sbatch-{index}.sh").read_text()


def recorded_env(record_dir: Path, name: str, index: int) -> dict[str, str]:
    """The SLURM/SUBMITIT variables of the ``index``-th call of ``name``."""
    lines = (record_dir / f"{name}-{index}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def path_with(bin_dir: Path) -> str:
    """PATH with ``bin_dir`` first."""
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


__all__ = ["EXAMPLE", "EXAMPLE_SHARD", "install_fake_slurm", "sbatch_options", "path_with", "recorded", "recorded_env", "recorded_script"]
