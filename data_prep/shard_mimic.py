"""MIMIC-CXR (DICOM or JPG) + reports -> WebDataset shards, manifest and skip list.

    python data_prep/shard_mimic.py --mimic-root DIR --out DIR [--image-source dicom|jpg] [--jpg-root DIR]
        [--image-size 512] [--image-format png|jpg|png16] [--shard-size 1000] [--workers K]
        [--views PA,AP] [--splits train,validate,test] [--report-encoder NAME_OR_DIR] [--limit N] [--resume]
        [--max-skip-fraction F] [--num-tasks T --task-index I] [--merge] [--config YAML] [key=value ...]

Defaults come from ``configs/data/mimic.yaml``; flags and ``key=value`` overrides replace them.
Shard i of a split holds candidates [i * shard_size, (i + 1) * shard_size) of the sorted
candidate list minus the skipped ones, so the bytes never depend on workers or task slicing.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.mimic_metadata import CHEXPERT_LABELS, list_candidates
from data_prep.shard_config import ShardConfig
from data_prep.shard_manifest import (
    finish,
    merge_manifests,
    outcome_problem,
    part_name,
)
from data_prep.shard_samples import SampleSettings, ShardJob, build_shard, job_fingerprint
from data_prep.shard_writer import load_complete_state, remove_leftovers
from pipeline.config import ConfigError, add_config_arguments, load_config, to_dict, to_yaml
from pipeline.dicom_pixels import tune_allocator
from pipeline.logging_setup import setup_logging
from pipeline.shard_format import shard_path, write_json_atomic

log = logging.getLogger("sista.shard_mimic")

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "data" / "mimic.yaml"
_VERSIONED = ("sista-pipeline", "numpy", "pydicom", "pillow", "pylibjpeg", "pylibjpeg-openjpeg",
              "pylibjpeg-libjpeg", "torch", "transformers")

__all__ = ["ShardConfig", "main", "merge_manifests", "shard_mimic"]


def _versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the output bytes."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _settings(cfg: ShardConfig) -> SampleSettings:
    """The picklable per-sample settings of a config."""
    return SampleSettings(
        image_source=cfg.image_source,
        image_size=cfg.image_size,
        output_bits=cfg.output_bits,
        image_extension=cfg.image_extension,
        jpg_quality=cfg.jpg_quality,
        png_compress_level=cfg.png_compress_level,
        png_zlib_strategy=cfg.png_zlib_strategy,
        window=cfg.window,
        text_sections=tuple(cfg.text_sections),
        use_fallback=cfg.use_fallback,
        min_words=cfg.min_words,
        report_encoder=cfg.report_encoder,
        encoder_batch_size=cfg.encoder_batch_size,
        encoder_max_length=cfg.encoder_max_length,
    )


def _encoder_info(name: str | None) -> dict[str, Any] | None:
    """Manifest entry of the report encoder (reads only its config)."""
    if name is None:
        return None
    from transformers import AutoConfig

    try:
        dim = int(AutoConfig.from_pretrained(name).hidden_size)
    except (OSError, ValueError) as err:
        raise ValueError(f"report encoder {name!r} cannot be loaded: {err}") from err
    return {"name": name, "dim": dim, "pooling": "mean"}


def _required_paths(cfg: ShardConfig) -> tuple[Path, Path, Path]:
    """(mimic_root, out, image_root); ValueError naming the missing option."""
    if cfg.mimic_root is None or cfg.out is None:
        raise ValueError("--mimic-root and --out (config keys mimic_root, out) are required")
    if not Path(cfg.mimic_root).is_dir():
        raise ValueError(f"mimic_root {cfg.mimic_root} is not a directory")
    if cfg.image_source == "jpg":
        if cfg.jpg_root is None or not Path(cfg.jpg_root).is_dir():
            raise ValueError(f"image_source jpg needs jpg_root (--jpg-root) to be a directory, got {cfg.jpg_root}")
        return Path(cfg.mimic_root), Path(cfg.out), Path(cfg.jpg_root)
    return Path(cfg.mimic_root), Path(cfg.out), Path(cfg.mimic_root)


def plan_shards(candidates: dict[str, list[Any]], shard_size: int) -> list[ShardJob]:
    """Cut each split's sorted candidates into consecutive shards of ``shard_size``."""
    jobs = []
    for split, items in candidates.items():
        for index, start in enumerate(range(0, len(items), shard_size)):
            jobs.append(ShardJob(split, index, shard_path(split, index), tuple(items[start : start + shard_size])))
    return jobs


