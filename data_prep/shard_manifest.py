"""``OUT/manifest.json``, ``OUT/skipped.csv``, partial manifests of job-array tasks and their merge.

A run (or each task of a job array) produces a *part*: the shard plan, the state records of the
shards it wrote, and what listing left out. :func:`assemble` turns the parts into the manifest,
so a single run and a merged T-task run give the same shards, the same ``skipped.csv`` and the
same manifest apart from ``args`` and ``seconds``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from pipeline.shard_format.atomic import write_json_atomic, write_text_atomic
from pipeline.shard_format.layout import MANIFEST, SKIPPED_CSV, STATE_DIR, shard_index, shard_path
from pipeline.shard_format.manifest import (
    ImageInfo,
    ReportEncoderInfo,
    ShardManifest,
    ShardRecord,
    SplitEntry,
)

log = logging.getLogger(__name__)

SKIPPED_COLUMNS = ("id", "split", "reason", "detail")


def part_name(task_index: int, num_tasks: int) -> str:
    """File name of a task's partial manifest."""
    return f"manifest.part-{task_index:05d}-of-{num_tasks:05d}.json"


def assemble(parts: list[dict[str, Any]]) -> tuple[ShardManifest, list[dict[str, str]]]:
    """(manifest, skipped rows) from the parts of one run; ValueError when they do not fit together."""
    first = parts[0]
    plan: dict[str, int] = first["plan"]
    for part in parts[1:]:
        for key in ("plan", "listing", "image", "report_encoder", "label_names"):
            if part[key] != first[key]:
                raise ValueError(f"partial manifests disagree on {key!r} (task {part['task_index']} vs {first['task_index']})")
    records = {r["path"]: r for part in parts for r in part["shards"]}
    splits: dict[str, SplitEntry] = {}
    skipped_rows = [dict(row) for row in first["listing"]["skipped"]]
    for split, num_shards in plan.items():
        shards = []
        for index in range(num_shards):
            path = shard_path(split, index)
            if path not in records:
                raise ValueError(f"no task wrote shard {path}")
            record = records[path]
            shards.append(ShardRecord(record["path"], record["num_samples"], record["bytes"], record["sha256"]))
            skipped_rows.extend({"id": s["id"], "split": split, "reason": s["reason"], "detail": s["detail"]}
                                for s in record["skipped"])
        splits[split] = SplitEntry(sum(s.num_samples for s in shards), tuple(shards))
    expected = {split: n for split, n in first["listing"]["candidates"].items()}
    for split, info in splits.items():
        in_shards = info.num_samples + sum(1 for r in skipped_rows if r["split"] == split)
        if in_shards != expected[split]:
            raise ValueError(f"split {split}: {in_shards} samples + skips but {expected[split]} candidates")
    counts: dict[str, int] = {}
    for row in skipped_rows:
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
    encoder = first["report_encoder"]
    manifest = ShardManifest(
        splits=splits,
        label_names=tuple(first["label_names"]),
        image=ImageInfo.from_json(first["image"], "partial manifest"),
        report_encoder=None if encoder is None else ReportEncoderInfo.from_json(encoder, "partial manifest"),
        skipped=dict(sorted(counts.items())),
        filtered=first["listing"]["filtered"],
        candidates=expected,
        args=first["args"],
        versions=first["versions"],
        seconds=round(max(float(p["seconds"]) for p in parts), 3),
    )
    return manifest, skipped_rows


def write_skipped_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """One row per skipped input: id, split, reason, detail (temp name + rename)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SKIPPED_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in SKIPPED_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def remove_stale_shards(out_dir: Path, plan: dict[str, int]) -> None:
    """Delete shards (and state records) of an earlier, larger run that the plan no longer has."""
    for split, num_shards in plan.items():
        split_dir = out_dir / split
        if not split_dir.is_dir():
            continue
        for path in sorted(split_dir.iterdir()):
            index = shard_index(split, path.name)
            if index is not None and index >= num_shards:
                log.warning("removing stale shard %s (not in this run's plan)", path)
                path.unlink()
                (out_dir / STATE_DIR / f"{split}__{path.name}.json").unlink(missing_ok=True)


def finish(out_dir: Path, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``manifest.json`` and ``skipped.csv`` from the parts; return the manifest."""
    manifest, rows = assemble(parts)
    remove_stale_shards(out_dir, parts[0]["plan"])
    write_skipped_csv(out_dir / SKIPPED_CSV, rows)
    data = manifest.to_json()
    write_json_atomic(out_dir / MANIFEST, data)
    return data


def merge_manifests(out_dir: str | Path, num_tasks: int) -> dict[str, Any]:
    """Merge the ``num_tasks`` partial manifests in ``out_dir`` into ``manifest.json`` (+ ``skipped.csv``).

    Checks that every task is present, that they agree on the plan and that every planned shard
    was written with the sample count its record says; returns the merged manifest.
    """
    out_dir = Path(out_dir)
    parts = []
    for index in range(num_tasks):
        path = out_dir / part_name(index, num_tasks)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: partial manifest of task {index} of {num_tasks} is missing")
        part = json.loads(path.read_text(encoding="utf-8"))
        if part.get("num_tasks") != num_tasks or part.get("task_index") != index:
            raise ValueError(f"{path}: written by task {part.get('task_index')} of {part.get('num_tasks')}")
        for record in part["shards"]:
            shard = out_dir / record["path"]
            if not shard.is_file() or shard.stat().st_size != record["bytes"]:
                raise ValueError(f"{shard}: missing or not {record['bytes']} bytes as task {index} recorded")
        parts.append(part)
    return finish(out_dir, parts)


def outcome_problem(manifest: dict[str, Any], max_skip_fraction: float) -> str | None:
    """Why the run should exit non-zero (nothing written, too many skips), or None."""
    written = sum(info["num_samples"] for info in manifest["splits"].values())
    skipped = sum(manifest["skipped"].values())
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(manifest["skipped"].items(), key=lambda kv: -kv[1]))
    if written == 0:
        return f"nothing was written: 0 samples, {skipped} inputs skipped ({reasons or 'no inputs found'})"
    fraction = skipped / (written + skipped)
    if fraction > max_skip_fraction:
        return (
            f"{skipped} of {written + skipped} inputs skipped ({fraction:.1%}) > max_skip_fraction "
            f"{max_skip_fraction:.1%}; reasons: {reasons}; see skipped.csv"
        )
    return None
