"""Image→report and report→image retrieval: Recall@K with label-set relevance, and exact-pair recall.

Candidates are all reports (or images) of the evaluation split. A candidate is *relevant* to a
query when their binary label sets are equal (or the texts are identical); it is an *exact
pair* when the report text is the query image's own (identical texts count, since several
frontal images of one study share a report). Similarities are cosine of the global embeddings.

Two diagnostics sit beside the standard numbers. *Hubness*: the largest share of queries whose
top-1 is one same candidate (an undertrained contrastive model often has a few "hub" reports that
are every image's nearest neighbour, which can push R@1 below random ranking). *Centred* R@K
(label-set relevance): the same ranking after subtracting each modality's mean embedding over the
evaluation split and re-normalising (no labels used), which removes the common offset that makes
the hubs. The standard, uncentred figures are the headline; the centred ones say how much of a
low score is hubness rather than missing alignment.

*Findings geometry* (phantom sets, ``data.phantom_annotations`` set): over all pairs of test samples,
the AUROC with which the cosine of two reports' text embeddings (and of their images' embeddings)
tells pairs with identical findings in different words (pipeline.data.findings) from pairs with
different findings; pairs with identical findings and identical words are left out. False negatives
that a contrastive loss pushes apart lower exactly this.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.data.findings import signatures_from_annotations
from pipeline.eval import metrics
from pipeline.eval.context import EvalContext, TaskResult, fmt, resolve_path

QUERY_CHUNK = 1024  # queries scored at once: bounds memory to QUERY_CHUNK x n


def _hits(
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    query_keys: np.ndarray,
    cand_keys: np.ndarray,
    query_labels: np.ndarray | None,
    cand_labels: np.ndarray | None,
    ks: Sequence[int],
) -> np.ndarray:
    """``[n_queries, len(ks)]`` hits, relevance = same text key (+ same label set when labels are given)."""
    rows = []
    for start in range(0, len(query_emb), QUERY_CHUNK):  # chunks of queries, not single samples
        stop = start + QUERY_CHUNK
        sim = query_emb[start:stop].astype(np.float64) @ cand_emb.astype(np.float64).T
        relevant = query_keys[start:stop, None] == cand_keys[None, :]
        if query_labels is not None:
            relevant |= metrics.same_label_set(query_labels[start:stop], cand_labels)
        rows.append(metrics.retrieval_hits(sim, relevant, tuple(ks)))
    return np.concatenate(rows)


def centred(emb: np.ndarray) -> np.ndarray:
    """Embeddings minus their mean over the set, L2-normalised again (float64)."""
    shifted = emb.astype(np.float64) - emb.astype(np.float64).mean(axis=0, keepdims=True)
    return shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)


def largest_top1_share(query_emb: np.ndarray, cand_emb: np.ndarray) -> float:
    """The largest fraction of queries that share one same top-1 candidate (1/n_queries at best: no hub)."""
    top = np.concatenate([
        (query_emb[start : start + QUERY_CHUNK].astype(np.float64) @ cand_emb.astype(np.float64).T).argmax(axis=1)
        for start in range(0, len(query_emb), QUERY_CHUNK)
    ])
    return float(np.bincount(top, minlength=len(cand_emb)).max() / len(query_emb))


def retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    texts: Sequence[str],
    labels: np.ndarray,
    ks: Sequence[int],
    *,
    n_boot: int,
    seed: int,
    level: float,
) -> dict:
    """R@K both ways under label-set relevance and exact-pair relevance, with bootstrap intervals over queries."""
    _, text_key = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    out: dict = {"num_pairs": int(len(texts)), "ks": list(ks)}
    pairs = {"image_to_report": (image_emb, text_emb), "report_to_image": (text_emb, image_emb)}
    for direction, (q, c) in pairs.items():
        for relevance, lab in (("label_set", labels), ("exact_pair", None)):
            hits = _hits(q, c, text_key, text_key, lab, lab, ks).astype(np.float64)
            low, high = metrics.bootstrap_ci(
                lambda w, hits=hits: np.stack([metrics.weighted_mean(hits[:, j], w) for j in range(len(ks))], 1),
                len(hits),
                n_boot=n_boot,
                seed=seed,
                level=level,
            )
            out.setdefault(direction, {})[relevance] = {
                f"R@{k}": {"value": float(hits[:, j].mean()), "ci": [float(low[j]), float(high[j])]}
                for j, k in enumerate(ks)
            }
    for direction, (q, c) in pairs.items():
        hits = _hits(centred(q), centred(c), text_key, text_key, labels, labels, ks).astype(np.float64)
        out.setdefault("centred_label_set", {})[direction] = {f"R@{k}": float(hits[:, j].mean()) for j, k in enumerate(ks)}
        out.setdefault("largest_top1_share", {})[direction] = largest_top1_share(q, c)
    # What a model that ranks at random would score (label-set relevance), for reading the table.
    relevant_fraction = metrics.same_label_set(labels, labels).mean(axis=1)
    out["chance_R@1_label_set"] = float(relevant_fraction.mean())
    return out


def findings_geometry(
    image_emb: np.ndarray, text_emb: np.ndarray, texts: Sequence[str], signatures: np.ndarray
) -> dict:
    """Pair-cosine AUROC, text and image: identical findings in different words (positive) vs different findings."""
    signatures = np.asarray(signatures)
    _, text_key = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    same_findings = signatures[:, None] == signatures[None, :]
    paraphrase = same_findings & (text_key[:, None] != text_key[None, :])
    scored = np.triu(paraphrase | ~same_findings, k=1)  # each unordered pair once, never a sample with itself
    is_positive = paraphrase[scored]
    out: dict = {"paraphrase_pairs": int(is_positive.sum()), "different_findings_pairs": int((~is_positive).sum())}
    for name, emb in (("text", text_emb), ("image", image_emb)):
        unit = emb.astype(np.float64)
        unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        value = metrics.auroc((unit @ unit.T)[scored], is_positive.astype(np.int64))
        out[f"{name}_auroc"] = None if np.isnan(value) else value  # undefined without both kinds of pair
    return out


def shard_signatures(annotations: str | None, ids: Sequence[str]) -> np.ndarray | None:
    """Findings signatures of shard samples from ``data.phantom_annotations`` (None when it is not set)."""
    if annotations is None:
        return None
    path = resolve_path(annotations, "data.phantom_annotations")
    sig_of = signatures_from_annotations(path)
    missing = [i for i in ids if i not in sig_of]
    if missing:
        raise ValueError(f"{path}: test samples {missing[:5]} are not annotated (data.phantom_annotations must be "
                         "the annotation file of the phantom set the shards were made from)")
    return np.array([sig_of[i] for i in ids], dtype=np.int64)


def run_retrieval(ctx: EvalContext) -> TaskResult:
    """Retrieval between the test split's images and their reports (training texts)."""
    shards = ctx.cfg.data.shards
    data = ctx.shard_split(shards.test_split)
    image_emb = ctx.image_features(data, "global")
    text_emb = ctx.text_features(list(data.texts), "reports")
    boot = ctx.cfg.bootstrap
    result = retrieval_metrics(
        image_emb, text_emb, data.texts, data.labels, ctx.cfg.retrieval.ks,
        n_boot=boot.n_boot, seed=boot.seed, level=boot.level,
    )
    result["split"] = shards.test_split
    signatures = shard_signatures(ctx.cfg.data.phantom_annotations, data.ids)
    if signatures is not None:
        result["findings_geometry"] = findings_geometry(image_emb, text_emb, data.texts, signatures)
    table = []
    for direction in ("image_to_report", "report_to_image"):
        for relevance in ("label_set", "exact_pair"):
            for k, entry in result[direction][relevance].items():
                table.append((f"{direction} {relevance} {k}", *fmt(entry["value"], entry["ci"])))
    table.append(("chance R@1 (label set)", *fmt(result["chance_R@1_label_set"])))
    for direction in ("image_to_report", "report_to_image"):
        for k, value in result["centred_label_set"][direction].items():
            table.append((f"{direction} label_set {k}, centred (diagnostic)", *fmt(value)))
        table.append((f"{direction}: largest share of queries with one same top-1 (hubness)",
                      *fmt(result["largest_top1_share"][direction])))
    if "findings_geometry" in result:
        geometry = result["findings_geometry"]
        pairs = f"{geometry['paraphrase_pairs']} vs {geometry['different_findings_pairs']} pairs"
        for name in ("text", "image"):
            table.append((f"findings geometry: {name} cosine AUROC, same findings in other words vs different "
                          f"findings ({pairs})", *fmt(geometry[f"{name}_auroc"])))
    return TaskResult("retrieval", result, table)