# --------------------------------------------------------------------------- workers

_COUNTER: Any = None


def _init_worker(counter: Any) -> None:
    """Worker start-up: die with the parent (SIGKILL included), share the progress counter, reuse a warm heap."""
    global _COUNTER
    _COUNTER = counter
    tune_allocator()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _tick_shared(n: int) -> None:
    """Add ``n`` finished inputs to the shared progress counter."""
    with _COUNTER.get_lock():
        _COUNTER.value += n


def _run_job(job: ShardJob, settings: SampleSettings, out_dir: Path) -> dict[str, Any]:
    """Pool entry point: build one shard, counting progress in the shared counter."""
    return build_shard(job, settings, out_dir, _tick_shared)


def _progress_bar(total: int) -> tqdm:
    """images/s and ETA on a terminal; silent when stderr is not a TTY or under CI."""
    quiet = bool(os.environ.get("CI")) or not sys.stderr.isatty()
    return tqdm(total=total, unit="img", desc="sharding", disable=quiet, smoothing=0.05, dynamic_ncols=True)


def _execute(jobs: list[ShardJob], settings: SampleSettings, out_dir: Path, workers: int) -> list[dict[str, Any]]:
    """Build the shards, in-process for one worker, else in a pool of ``workers`` processes."""
    total = sum(len(job.candidates) for job in jobs)
    if workers == 1 or len(jobs) <= 1:
        tune_allocator()  # this process does the decoding
        with _progress_bar(total) as bar:
            tick: Callable[[int], None] = bar.update
            return [build_shard(job, settings, out_dir, tick) for job in jobs]
    ctx = mp.get_context("fork")
    counter = ctx.Value("q", 0)
    # A worker that dies (e.g. a decoder crash) fails the run with BrokenProcessPool instead of hanging it;
    # the shards finished so far are kept by --resume.
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                             initargs=(counter,)) as pool:
        pending = [pool.submit(_run_job, job, settings, out_dir) for job in jobs]
        with _progress_bar(total) as bar:
            while not all(p.done() for p in pending):
                wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                bar.update(counter.value - bar.n)
                failed = [p for p in pending if p.done() and p.exception() is not None]
                if failed:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise failed[0].exception()  # type: ignore[misc]
            bar.update(counter.value - bar.n)
        return [p.result() for p in pending]


# --------------------------------------------------------------------------- the run


