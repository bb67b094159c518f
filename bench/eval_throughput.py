"""Evaluation throughput on this machine, measured in one run:

1. Feature extraction for ViT-B/16 at 224 px (random weights; speed does not depend on them):
   images/s of the evaluation path (PNG decode from shards + eval transform + DataLoader + the
   image tower), against the compute-bound limit measured in the same run (the image tower
   alone on ready tensors). Prints the ratio.
2. The linear probe at 100 % of the phantom training split: our full-batch L-BFGS in torch vs
   scikit-learn's LogisticRegression (lbfgs) on the same standardised features; time and AUROC.
3. Segmentation (ViT-B/16 + SETR decoder) and detection (ResNet-50 + YOLOv3-style head) training
   images/s on the phantom SIIM / Object-CXR sets at 224 px, frozen encoder: MGCA's way (random
   affine per step, features recomputed; the protocol default) against features computed once
   and cached (no augmentation), with the one-off caching time. On CUDA when available.

    python -m bench.eval_throughput [--studies 300] [--images 256] [--batch-size 32] [--dense-images 64]

The phantom set is generated and sharded into a temporary folder first (not timed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.make_phantoms import make_phantoms
from pipeline.config import config_from_dict, load_yaml_tree
from pipeline.data.transforms import TransformConfig
from pipeline.eval.adapters import load_shard_split
from pipeline.eval.features import embed_images
from pipeline.eval.linear_probe import fit_linear, weighted_probe_metric
from pipeline.logging_setup import setup_logging
from pipeline.models import ImageEncoderConfig
from pipeline.models.image_encoder import ImageEncoder
from pipeline.resources import default_config

TRANSFORM = {
    "image_size": 224, "resize_size": 256, "crop_scale": [0.6, 1.0], "crop_ratio": [0.75, 1.33],
    "rotate_degrees": 0.0, "translate": 0.0, "scale": [1.0, 1.0], "brightness": 0.0, "contrast": 0.0,
    "mean": 0.5, "std": 0.25, "channels": 3,
}


class TowerOnly(torch.nn.Module):
    """Just the image tower, with the attribute the feature extractor uses."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = ImageEncoder(ImageEncoderConfig("vit_base_patch16_224", 3, 224, "none"))


def make_shards(root: Path, studies: int) -> Path:
    """Phantom tree + shards at 256 px (the MGCA resize), returned as the shards folder."""
    from data_prep.shard_mimic import main as shard_main

    make_phantoms(root / "phantoms", studies=studies, seed=0, workers=2, image_size_range=(384, 512),
                  split_fractions=(0.6, 0.2, 0.2))
    code = shard_main(["--config", str(default_config("data/phantom.yaml")), "--mimic-root", str(root / "phantoms"),
                       "--out", str(root / "shards"), "--workers", "2"])
    if code != 0:
        raise SystemExit(f"sharding failed with exit code {code}")
    return root / "shards"


