"""SIA's false-negative detector scored over a shard set, without training (calibrate κ before a run).

    python -m pipeline.eval.sia_detector --manifest OUT/manifest.json --annotations PHANTOM/phantom_annotations.json
        [--split train] [--source precomputed|labels|online] [--model EXPORT_DIR] [--thresholds 0.8,0.9,0.95]
        [--centering off|on] [--batch-size 144] [--batches 50] [--seed 0] [--soft-temperature 0.05] [--json OUT.json]

Random batches of the split are drawn as training draws them (uniformly, without replacement
within a batch); for each κ the detector's mask ``R_ij ≥ κ`` (after optional centring by the
batch's mean off-diagonal similarity, as the centring EMA's first step) is scored against the TFN
mask of the phantom annotations with the same functions the trainer logs (pipeline.losses.fn_truth).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.data.findings import signatures_from_annotations, tfn_mask
from pipeline.data.shards import resolve_shards
from pipeline.losses.distributed import RowLayout
from pipeline.losses.fn_truth import soft_tfn_mass
from pipeline.losses.sia import center_similarity, label_vectors, offdiagonal_mean, similarity_rows


def read_split(manifest: str, split: str) -> dict[str, list]:
    """keys, texts, label rows and report embeddings (or None) of every sample of ``split`` (no images decoded)."""
    import webdataset as wds

    shards = resolve_shards(split, manifest=manifest)
    out: dict[str, list] = {"keys": [], "texts": [], "labels": [], "report_emb": []}
    for raw in wds.DataPipeline(wds.SimpleShardList(list(shards.urls)), wds.tarfile_to_samples()):
        meta = json.loads(raw["json"])
        out["keys"].append(raw["__key__"])
        out["texts"].append(raw["txt"].decode("utf-8"))
        out["labels"].append([float("nan") if v is None else float(v) for v in meta["labels"]["values"]])
        emb = raw.get("report_emb.npy")
        out["report_emb"].append(None if emb is None else np.load(io.BytesIO(emb), allow_pickle=False))
    return out


def source_vectors(data: dict[str, list], source: str, model_dir: str | None, max_length: int = 112) -> torch.Tensor:
    """[n, D] vectors whose cosine is R: the shards' report embeddings, label vectors, or an exported model's text."""
    if source == "precomputed":
        if any(e is None for e in data["report_emb"]):
            raise ValueError("--source precomputed: the shards have no report_emb.npy (shard with a report encoder)")
        return torch.from_numpy(np.stack(data["report_emb"]).astype(np.float64))
    if source == "labels":
        return label_vectors(torch.tensor(data["labels"], dtype=torch.float64))
    if model_dir is None:
        raise ValueError("--source online needs --model (an exported model folder)")
    from pipeline.eval.context import tokenizer_for
    from pipeline.eval.features import embed_texts
    from pipeline.models.sista_model import load_exported

    model = load_exported(model_dir)
    emb = embed_texts(model, tokenizer_for(model), data["texts"], max_length=max_length, batch_size=64,
                      device=torch.device("cpu"))  # fmt: skip
    return torch.from_numpy(emb.astype(np.float64))


def score_detector(
    vectors: torch.Tensor, signatures: torch.Tensor, thresholds: list[float], *, centering: bool,
    batch_size: int, batches: int, seed: int, soft_temperature: float,
) -> list[dict[str, float]]:  # fmt: skip
    """Per κ: eliminated_per_row, tfn_per_row, fn_precision, fn_recall (pooled over batches) and tfn_target_mass."""
    n = vectors.shape[0]
    size = min(batch_size, n)
    gen = torch.Generator().manual_seed(seed)
    paired = torch.eye(size, dtype=torch.bool)
    layout = RowLayout(0, 1, (size,))
    # one fresh set of counters per κ (the += below is in place: shared tensors would pool every κ)
    per_threshold = [{k: torch.zeros((), dtype=torch.float64) for k in ("hits", "chosen", "true", "rows", "mass")}
                     for _ in thresholds]  # fmt: skip
    for _ in range(batches):
        index = torch.randperm(n, generator=gen)[:size]
        similarity = similarity_rows(vectors[index], layout, torch.float64)
        if centering:
            offset = offdiagonal_mean(similarity, paired)
            similarity = torch.where(paired, similarity, center_similarity(similarity, offset))
        truth = tfn_mask(signatures[index], signatures[index], paired)
        mass = soft_tfn_mass(torch.softmax(similarity / soft_temperature, dim=-1), truth, paired)
        for acc, kappa in zip(per_threshold, thresholds):
            predicted = (similarity >= kappa) & ~paired
            acc["hits"] += (predicted & truth).sum()
            acc["chosen"] += predicted.sum()
            acc["true"] += truth.sum()
            acc["rows"] += size
            acc["mass"] += mass
    rows = []
    for acc, kappa in zip(per_threshold, thresholds):
        rows.append({
            "threshold": kappa, "centering": centering,
            "eliminated_per_row": float(acc["chosen"] / acc["rows"]), "tfn_per_row": float(acc["true"] / acc["rows"]),
            "fn_precision": float(acc["hits"] / acc["chosen"]) if acc["chosen"] > 0 else float("nan"),
            "fn_recall": float(acc["hits"] / acc["true"]) if acc["true"] > 0 else float("nan"),
            "tfn_target_mass": float(acc["mass"] / batches),
        })  # fmt: skip
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.eval.sia_detector", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="the sharder's manifest.json")
    parser.add_argument("--annotations", required=True, help="the phantom set's phantom_annotations.json")
    parser.add_argument("--split", default="train")
    parser.add_argument("--source", choices=("precomputed", "labels", "online"), default="precomputed")
    parser.add_argument("--model", default=None, help="exported model folder (--source online)")
    parser.add_argument("--thresholds", default="0.8,0.85,0.9,0.95", help="comma-separated κ values")
    parser.add_argument("--centering", choices=("off", "on", "both"), default="both")
    parser.add_argument("--batch-size", type=int, default=144, help="global batch N")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--soft-temperature", type=float, default=0.05, help="τ_t of the soft targets")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print one row per (centring, κ): eliminated/row, TFN/row, precision, recall, soft TFN mass."""
    args = build_parser().parse_args(argv)
    data = read_split(args.manifest, args.split)
    sig_of = signatures_from_annotations(args.annotations)
    missing = [k for k in data["keys"] if k not in sig_of]
    if missing:
        raise SystemExit(f"{args.annotations}: samples {missing[:5]} of {args.manifest} are not annotated")
    signatures = torch.tensor([sig_of[k] for k in data["keys"]], dtype=torch.long)
    vectors = source_vectors(data, args.source, args.model)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    rows = []
    for centering in {"off": [False], "on": [True], "both": [False, True]}[args.centering]:
        rows += score_detector(vectors, signatures, thresholds, centering=centering, batch_size=args.batch_size,
                               batches=args.batches, seed=args.seed, soft_temperature=args.soft_temperature)  # fmt: skip
    print(f"source={args.source} split={args.split} samples={len(signatures)} N={args.batch_size}")
    print("centring  κ      elim/row  TFN/row  precision  recall  soft TFN mass")
    for r in rows:
        print(f"{'on ' if r['centering'] else 'off'}      {r['threshold']:.3f}  {r['eliminated_per_row']:8.2f}  "
              f"{r['tfn_per_row']:7.2f}  {r['fn_precision']:9.3f}  {r['fn_recall']:6.3f}  {r['tfn_target_mass']:.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"source": args.source, "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
