"""Training throughput: the data pipeline alone vs the training step alone vs both together (one process).

    python -m bench.train_throughput                      # demo model on this CPU, synthetic shards
    python -m bench.train_throughput --config configs/pretrain/demo.yaml --manifest demo_out/shards/manifest.json

Prints samples/s of each, the ratio data/step (below 1: data is the bottleneck), the data-wait fraction
of the combined loop, and on a GPU the peak memory and model FLOPs utilisation (FLOPs counted with
``torch.utils.flop_counter`` on one real step, divided by the GPU's dense bf16 peak).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pipeline.resources import default_config

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profile_steps(step, fixed, device, steps: int = 3) -> None:
    """Print where 3 training steps spend their time (top operators by device and by host time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(fixed, i)
        _sync(device)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(events.table(sort_by=sort, row_limit=30, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
    print(f"profile: {steps} steps in {wall * 1e3:.0f} ms wall (compare with the self device time total above)")


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(default_config("pretrain/demo.yaml")))
    parser.add_argument("--manifest", help="shards to read (default: synthetic shards in a temp folder)")
    parser.add_argument("--synthetic-samples", type=int, default=256)
    parser.add_argument("--synthetic-workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device (default: by GPU name)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of 3 training steps")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if "engine.device=cpu" in args.overrides else "")
    if not os.environ["DS_ACCELERATOR"]:
        del os.environ["DS_ACCELERATOR"]

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.config import load_config
    from pipeline.data import DataPosition, build_epoch_loader
    from pipeline.train.config import PretrainConfig
    from pipeline.train.faults import agree_across_ranks
    from pipeline.train.fit import device_batch, encode
    from pipeline.train.run import build_run
    from pipeline.train.step import contrastive_step

    work = Path(tempfile.mkdtemp(prefix="sista_bench_"))
    overrides = list(args.overrides)
    probe = load_config(PretrainConfig, args.config, ["data.manifest=x", *overrides])
    manifest = args.manifest
    if manifest is None:
        from bench.synthetic_shards import write_synthetic_shards

        t0 = time.time()
        shard_size = max(probe.data.batch_size, args.synthetic_samples // max(8, 2 * probe.data.num_workers))
        manifest = str(write_synthetic_shards(work / "shards", args.synthetic_samples, shard_size,
                                              probe.data.transform.resize_size, args.synthetic_workers))
        print(f"synthetic shards: {args.synthetic_samples} samples at {probe.data.transform.resize_size} px "
              f"in {time.time() - t0:.1f} s")
        if probe.model.text.tiny is not None:
            overrides.append(f"model.text.tokenizer={work / 'shards' / 'tokenizer'}")
    overrides = [f"data.manifest={manifest}", *overrides, "tracking.enabled=false", "checkpoint.resume=null",
                 f"run.output_dir={work}", "run.name=bench"]
    cfg = load_config(PretrainConfig, args.config, overrides)
    run = build_run(cfg)
    device, accum, micro = run.device, cfg.optim.accumulation_steps, cfg.data.batch_size
    per_step = micro * accum
    total = args.warmup + args.steps

    def loader():
        return iter(build_epoch_loader(run.shards, cfg.data, run.collator, rank=0, world_size=1,
                                       seed=cfg.run.seed, accumulation=accum, start=DataPosition(0),
                                       pin_memory=device.type == "cuda"))

    def backward(loss):
        run.engine.backward(loss, scale_wrt_gas=False)
        run.engine.step()

    def step(batches, index):
        return contrastive_step(lambda b: encode(run, b), run.loss, batches, backward,
                                lambda loss: agree_across_ranks(loss, run.stop))

    # 1. data pipeline alone
    batches = loader()
    for _ in range(args.warmup * accum):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(args.steps * accum):
        next(batches)
    data_rate = args.steps * per_step / (time.perf_counter() - t0)

    # 2. training step alone, on one batch already in memory
    fixed = [device_batch(run, next(loader())) for _ in range(accum)]
    with FlopCounterMode(display=False) as counter:
        step(fixed, 0)
    flops_per_step = counter.get_total_flops()
    for i in range(args.warmup):
        step(fixed, i)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(fixed, i)
    _sync(device)
    step_time = (time.perf_counter() - t0) / args.steps
    step_rate = per_step / step_time

    if args.profile:
        _profile_steps(step, fixed, device)

    # 3. both together, as the trainer runs
    batches = loader()
    wait = 0.0
    for i in range(total):
        if i == args.warmup:
            _sync(device)
            wait, t_start = 0.0, time.perf_counter()
        t0 = time.perf_counter()
        micro_batches = [device_batch(run, next(batches)) for _ in range(accum)]
        wait += time.perf_counter() - t0
        step(micro_batches, i)
    _sync(device)
    loop_time = time.perf_counter() - t_start
    loop_rate = args.steps * per_step / loop_time

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\ndevice: {name}; config {args.config}; model {cfg.model.image.name} @ {cfg.data.transform.image_size} px "
          f"+ text {cfg.model.text.name or 'tiny BERT ' + str(cfg.model.text.tiny)}; precision {cfg.engine.precision}; "
          f"{Path(cfg.engine.deepspeed_config).stem}; per-device batch {micro} x accumulation {accum}; "
          f"loader workers {cfg.data.num_workers}")
    print(f"data pipeline alone : {data_rate:9.1f} samples/s")
    print(f"training step alone : {step_rate:9.1f} samples/s  ({1000 * step_time:.1f} ms/step)")
    print(f"data + step (loop)  : {loop_rate:9.1f} samples/s  data-wait {100 * wait / loop_time:.1f}% of the loop")
    print(f"ratio data/step     : {data_rate / step_rate:9.2f}  -> "
          + ("data is NOT the bottleneck" if data_rate > step_rate else "data IS the bottleneck"))
    achieved = flops_per_step / step_time
    print(f"model FLOPs/step    : {flops_per_step / 1e12:9.3f} TFLOP  -> {achieved / 1e12:.2f} TFLOP/s achieved")
    if device.type == "cuda":
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        if peak:
            print(f"MFU (dense bf16 peak {peak:.0f} TFLOP/s): {100 * achieved / (peak * 1e12):.1f}% "
                  f"(step alone), {100 * flops_per_step * args.steps / loop_time / (peak * 1e12):.1f}% (with data)")
        print(f"peak GPU memory     : {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