def bench_features(shards: Path, images: int, batch_size: int) -> None:
    """Images/s of the full evaluation path vs the tower alone."""
    torch.manual_seed(0)
    model = TowerOnly().eval()
    transform = config_from_dict(TransformConfig, TRANSFORM, "bench")
    data = load_shard_split(shards, "train", uncertain="ignore")
    loaders = (data.loaders * (images // len(data.loaders) + 1))[:images]
    embed_images(model, loaders[:batch_size], transform, which="backbone", batch_size=batch_size, num_workers=0,
                  device=torch.device("cpu"))  # warm-up
    results = {}
    for workers in (0, 1):
        start = time.perf_counter()
        embed_images(model, loaders, transform, which="backbone", batch_size=batch_size, num_workers=workers,
                     device=torch.device("cpu"))
        results[workers] = images / (time.perf_counter() - start)
    batch = torch.randn(batch_size, 3, 224, 224)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(images // batch_size):
            model.image_encoder(batch)
    limit = (images // batch_size) * batch_size / (time.perf_counter() - start)
    print(f"ViT-B/16 @224 feature extraction on {torch.get_num_threads()} CPU threads, batch {batch_size}:")
    for workers, rate in results.items():
        print(f"  eval path (shards -> decode -> transform -> tower), {workers} loader workers: "
              f"{rate:.1f} images/s = {rate / limit:.2f} x the tower-only limit")
    print(f"  tower alone on ready tensors (limit): {limit:.1f} images/s")


def bench_probe(shards: Path) -> None:
    """Linear probe at 100 % of the training split: torch L-BFGS vs scikit-learn, same features."""
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    model = TowerOnly().eval()
    transform = config_from_dict(TransformConfig, {**TRANSFORM, "image_size": 224}, "bench")
    tree, _ = load_yaml_tree(default_config("eval/phantom_all.yaml"))
    labels = tree["data"]["shards"]["labels"]
    feats, targets = {}, {}
    for split in ("train", "test"):
        data = load_shard_split(shards, split, uncertain="zeros")
        feats[split] = embed_images(model, data.loaders, transform, which="backbone", batch_size=32, num_workers=1,
                                    device=torch.device("cpu"))
        targets[split] = data.labels[:, [data.label_names.index(n) for n in labels]]
    start = time.perf_counter()
    clf = fit_linear(feats["train"], targets["train"], "multilabel", 0, 1e-3, 200)
    ours = time.perf_counter() - start
    auroc_ours = float(weighted_probe_metric(clf.scores(feats["test"]), targets["test"], "multilabel")[0])
    mean, std = feats["train"].mean(0), feats["train"].std(0) + 1e-6
    x_train, x_test = (feats["train"] - mean) / std, (feats["test"] - mean) / std
    start = time.perf_counter()
    scores = np.zeros_like(targets["test"])
    for k in range(targets["train"].shape[1]):  # scikit-learn fits one label at a time
        y = targets["train"][:, k]
        if y.min() == y.max():
            scores[:, k] = y[0]
            continue
        sk = LogisticRegression(C=1.0 / (1e-3 * len(y)), max_iter=200).fit(x_train, y)
        scores[:, k] = sk.predict_proba(x_test)[:, 1]
    theirs = time.perf_counter() - start
    auroc_sk = float(weighted_probe_metric(scores, targets["test"], "multilabel")[0])
    print(f"linear probe at 100 % of the phantom train split ({len(feats['train'])} images, {feats['train'].shape[1]}-d, "
          f"{len(labels)} labels; random-weight features, so the AUROC only checks agreement):")
    print(f"  torch L-BFGS (ours): {ours:.2f} s, test AUROC {auroc_ours:.3f}")
    print(f"  scikit-learn lbfgs:  {theirs:.2f} s, test AUROC {auroc_sk:.3f}  -> ours takes {ours / theirs:.2f} x its time")


def bench_dense(root: Path, count: int) -> None:
    """Head-training images/s with recomputed (augmented) vs cached features, for segmentation and detection."""
    from types import SimpleNamespace

    from data_prep.phantom.dense_sets import write_dense_sets
    from pipeline.config import load_config
    from pipeline.eval.adapters import load_object_cxr, load_siim
    from pipeline.eval.config import EvalConfig
    from pipeline.eval.dense_fit import FrozenEncoder, augmenter, fit_head, prepare
    from pipeline.eval.dense_heads import build_detection_neck, build_segmentation_head
    from pipeline.eval.detection import Detector
    from pipeline.eval.segmentation import mixed_loss
    from pipeline.eval.yolo import yolo_loss
    from pipeline.shard_format import WindowSettings

    write_dense_sets(root / "dense", seed=0, count=count, size_range=(256, 320))
    dense = load_config(EvalConfig, default_config("eval/base.yaml"), ["checkpoint=unused"]).dense
    dense.epochs, size = 1, 224
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transform = config_from_dict(TransformConfig, TRANSFORM, "bench")
    cases = {
        "segmentation": ("vit_base_patch16_224", load_siim(root / "dense" / "siim", WindowSettings(True, 0.5, 99.5)), True,
                         lambda enc: build_segmentation_head(enc),
                         lambda head, maps, masks: mixed_loss(head(maps, (size, size)), masks.to(device), 10.0)),
        "detection": ("resnet50", load_object_cxr(root / "dense" / "object_cxr", "train"), False,
                      lambda enc: Detector(build_detection_neck(enc)),
                      lambda head, maps, boxes: yolo_loss(head(maps), boxes, size)),
    }  # fmt: skip
    print(f"segmentation / detection head training at {size} px, batch {dense.batch_size}, on {device}:")
    for task, (trunk, data, masks, build, loss) in cases.items():
        torch.manual_seed(0)
        encoder = ImageEncoder(ImageEncoderConfig(trunk, 3, 224 if "vit" in trunk else None, "none")).to(device)
        frozen = FrozenEncoder(SimpleNamespace(model=SimpleNamespace(image_encoder=encoder), transform=transform,
                                               device=device))  # fmt: skip
        prepared = prepare(data, size, with_masks=masks, with_boxes=not masks)
        valid = prepare(data.subset(range(4)), size, with_masks=masks, with_boxes=not masks)
        recomputed = fit_head(build(encoder), loss, frozen, prepared, valid, dense, augmenter(dense, rotate=masks))
        start = time.perf_counter()
        frozen.cached(prepared.images, dense.batch_size)
        cache_s = time.perf_counter() - start
        cached = fit_head(build(encoder), loss, frozen, prepared, valid, dense, None)
        print(f"  {task} ({trunk}, {len(prepared)} images): MGCA augmentation, features recomputed "
              f"{recomputed.train_images_per_s:.1f} images/s; cached features {cached.train_images_per_s:.1f} images/s "
              f"(= {cached.train_images_per_s / recomputed.train_images_per_s:.1f} x, after a one-off {cache_s:.1f} s cache)")


def main() -> None:
    """Generate the phantom set once, then run both measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dense-images", type=int, default=64, help="phantom SIIM / Object-CXR images per set")
    parser.add_argument("--only-dense", action="store_true", help="run only the segmentation / detection measurement")
    args = parser.parse_args()
    setup_logging(level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.only_dense:
            shards = make_shards(Path(tmp), args.studies)
            bench_features(shards, args.images, args.batch_size)
            bench_probe(shards)
        bench_dense(Path(tmp), args.dense_images)


if __name__ == "__main__":
    main()
