"""What SISTA's losses cost, as ratios measured in one run on this machine.

1. STA vectorised vs the per-sample, per-token loop reference (forward + backward), B=64, L=112,
   P=196; the loop reference runs on a subset of samples and is scaled linearly (its cost is a sum
   over samples), and a second baseline loops the vectorised code over samples one by one; then
   STA's optional cross-image term (``loss.options.sta_image.negatives`` K) against the within-sample term.
2. A full training step (forward + backward, ViT-B/16 at 224 px + 6-layer BERT, B=16, bf16
   autocast on CPU) with the ``sista`` preset (with and without STA's cross-image term) vs the
   ``clip`` preset, plus the losses alone.
3. SIA memory per device vs global batch N at fixed B: bytes kept for backward on rank 0 of W
   gloo processes (W = 1, 2, 4, 8), i.e. O(B·N).

Run: ``.venv/bin/python -m bench.loss_cost`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pipeline.config import config_from_dict, load_yaml_tree
from pipeline.losses import (
    LossConfig,
    LossContext,
    LossInputs,
    build_objective,
    sia_terms,
    sta_image_loss,
    sta_loss,
)
from pipeline.losses.reference import sta_loop_reference
from pipeline.resources import default_config

DEVICE = torch.device("cpu")


def sync() -> None:
    """Wait for queued GPU work so wall-clock timings are real."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, device=DEVICE), dim=-1)


# --------------------------------------------------------------------------- 1. STA vectorised vs loop


def bench_sta(batch: int, length: int, patches: int, dim: int, loop_samples: int,
              image_negatives: list[int]) -> dict[str, float]:
    """Seconds per batch (fwd + bwd) of vectorised STA, the loop reference (scaled), a per-sample loop, the cross-image term."""
    torch.manual_seed(0)
    v = unit(batch, patches, dim).requires_grad_()
    t = unit(batch, length, dim).requires_grad_()
    mask = torch.ones(batch, length, dtype=torch.bool, device=DEVICE)
    mask[:, 60:] = torch.rand(batch, length - 60, device=DEVICE) > 0.5  # ragged reports

    def vectorised():
        loss, _ = sta_loss(v, t, mask, 14.0)
        loss.backward()

    def per_sample():
        total = sum(sta_loss(v[b : b + 1], t[b : b + 1], mask[b : b + 1], 14.0)[0] for b in range(batch)) / batch
        total.backward()

    def reference():
        loss, _ = sta_loop_reference(v[:loop_samples], t[:loop_samples], mask[:loop_samples], 14.0)
        loss.backward()

    fast = timed(vectorised, 5)
    sample_loop = timed(per_sample, 2)
    sync()
    start = time.perf_counter()
    reference()
    sync()
    loop = (time.perf_counter() - start) * batch / loop_samples
    out = {"vectorised_s": fast, "per_sample_loop_s": sample_loop, "loop_reference_s": loop}
    for k in image_negatives:
        out[f"image_k{k}_s"] = timed(lambda k=k: sta_image_loss(v, t, mask, 14.0, negatives=k).backward(), 3)
    return out


# --------------------------------------------------------------------------- 2. training step sista vs clip


# The losses timed in a training step: two presets, and sista with STA's cross-image term.
VARIANTS = ("clip", "sista", "sista+image")


