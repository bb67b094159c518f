"""Patch–word grounding: the STA alignment map of each finding phrase over its image, against ground truth.

A phrase is encoded on its own; its token–patch similarities go through STA's own sparse
weighting (:func:`pipeline.losses.alignment_weights`, min–max, cut below σ, renormalised), and
the phrase's map is the mean of its valid tokens' weights, bilinearly upsampled from the patch
grid to the model's input crop. The ground-truth mask goes through the same resize and centre
crop as the image. Pointing game: the map's (first) maximum lies inside the mask;
IoU: the map min–max normalised and thresholded at ``grounding.iou_threshold``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from pipeline.data.collate import Collator
from pipeline.data.transforms import TransformConfig, eval_transform
from pipeline.eval import metrics
from pipeline.eval.adapters import GroundingSet, load_ms_cxr, load_phantom_grounding
from pipeline.eval.context import EvalContext, TaskResult, fmt, resolve_path
from pipeline.eval.figures import grounding_grid
from pipeline.losses import alignment_weights


def transform_mask(mask: np.ndarray, cfg: TransformConfig) -> np.ndarray:
    """The eval transform's geometry on a bool mask ``[H, W]``: short side resize (nearest), centre crop."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
    tensor = TF.resize(tensor, [cfg.resize_size], interpolation=InterpolationMode.NEAREST)
    tensor = TF.center_crop(tensor, [cfg.image_size, cfg.image_size])
    return tensor[0].numpy() > 0.5


