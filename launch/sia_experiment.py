"""Issue 17, experiment steps 2-3: does SIA's false-negative handling help when paraphrased false negatives exist?

    python -m launch.sia_experiment --out OUT --steps 100 --studies 800 --seeds 0 1 2 --report-voices 4 \
        --finding-sets 12 [--nproc 2] [--stop-after 2|3] [--plan] [--replace-stale] [key=value ...]

Writes one voiced phantom set (``--report-voices``, ``--finding-sets``: studies with identical findings
in different words meet in a batch of 32) and shards it like launch/ablation.py (60/10/30 split,
MiniLM report embeddings). Training and evaluation reuse launch/ablation.py's commands; every run
has its own folder ``OUT/runs/<run id>`` with its settings recorded, and a finished run is reused
only when it was made with the same settings (``ablation.check_settings``), so the experiment can
be split over several sessions by running the same command again.

Step 2 trains ``sia_only`` (seed ``--seeds[0]``) with each SIA setting of :data:`SETTINGS` (the
candidates of step 1, docs/phantoms.md) and chooses the best on the VALIDATE split by
:data:`SELECT_METRIC` (the evaluation's ``data.shards.test_split=validate``; only the retrieval task,
so no task tunes on that split). Step 3 trains ``clip``, ``sia_only`` and ``sista`` with the chosen
setting and the two arms of sia_only that bound the answer (``oracle``: exactly the true false
negatives; ``random``: as many columns as the detector eliminates, at random) for every seed, seed
by seed, evaluates each on the test split and writes ``OUT/sia_experiment.md``/``.json``: mean ± sd
over the seeds finished so far (n per row). Timings of every training and evaluation are kept in
``OUT/runs/<run id>/timings.json``. Extra ``key=value`` arguments go to every training run.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launch import ablation
from pipeline.resources import default_config

log = logging.getLogger("sista.sia_experiment")

SIA = "loss.options.sia"
# SIA settings trained in step 2: step 1's two candidates (docs/phantoms.md) and configs/pretrain/base.yaml's.
SETTINGS: dict[str, tuple[str, ...]] = {
    "default": (),  # base.yaml: eliminate, precomputed (MiniLM), κ 0.9, centring auto (off for MiniLM)
    "labels_k0.95_centred": (f"{SIA}.similarity_source=labels", f"{SIA}.threshold=0.95", f"{SIA}.centering=true"),
    "minilm_k0.7_uncentred": (f"{SIA}.similarity_source=precomputed", f"{SIA}.threshold=0.7", f"{SIA}.centering=false"),
}
# Step 3's rows: (arm, loss preset, extra overrides, uses the chosen SIA setting).
ARMS: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("clip", "clip", (), False),
    ("sia_only", "sia_only", (), True),
    ("sista", "sista", (), True),
    ("oracle", "sia_only", (f"{SIA}.false_negatives=oracle",), False),
    ("random", "sia_only", (f"{SIA}.false_negatives=random",), True),
)
VALIDATE, TEST = "validate", "test"
# Evaluations: step 2 scores retrieval on the validate split only; step 3 the test split's headline tasks.
EVALUATIONS: dict[str, tuple[str, ...]] = {
    VALIDATE: ("data.shards.test_split=validate", "tasks=[retrieval]"),
    TEST: ("tasks=[zero_shot, retrieval, linear_probe]",),
}
SELECT_METRIC = ("findings-geometry image AUROC", ("retrieval", "findings_geometry", "image_auroc"))
COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("geometry text AUROC", ("retrieval", "findings_geometry", "text_auroc")),
    ("geometry image AUROC", ("retrieval", "findings_geometry", "image_auroc")),
    ("i→r R@1", ("retrieval", "image_to_report", "label_set", "R@1", "value")),
    ("i→r R@5", ("retrieval", "image_to_report", "label_set", "R@5", "value")),
    ("i→r R@10", ("retrieval", "image_to_report", "label_set", "R@10", "value")),
    ("zero-shot AUROC", ("zero_shot", "mean_auroc", "auroc")),
    ("probe AUROC @ 1 %", ("linear_probe", "datasets", "shards", "fractions", "1pct", "auroc")),
)
# SIA's detector as scored during training (MLflow, docs/phantoms.md): mean over the logged steps.
DETECTOR = ("sia/fn_eliminated_per_row", "sia/tfn_per_row", "sia/fn_precision", "sia/fn_recall")


@dataclass(frozen=True)
class Run:
    """One training run and the splits it is evaluated on."""

    run_id: str
    preset: str
    overrides: tuple[str, ...]
    seed: int
    evaluations: tuple[str, ...]


def setting_run(setting: str, seed: int, evaluations: tuple[str, ...]) -> Run:
    """sia_only with one SIA setting (step 2's runs; step 3's sia_only row uses the same id)."""
    return Run(f"sia_only_{setting}_s{seed}", "sia_only", SETTINGS[setting], seed, evaluations)


def step2_runs(seed: int) -> list[Run]:
    """Step 2: sia_only under every setting of :data:`SETTINGS`, evaluated on the validate split."""
    return [setting_run(name, seed, (VALIDATE,)) for name in SETTINGS]


def step3_runs(setting: str, seeds: list[int]) -> list[Run]:
    """Step 3: every arm with the chosen setting, seed by seed (all arms of the first seed first)."""
    runs = []
    for seed in seeds:
        for arm, preset, extra, uses_setting in ARMS:
            if arm == "sia_only":
                runs.append(setting_run(setting, seed, (TEST,)))
                continue
            overrides = (*(SETTINGS[setting] if uses_setting else ()), *extra)
            tag = f"_{setting}" if uses_setting else ""
            runs.append(Run(f"{arm}{tag}_s{seed}", preset, overrides, seed, (TEST,)))
    return runs


def arm_of(run: Run) -> str:
    """The table row of a step-3 run (its id without setting and seed)."""
    return next(arm for arm, *_ in ARMS if run.run_id.startswith(f"{arm}_"))


def run_args(args: argparse.Namespace, run: Run) -> argparse.Namespace:
    """launch/ablation.py's arguments for one run: its own folder, the common and the run's overrides."""
    ns = copy.copy(args)
    ns.out = str(Path(args.out).resolve() / "runs" / run.run_id)
    ns.overrides = [f"data.findings_annotations={args.annotations}", *run.overrides, f"run.seed={run.seed}",
                    f"{SIA}.random_seed={run.seed}", *args.overrides]  # fmt: skip
    ns.eval_overrides = []
    ns.transfer = False
    return ns


def eval_args(args: argparse.Namespace, run: Run, split: str) -> argparse.Namespace:
    """The evaluation arguments of one run on one split (its own output folder, shared probe splits)."""
    ns = run_args(args, run)
    ns.eval_overrides = [f"output_dir={Path(ns.out) / run.preset / f'eval_{split}'}",
                         f"linear_probe.split_dir={Path(args.out).resolve() / 'splits'}", *EVALUATIONS[split]]
    return ns


def run_settings(args: argparse.Namespace, run: Run) -> dict:
    """Everything that shapes one run and its evaluations (ablation's settings plus the phantom set's)."""
    settings = ablation.ablation_settings(run_args(args, run))
    settings.update(report_voices=args.report_voices, finding_sets=args.finding_sets, preset=run.preset,
                    evaluations={split: eval_args(args, run, split).eval_overrides for split in EVALUATIONS})
    return settings


def data_settings(args: argparse.Namespace) -> dict:
    """What shapes the phantom set and its shards."""
    return {"studies": args.studies, "report_voices": args.report_voices, "finding_sets": args.finding_sets,
            "split": list(ablation.SPLIT), "manifest": args.manifest, "annotations": args.annotations}


def metrics_file(args: argparse.Namespace, run: Run, split: str) -> Path:
    """Where the evaluation of ``run`` on ``split`` writes metrics.json."""
    return Path(args.out).resolve() / "runs" / run.run_id / run.preset / f"eval_{split}" / "metrics.json"


def execute_run(args: argparse.Namespace, run: Run, execute: Callable[[list[str], str, int], None]) -> dict:
    """Train (unless a run with the same settings is there) and evaluate one run; its metrics per split."""
    ns = run_args(args, run)
    folder = Path(ns.out)
    folder.mkdir(parents=True, exist_ok=True)
    ablation.check_settings(folder, run_settings(args, run), args.replace_stale)
    timings_path = folder / "timings.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    if not (folder / run.preset / "export" / "model_config.yaml").is_file():
        start = time.perf_counter()
        execute(ablation.train_command(ns, run.preset), f"train {run.run_id}", args.nproc)
        timings["train_s"] = round(time.perf_counter() - start, 1)
        timings_path.write_text(json.dumps(timings, indent=1), encoding="utf-8")
    out = {}
    for split in run.evaluations:
        path = metrics_file(args, run, split)
        if not path.is_file():
            start = time.perf_counter()
            execute(ablation.eval_command(eval_args(args, run, split), run.preset), f"evaluate {run.run_id} on {split}", 1)
            timings[f"eval_{split}_s"] = round(time.perf_counter() - start, 1)
            timings_path.write_text(json.dumps(timings, indent=1), encoding="utf-8")
        out[split] = json.loads(path.read_text(encoding="utf-8"))
    return out


def detector_stats(args: argparse.Namespace, run: Run) -> dict[str, float]:
    """SIA's detector during training: each :data:`DETECTOR` metric's mean over the logged steps (run's MLflow db)."""
    from mlflow.tracking import MlflowClient

    db = Path(args.out).resolve() / "runs" / run.run_id / run.preset / "mlflow.db"
    if not db.is_file():
        return {}
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    values = {key: [m.value for r in runs for m in client.get_metric_history(r.info.run_id, key)] for key in DETECTOR}
    return {key: statistics.fmean(v) for key, v in values.items() if v}


def chosen_setting(validate_metrics: dict[str, dict]) -> tuple[str, dict[str, float | None]]:
    """The setting with the highest :data:`SELECT_METRIC` on the validate split, and every setting's value."""
    values: dict[str, float | None] = {}
    for setting, tree in validate_metrics.items():
        split = tree["tasks"].get("retrieval", {}).get("split")
        if split != VALIDATE:
            raise SystemExit(f"sia_experiment: step 2's evaluation of {setting} is on {split!r}, not {VALIDATE!r}")
        values[setting] = ablation.lookup(tree["tasks"], SELECT_METRIC[1])
    scored = {k: v for k, v in values.items() if v is not None}
    if not scored:
        raise SystemExit(f"sia_experiment: no step-2 run has {SELECT_METRIC[0]}")
    return max(scored, key=lambda k: scored[k]), values


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` in %, the sd over seeds (``n/a`` for none, no sd for one)."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def step2_table(values: dict[str, float | None], chosen: str, detector: dict[str, dict[str, float]]) -> str:
    """Step 2's table: every setting's selection metric on the validate split and its detector during training."""
    names = " | ".join(f"{key.removeprefix('sia/')} (training)" for key in DETECTOR)
    lines = [f"| SIA setting (sia_only, validate split) | {SELECT_METRIC[0]} | {names} |", "|---|---|" + "---|" * len(DETECTOR)]
    for setting, value in values.items():
        mark = " (chosen)" if setting == chosen else ""
        stats = " | ".join(f"{detector[setting][k]:.3f}" if k in detector.get(setting, {}) else "n/a" for k in DETECTOR)
        lines.append(f"| {setting}{mark} | {'n/a' if value is None else f'{100 * value:.1f}'} | {stats} |")
    return "\n".join(lines)


def step3_table(test_metrics: dict[str, list[dict]], steps: int) -> str:
    """Step 3's table: a row per arm, mean ± sd over its finished seeds, every number phantom and in %."""
    header = f"| arm (phantom, {steps} steps, test split) | seeds | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for arm, trees in test_metrics.items():
        cells = []
        for _, path in COLUMNS:
            values = [ablation.lookup(tree["tasks"], path) for tree in trees]
            cells.append(mean_sd([v for v in values if v is not None]))
        lines.append(f"| {arm} | {len(trees)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setting_of(run: Run) -> str:
    """The SIA setting of a step-2 run."""
    return run.run_id.removeprefix("sia_only_").removesuffix(f"_s{run.seed}")


def plan(args: argparse.Namespace) -> list[str]:
    """One line per run: done or to run (step 3's only once step 2 has chosen); trains and writes nothing."""
    lines, validate = [], {}
    for run in step2_runs(args.seeds[0]):
        done = metrics_file(args, run, VALIDATE).is_file()
        lines.append(f"step 2: {run.run_id}: {'done' if done else 'to run'}")
        if done:
            validate[setting_of(run)] = json.loads(metrics_file(args, run, VALIDATE).read_text(encoding="utf-8"))
    if len(validate) < len(SETTINGS):
        return [*lines, "step 3: waits for step 2's choice"]
    chosen, _ = chosen_setting(validate)
    for run in step3_runs(chosen, args.seeds):
        lines.append(f"step 3: {run.run_id}: {'done' if metrics_file(args, run, TEST).is_file() else 'to run'}")
    return lines


def run_experiment(
    args: argparse.Namespace, execute: Callable[[list[str], str, int], None] = ablation.run
) -> str:
    """Step 2, then step 3 seed by seed (reusing finished runs made with the same settings); the tables."""
    if args.plan:
        return "\n".join(plan(args))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ablation.check_settings(out, data_settings(args), args.replace_stale)
    if args.manifest is None or args.annotations is None:
        written = ablation.make_phantom_shards(
            out, args.studies, args.workers, report_voices=args.report_voices, finding_sets=args.finding_sets)
        args.manifest, args.annotations = (str(path) for path in written)  # recorded in the runs' settings (JSON)
    validate, detector = {}, {}
    for run in step2_runs(args.seeds[0]):
        validate[setting_of(run)] = execute_run(args, run, execute)[VALIDATE]
        detector[setting_of(run)] = detector_stats(args, run)
    chosen, values = chosen_setting(validate)
    results: dict = {"chosen": chosen, "validate": values, "detector_step2": detector, "test": {}, "detector_step3": {}}
    text = write_tables(out, args, results)
    if args.stop_after >= 3:
        for run in step3_runs(chosen, args.seeds):  # the tables are rewritten after every run
            results["test"].setdefault(arm_of(run), []).append(execute_run(args, run, execute)[TEST])
            results["detector_step3"].setdefault(arm_of(run), []).append(detector_stats(args, run))
            text = write_tables(out, args, results)
    return text


def detector_table(training: dict[str, list[dict[str, float]]]) -> str:
    """SIA's detector during training per arm (mean over seeds); clip has no detector."""
    lines = ["| arm (training, global batch) | " + " | ".join(k.removeprefix("sia/") for k in DETECTOR) + " |",
             "|---|" + "---|" * len(DETECTOR)]
    for arm, runs in training.items():
        if not any(runs):
            continue
        cells = [statistics.mean(r[k] for r in runs if k in r) if any(k in r for r in runs) else None for k in DETECTOR]
        lines.append(f"| {arm} | " + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def write_tables(out: Path, args: argparse.Namespace, results: dict) -> str:
    """Write OUT/sia_experiment.md (the tables so far) and .json (every number); return the Markdown."""
    parts = [f"Step 2 (seed {args.seeds[0]}, {args.steps} steps): chosen by {SELECT_METRIC[0]} on the validate split.",
             "", step2_table(results["validate"], results["chosen"], results["detector_step2"])]
    if results["test"]:
        parts += ["", f"Step 3 (SIA setting {results['chosen']}; mean ± sd over seeds, in %):", "",
                  step3_table(results["test"], args.steps), "", detector_table(results["detector_step3"])]
    text = "\n".join(parts)
    (out / "sia_experiment.md").write_text(text + "\n", encoding="utf-8")
    (out / "sia_experiment.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (training overrides are positional ``key=value``)."""
    parser = argparse.ArgumentParser(prog="python -m launch.sia_experiment", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the phantom set, the runs and the tables")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps per run (the budget)")
    parser.add_argument("--studies", type=int, required=True, help="studies of the voiced phantom set")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="step 3's seeds (the first also step 2's)")
    parser.add_argument("--report-voices", type=int, required=True, help="radiologist voices (docs/phantoms.md)")
    parser.add_argument("--finding-sets", type=int, required=True, help="distinct abnormal finding sets")
    parser.add_argument("--stop-after", type=int, choices=(2, 3), default=3, help="2: only step 2 (the choice)")
    parser.add_argument("--plan", action="store_true", help="list the runs and whether each is done; train nothing")
    parser.add_argument("--manifest", help="shards' manifest.json of a voiced set (default: written under --out)")
    parser.add_argument("--annotations", help="phantom_annotations.json behind --manifest")
    parser.add_argument("--workers", type=int, default=2, help="processes for phantoms and sharding")
    parser.add_argument("--nproc", type=int, default=2, help="training processes per run (torchrun on CPU)")
    parser.add_argument("--train-config", default=str(default_config("pretrain/ablation.yaml")))
    parser.add_argument("--replace-stale", action="store_true",
                        help="remove runs made with other settings instead of stopping")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every training run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the experiment and print its tables."""
    from pipeline.logging_setup import setup_logging

    setup_logging()
    print(run_experiment(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