def bench_step(batch: int, steps: int) -> dict[str, float]:
    """Seconds per training step (fwd + bwd, bf16 autocast) for each of ``VARIANTS``, interleaved."""
    from pipeline.models import ModelConfig
    from pipeline.models.image_encoder import ImageEncoder
    from pipeline.models.sista_model import SistaModel
    from pipeline.models.text_encoder import TextEncoder

    tree, _ = load_yaml_tree(default_config("pretrain/base.yaml"))
    model_tree = tree["model"]
    model_tree["image"]["pretrained"] = "none"
    model_tree["text"].update(name=None, tiny={"num_hidden_layers": 6, "vocab_size": 28996})
    cfg = config_from_dict(ModelConfig, model_tree, "bench")
    text = TextEncoder(cfg.text, special_token_ids=[0, 101, 102])  # BERT-base widths, 6 layers, random
    model = SistaModel(cfg, ImageEncoder(cfg.image), text).to(DEVICE).train()
    losses = {}
    for name in VARIANTS:
        options = dict(tree["loss"]["options"])
        options["sia"] = dict(options["sia"], similarity_source="precomputed")
        if name.endswith("+image"):  # every other image of the batch as a negative
            options["sta_image"] = dict(options["sta_image"], negatives=batch - 1)
        loss_tree = dict(tree["loss"], preset=name.split("+")[0], options=options)
        loss_cfg = config_from_dict(LossConfig, loss_tree, "bench", section="loss")
        losses[name] = build_objective(loss_cfg, LossContext(report_pooling="mean"))
    images = torch.randn(batch, 3, 224, 224, device=DEVICE)
    ids = torch.randint(1000, 28000, (batch, 112), device=DEVICE)
    ids[:, 0], ids[:, -1] = 101, 102
    attention = torch.ones(batch, 112, dtype=torch.long, device=DEVICE)
    attention[batch // 2 :, 80:] = 0
    report = unit(batch, 384)

    def step(preset: str) -> float:
        sync()
        start = time.perf_counter()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            image_f, text_f = model(images, ids, attention)
            out = losses[preset](LossInputs(image_f, text_f, model.logit_scales(), report_emb=report))
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    times = {name: [] for name in VARIANTS}
    for name in VARIANTS:
        step(name)  # warm-up
    for _ in range(steps):
        for name in VARIANTS:
            times[name].append(step(name))

    # the losses alone on the same feature shapes (fwd + bwd through the loss only)
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        image_f, text_f = model(images, ids, attention)
    scales = {k: v.detach() for k, v in model.logit_scales().items()}

    def loss_only(preset: str):
        leaves = [x.detach().float().requires_grad_() for x in (image_f.global_emb, image_f.patch_emb, text_f.global_emb, text_f.token_emb)]
        img = SimpleNamespace(global_emb=leaves[0], patch_emb=leaves[1])
        txt = SimpleNamespace(global_emb=leaves[2], token_emb=leaves[3], token_mask=text_f.token_mask)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            out = losses[preset](LossInputs(img, txt, scales, report_emb=report))
        out.loss.backward()

    out = {f"{name}_step_s": statistics.median(times[name]) for name in VARIANTS}
    out.update({f"{name}_loss_s": timed(lambda name=name: loss_only(name), 10) for name in VARIANTS})
    return out


# --------------------------------------------------------------------------- 3. SIA memory vs N


def _memory_worker(rank: int, world: int, batch: int, dim: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(rank)
    image, text, report = (F.normalize(torch.randn(batch, d), dim=-1) for d in (dim, dim, 384))
    image.requires_grad_()
    text.requires_grad_()
    saved = []

    def pack(tensor: torch.Tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        terms = sia_terms(image, text, 14.0, report, mode="eliminate", threshold=0.9, similarity_source="precomputed")
    terms.loss.backward()
    if rank == 0:
        Path(out_file).write_text(str(sum(saved)))
    dist.destroy_process_group()


def bench_memory(batch: int, dim: int, worlds: list[int]) -> list[tuple[int, int]]:
    """(N, bytes saved for backward on rank 0) for each world size at fixed per-device B."""
    rows = []
    for world in worlds:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "bytes")
            mp.spawn(_memory_worker, args=(world, batch, dim, os.path.join(tmp, "pg"), out), nprocs=world, join=True)
            rows.append((batch * world, int(Path(out).read_text())))
    return rows


def main() -> None:
    """Run the three measurements and print their figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop-samples", type=int, default=2, help="samples the STA loop reference runs on")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per preset")
    parser.add_argument("--image-negatives", type=int, nargs="*", default=[15, 31],
                        help="K values of STA's cross-image term to time (none: skip)")
    parser.add_argument("--skip-step", action="store_true", help="skip the (slow) ViT-B training step")
    parser.add_argument("--skip-memory", action="store_true", help="skip the multi-process SIA memory measurement")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the memory measurement always runs on CPU)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")

    sta = bench_sta(64, 112, 196, 128, args.loop_samples, args.image_negatives)
    print("\n[1] STA, B=64 L=112 P=196 D=128, forward+backward per batch")
    print(f"    vectorised            {sta['vectorised_s'] * 1e3:9.1f} ms")
    print(f"    per-sample loop       {sta['per_sample_loop_s'] * 1e3:9.1f} ms   ratio {sta['per_sample_loop_s'] / sta['vectorised_s']:6.1f}x")
    print(f"    loop reference (x{64 // args.loop_samples} of {args.loop_samples} samples) {sta['loop_reference_s']:7.1f} s    ratio {sta['loop_reference_s'] / sta['vectorised_s']:6.0f}x  (target >= 20x)")
    for k in args.image_negatives:
        cost = sta[f"image_k{k}_s"]
        print(f"    cross-image term K={k:<3d} {cost * 1e3:9.1f} ms   = {cost / sta['vectorised_s']:5.1f}x the within-sample term")

    if not args.skip_step:
        step = bench_step(16, args.steps)
        over_step = (step["sista_step_s"] - step["clip_step_s"]) / step["clip_step_s"]
        over_loss = (step["sista_loss_s"] - step["clip_loss_s"]) / step["clip_step_s"]
        print(f"\n[2] training step, ViT-B/16 224 px + 6-layer BERT, B=16, bf16 autocast, {DEVICE.type}")
        print(f"    clip step  {step['clip_step_s']:7.2f} s     sista step {step['sista_step_s']:7.2f} s     overhead {100 * over_step:+.1f}% (target <= 10%)")
        print(f"    losses alone: clip {step['clip_loss_s'] * 1e3:.1f} ms, sista {step['sista_loss_s'] * 1e3:.1f} ms -> SISTA's extra loss cost = {100 * over_loss:.2f}% of the clip step")
        over_image = (step["sista+image_step_s"] - step["clip_step_s"]) / step["clip_step_s"]
        image_loss = (step["sista+image_loss_s"] - step["clip_loss_s"]) / step["clip_step_s"]
        print(f"    sista + cross-image term (K=15): step {step['sista+image_step_s']:7.2f} s, overhead {100 * over_image:+.1f}%;"
              f" losses alone {step['sista+image_loss_s'] * 1e3:.1f} ms -> {100 * image_loss:.2f}% of the clip step")

    if args.skip_memory:
        return
    rows = bench_memory(32, 128, [1, 2, 4, 8])
    print("\n[3] SIA memory kept for backward on one device, B=32 per device, D=128")
    base_n, base_bytes = rows[0]
    for n, used in rows:
        print(f"    N={n:4d}  {used / 1024:9.1f} KiB   x{used / base_bytes:5.2f} for N x{n / base_n:.0f}")
    slopes = [(b2 - b1) / (n2 - n1) for (n1, b1), (n2, b2) in zip(rows, rows[1:])]
    print("    bytes per extra column of N: " + ", ".join(f"{s:.0f}" for s in slopes)
          + "  (constant => linear in N: B x const, not N x N)")


if __name__ == "__main__":
    main()