def phrase_maps(
    patch_emb: torch.Tensor,
    token_emb: torch.Tensor,
    token_mask: torch.Tensor,
    grid: tuple[int, int],
    size: int,
    threshold: float | None,
) -> torch.Tensor:
    """``[n, size, size]`` maps: STA weights of each phrase's tokens over its image's patches, token-averaged.

    ``patch_emb`` [n, P, D] is the image of each phrase, ``token_emb`` [n, L, D] / ``token_mask``
    [n, L] the phrase's tokens.
    """
    weights = alignment_weights(token_emb @ patch_emb.transpose(1, 2), threshold)  # [n, L, P]
    valid = token_mask.to(weights.dtype)[..., None]
    mean = (weights * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
    maps = mean.view(-1, 1, *grid)
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def load_grounding_set(ctx: EvalContext) -> GroundingSet:
    """The configured grounding set: phantom annotations over the shards' test split, or MS-CXR."""
    cfg = ctx.cfg
    if cfg.grounding.source == "phantom":
        images = ctx.shard_split(cfg.data.shards.test_split)
        path = resolve_path(cfg.data.phantom_annotations, "data.phantom_annotations")
        return load_phantom_grounding(path, images, cfg.grounding.statuses)
    ms = cfg.data.ms_cxr
    return load_ms_cxr(resolve_path(ms.csv, "data.ms_cxr.csv"), resolve_path(ms.jpg_root, "data.ms_cxr.jpg_root"))


@torch.inference_mode()
def score_grounding(ctx: EvalContext, data: GroundingSet) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Per-phrase pointing hits, IoU and mask area, plus the first few examples for the figure."""
    cfg, model, transform = ctx.cfg, ctx.model, ctx.transform
    model.eval()
    by_image: dict[str, list[int]] = defaultdict(list)
    for index, phrase in enumerate(data.phrases):
        by_image[phrase.image_id].append(index)
    image_ids = list(by_image)
    hits = np.zeros(len(data.phrases), dtype=bool)
    ious = np.zeros(len(data.phrases))
    areas = np.zeros(len(data.phrases))
    examples: list[dict] = []
    for start in range(0, len(image_ids), cfg.batch_size):  # batches of images
        chunk = image_ids[start : start + cfg.batch_size]
        raw = [data.loaders[i]() for i in chunk]
        images = torch.stack([eval_transform(r, transform) for r in raw]).to(ctx.device)
        features = model.encode_image(images)
        phrase_index = [j for i in chunk for j in by_image[i]]
        owner = torch.tensor([k for k, i in enumerate(chunk) for _ in by_image[i]], device=ctx.device)
        enc = Collator(ctx.tokenizer, ctx.max_length).tokenise([data.phrases[j].phrase for j in phrase_index])
        word_ids = enc["word_ids"].to(ctx.device) if ctx.group_words else None
        text = model.encode_text(enc["input_ids"].to(ctx.device), enc["attention_mask"].to(ctx.device), word_ids)
        maps = phrase_maps(
            features.patch_emb[owner].float(), text.token_emb.float(), text.token_mask,
            features.grid_size, transform.image_size, cfg.grounding.sta_threshold,
        ).cpu().numpy()
        masks = np.stack([
            transform_mask(data.phrases[j].mask(tuple(raw[int(k)].shape[-2:])), transform)
            for j, k in zip(phrase_index, owner.tolist())
        ])
        idx = np.asarray(phrase_index)
        hits[idx] = metrics.pointing_hits(maps, masks)
        ious[idx] = metrics.iou(metrics.threshold_maps(maps, cfg.grounding.iou_threshold), masks)
        areas[idx] = masks.reshape(len(masks), -1).mean(axis=1)
        for row, (j, k) in enumerate(zip(phrase_index, owner.tolist())):
            if len(examples) < cfg.grounding.figure_phrases:
                examples.append({
                    "image": images[k, 0].cpu().numpy() * transform.std + transform.mean,
                    "phrase": data.phrases[j].phrase, "map": maps[row], "mask": masks[row], "hit": bool(hits[j]),
                })
    return {"hits": hits, "iou": ious, "area": areas}, examples


def run_grounding(ctx: EvalContext) -> TaskResult:
    """Pointing-game accuracy and mean IoU over all phrases and per label, with the figure grid."""
    data = load_grounding_set(ctx)
    if not data.phrases:
        raise ValueError(f"{data.name}: no phrases to ground (grounding.statuses={ctx.cfg.grounding.statuses})")
    scores, examples = score_grounding(ctx, data)
    boot = ctx.cfg.bootstrap
    n = len(data.phrases)

    def summary(select: np.ndarray) -> dict:
        hits, ious = scores["hits"][select].astype(np.float64), scores["iou"][select]
        lo_h, hi_h = metrics.bootstrap_ci(lambda w: metrics.weighted_mean(hits, w), len(hits),
                                          n_boot=boot.n_boot, seed=boot.seed, level=boot.level)
        lo_i, hi_i = metrics.bootstrap_ci(lambda w: metrics.weighted_mean(ious, w), len(ious),
                                          n_boot=boot.n_boot, seed=boot.seed, level=boot.level)
        return {
            "phrases": int(select.sum()),
            "pointing_accuracy": float(hits.mean()), "pointing_ci": [float(lo_h), float(hi_h)],
            "mean_iou": float(ious.mean()), "iou_ci": [float(lo_i), float(hi_i)],
            # a uniformly random point lands in the mask with probability = its area fraction
            "chance_pointing": float(scores["area"][select].mean()),
        }

    labels = np.asarray([p.label for p in data.phrases])
    result = {"source": data.name, "iou_threshold": ctx.cfg.grounding.iou_threshold, "overall": summary(np.ones(n, bool))}
    result["per_label"] = {label: summary(labels == label) for label in sorted(set(labels))}
    figure = grounding_grid(examples, ctx.out_dir / "figures" / "grounding.png", title=f"{data.name} grounding")
    overall = result["overall"]
    table = [
        (f"pointing game ({overall['phrases']} phrases)", *fmt(overall["pointing_accuracy"], overall["pointing_ci"])),
        ("chance pointing (mask area)", *fmt(overall["chance_pointing"])),
        (f"mean IoU @ {ctx.cfg.grounding.iou_threshold:g}", *fmt(overall["mean_iou"], overall["iou_ci"])),
    ]
    for label, entry in result["per_label"].items():
        table.append((f"pointing {label} (n={entry['phrases']})", *fmt(entry["pointing_accuracy"], entry["pointing_ci"])))
    return TaskResult("grounding", result, table, [figure])