def shard_mimic(cfg: ShardConfig) -> dict[str, Any]:
    """Write the shards of ``cfg`` and return the manifest (the partial manifest for a task of a job array)."""
    started = time.perf_counter()
    mimic_root, out_dir, image_root = _required_paths(cfg)
    extension = "dcm" if cfg.image_source == "dicom" else "jpg"
    csv_roots = [Path(cfg.csv_root)] if cfg.csv_root is not None else [mimic_root, *([image_root] if image_root != mimic_root else [])]
    listing = list_candidates(mimic_root, image_root, extension, csv_roots, cfg.views, cfg.splits, cfg.limit)
    encoder = _encoder_info(cfg.report_encoder)
    jobs = plan_shards(listing.candidates, cfg.shard_size)
    own = [job for job in jobs if job.index % cfg.num_tasks == cfg.task_index]
    out_dir.mkdir(parents=True, exist_ok=True)

    for job in own:
        remove_leftovers(out_dir, job.relative_path)
    settings = _settings(cfg)
    records: dict[str, dict[str, Any]] = {}
    if cfg.resume:  # a shard is kept only when complete, intact and made from the same inputs and settings
        for job in own:
            record = load_complete_state(out_dir, job.relative_path)
            if record is not None and record.get("fingerprint") == job_fingerprint(job, settings):
                records[job.relative_path] = record
    todo = [job for job in own if job.relative_path not in records]
    log.info(
        "%s: %d candidates in %s; %d shard(s) for this task, %d kept from an earlier run, %d to write with %d worker(s)",
        out_dir, sum(len(v) for v in listing.candidates.values()),
        ", ".join(f"{s} {len(v)}" for s, v in listing.candidates.items()), len(own), len(records), len(todo), cfg.workers,
    )
    for record in _execute(todo, settings, out_dir, cfg.workers):
        records[record["path"]] = record

    part = {
        "task_index": cfg.task_index,
        "num_tasks": cfg.num_tasks,
        "plan": {split: sum(1 for j in jobs if j.split == split) for split in cfg.splits},
        "shards": [records[job.relative_path] for job in own],
        "listing": {
            "candidates": {split: len(items) for split, items in listing.candidates.items()},
            "filtered": listing.filtered,
            "skipped": [{"id": s.id, "split": "", "reason": s.reason, "detail": s.detail} for s in listing.skipped],
        },
        "label_names": list(CHEXPERT_LABELS),
        "image": {"format": cfg.image_extension, "bits": cfg.output_bits, "size": cfg.image_size, "source": cfg.image_source,
                  "window": cfg.window.to_json() if cfg.image_source == "dicom" else None},
        "report_encoder": encoder,
        "args": to_dict(cfg),
        "versions": _versions(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if cfg.num_tasks > 1:
        write_json_atomic(out_dir / part_name(cfg.task_index, cfg.num_tasks), part)
        return part
    return finish(out_dir, [part])


# --------------------------------------------------------------------------- command line

_FLAGS = (  # (flag, config key, type, help)
    ("--mimic-root", "mimic_root", str, "MIMIC-CXR v2.0.0 root (files/, reports, CSVs)"),
    ("--out", "out", str, "output directory"),
    ("--image-source", "image_source", str, "dicom | jpg"),
    ("--jpg-root", "jpg_root", str, "MIMIC-CXR-JPG root (image-source jpg)"),
    ("--csv-root", "csv_root", str, "folder of the mimic-cxr-2.0.0-*.csv[.gz] files"),
    ("--image-size", "image_size", int, "short side of the stored image"),
    ("--image-format", "image_format", str, "png | png16 | jpg"),
    ("--shard-size", "shard_size", int, "candidates per shard"),
    ("--workers", "workers", int, "worker processes"),
    ("--views", "views", str, "comma-separated ViewPositions to keep, e.g. PA,AP"),
    ("--splits", "splits", str, "comma-separated official splits, e.g. train,validate,test"),
    ("--report-encoder", "report_encoder", str, "frozen text model (hub name or directory) for report_emb.npy"),
    ("--limit", "limit", int, "at most N candidates per split"),
    ("--max-skip-fraction", "max_skip_fraction", float, "exit non-zero above this skipped fraction"),
    ("--num-tasks", "num_tasks", int, "job-array size (slicing)"),
    ("--task-index", "task_index", int, "this task's index in the job array"),
)
_LIST_KEYS = {"views", "splits"}


def build_parser() -> argparse.ArgumentParser:
    """The command line; no flag has a default of its own (the YAML config supplies them)."""
    parser = argparse.ArgumentParser(
        prog="sista-shard-mimic", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, key, kind, help_text in _FLAGS:
        parser.add_argument(flag, dest=key, type=kind, default=None, help=f"{help_text} (config key {key})")
    parser.add_argument("--resume", dest="resume", action="store_true", default=None,
                        help="keep complete shards whose checksums match, redo the rest (config key resume)")
    parser.add_argument("--merge", action="store_true",
                        help="merge the partial manifests of --num-tasks tasks into manifest.json, then check")
    add_config_arguments(parser, default_config=str(DEFAULT_CONFIG))
    return parser


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The flags given on the command line as ``key=value`` overrides (JSON values are YAML scalars)."""
    out = []
    for _, key, _, _ in _FLAGS:
        value = getattr(args, key)
        if value is None:
            continue
        if key in _LIST_KEYS:
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        out.append(f"{key}={json.dumps(value)}")
    if args.resume:
        out.append("resume=true")
    return out


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code (non-zero when nothing was written or too much was skipped)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(ShardConfig, args.config, [*args.overrides, *flag_overrides(args)])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    try:
        if args.merge:
            if cfg.out is None:
                raise ValueError("--merge needs --out")
            manifest = merge_manifests(cfg.out, cfg.num_tasks)
        else:
            manifest = shard_mimic(cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 1
    if cfg.num_tasks > 1 and not args.merge:
        log.info("task %d of %d done; merge with --merge --num-tasks %d", cfg.task_index, cfg.num_tasks, cfg.num_tasks)
        return 0
    for split, info in manifest["splits"].items():
        log.info("%s: %d samples in %d shard(s)", split, info["num_samples"], len(info["shards"]))
    if manifest["skipped"]:
        log.info("skipped: %s (see %s)", manifest["skipped"], Path(cfg.out) / "skipped.csv")
    problem = outcome_problem(manifest, cfg.max_skip_fraction)
    if problem:
        log.error("%s", problem)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
