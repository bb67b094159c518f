"""Shard MIMIC-CXR on SLURM: a job array of disjoint slices, then one dependent job that merges them.

    python launch/slurm_shard.py --config configs/data/mimic.yaml \\
        --slurm configs/slurm/example_shard.yaml [key=value ...] [slurm.key=value ...] [--dry-run]

Array task ``I`` of ``T`` (``slurm.array_tasks``) runs ``shard_mimic`` with ``num_tasks=T,
task_index=I``: it writes the shards whose index ``% T == I`` and a partial manifest. The merge
job starts when every array task has ended (``afterany``: after a failed slice ``afterok`` would
pend forever), fails naming the slices that left no partial manifest and the command that reruns
them, and otherwise merges the partial manifests into
``OUT/manifest.json``, checking the counts and every shard's size, and fails when nothing was
written or too much was skipped. Shard boundaries never depend on the slicing, so the result is byte-identical to a
single-process run with the same arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import submitit

from data_prep.shard_config import ShardConfig
from launch.slurm_config import (
    SlurmConfig,
    load_slurm_config,
    parse_job_args,
    split_overrides,
)
from launch.slurm_preflight import preflight
from launch.slurm_submit import log_paths, make_executor, render_sbatch, wait_for
from pipeline.config import ConfigError, load_config, to_yaml
from pipeline.logging_setup import setup_logging

log = logging.getLogger("sista.launch")


@dataclasses.dataclass
class ShardTask(submitit.helpers.Checkpointable):
    """One array task: shard the slice ``task_index`` of ``num_tasks``; requeued with ``resume`` on."""

    cfg: ShardConfig

    def __call__(self, task_index: int) -> dict[str, Any]:
        """Run ``shard_mimic`` on slice ``task_index``; returns the partial manifest."""
        from data_prep.shard_mimic import shard_mimic

        setup_logging(0, 1)
        cfg = dataclasses.replace(self.cfg, task_index=task_index)
        log.info("array task %d of %d: sharding into %s", task_index, cfg.num_tasks, cfg.out)
        return shard_mimic(cfg)

    def checkpoint(self, task_index: int) -> submitit.helpers.DelayedSubmission:
        """Resubmit the same slice with ``resume`` on: complete shards are kept, the rest redone."""
        return submitit.helpers.DelayedSubmission(ShardTask(dataclasses.replace(self.cfg, resume=True)), task_index)


def merge_and_check(out_dir: Path, num_tasks: int, max_skip_fraction: float, rerun: str) -> dict[str, Any]:
    """Merge the ``num_tasks`` partial manifests of ``out_dir`` (counts and sizes checked by the sharder).

    Fails, writing nothing, when a slice left no partial manifest (naming the slices and ``rerun``, the
    command that redoes them), and, like a single-process run's exit code, when nothing was written or
    too much was skipped.
    """
    from data_prep.shard_manifest import merge_manifests, outcome_problem, part_name

    setup_logging(0, 1)
    failed = [index for index in range(num_tasks) if not (out_dir / part_name(index, num_tasks)).is_file()]
    if failed:
        raise RuntimeError(f"{out_dir}: array slice(s) {', '.join(map(str, failed))} of {num_tasks} failed "
                           f"(no partial manifest; see their logs); nothing merged. Rerun them with: {rerun}")
    manifest = merge_manifests(out_dir, num_tasks)
    problem = outcome_problem(manifest, max_skip_fraction)
    if problem:
        raise RuntimeError(f"{out_dir}: {problem}")
    log.info("merged %d partial manifests: %s", num_tasks,
             ", ".join(f"{s} {e['num_samples']} samples" for s, e in manifest["splits"].items()))
    return manifest


def slice_config(cfg: ShardConfig, num_tasks: int) -> ShardConfig:
    """``cfg`` set up for a ``num_tasks``-task array (``task_index`` is filled in per task)."""
    if cfg.out is None or cfg.mimic_root is None:
        raise ConfigError("the sharding config needs 'out' and 'mimic_root' for a SLURM job")
    absolute = {k: getattr(cfg, k).resolve() for k in ("out", "mimic_root", "jpg_root", "csv_root") if getattr(cfg, k)}
    return dataclasses.replace(cfg, num_tasks=num_tasks, task_index=0, **absolute)


def submit_shard_array(
    cfg: ShardConfig, slurm: SlurmConfig, workdir: Path, rerun: str
) -> tuple[list[submitit.Job], submitit.Job]:
    """Submit the array of ``slurm.array_tasks`` slices and the merge job that runs after all of them.

    ``rerun`` is the command the merge names when a slice failed.

    With the ``local`` executor there are no dependencies: the array is awaited before the merge is submitted.
    """
    sliced = slice_config(cfg, slurm.array_tasks)
    executor = make_executor(slurm, workdir, array_parallelism=slurm.array_parallelism)
    with executor.batch():
        array = [executor.submit(ShardTask(sliced), index) for index in range(slurm.array_tasks)]
    if slurm.executor == "slurm":
        array_id = array[0].job_id.split("_")[0]
        merger = make_executor(slurm, workdir, dependency=f"afterany:{array_id}")
    else:
        for job in array:
            job.wait()  # the merge checks every slice's outcome
        merger = make_executor(slurm, workdir)
    merge = merger.submit(merge_and_check, sliced.out, slurm.array_tasks, sliced.max_skip_fraction, rerun)
    return array, merge


def main(argv: list[str] | None = None) -> int:
    """Resolve both configs, then print (``--dry-run``) or submit the array and its merge job."""
    setup_logging()
    args = parse_job_args(argv, __doc__.split("\n\n")[0], "sharding YAML (configs/data/*.yaml)", "print the sbatch scripts and configs; submit nothing")
    shard_overrides, slurm_overrides = split_overrides(args.overrides)
    workdir = Path.cwd()
    try:
        slurm = load_slurm_config(args.slurm, slurm_overrides)
        cfg = slice_config(load_config(ShardConfig, args.config, shard_overrides), slurm.array_tasks)
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"# sbatch script of the array ({slurm.array_tasks} tasks, {slurm.array_parallelism} at a time)")
        print(render_sbatch(slurm, workdir, array_size=slurm.array_tasks))
        print("# sbatch script of the merge job")
        print(render_sbatch(slurm, workdir, dependency="afterany:<array job id>"))
        print("# SLURM config (resolved)")
        print(to_yaml(slurm), end="")
        print("# sharding config (resolved; task_index is set per array task)")
        print(to_yaml(cfg), end="")
        return 0
    try:
        preflight(slurm, render_sbatch(slurm, workdir, array_size=slurm.array_tasks))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rerun = rerun_command(argv if argv is not None else sys.argv[1:])
    array, merge = submit_shard_array(cfg, slurm, workdir, rerun)
    stdout, _ = log_paths(array[0])
    print(f"submitted array {array[0].job_id.split('_')[0]} ({len(array)} tasks) and merge job {merge.job_id}")
    print(f"logs:   {stdout} (one per array task)\n        {log_paths(merge)[0]}")
    print(f"output: {cfg.out}/manifest.json once the merge job has finished")
    if args.wait:
        if wait_for(merge, "merge job"):
            return 1
        print(f"done: {cfg.out}/manifest.json")
    return 0


def rerun_command(argv: list[str]) -> str:
    """The command line that reruns a sharding submission with ``resume=true`` (complete shards are kept)."""
    kept = [arg for arg in argv if arg not in ("--wait", "--dry-run") and not arg.startswith("resume=")]
    return shlex.join([sys.executable, "-m", "launch.slurm_shard", *kept, "resume=true"])


if __name__ == "__main__":
    from launch.slurm_shard import main as _main  # so pickles name launch.slurm_shard, not __main__

    raise SystemExit(_main())
