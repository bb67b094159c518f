"""2 gloo ranks x 2 micro-batches of 2 == 1 process on the concatenated batch of 8 (loss and gradients, float64)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_step import _setup, _split

from pipeline.job_env import free_port
from pipeline.train.step import contrastive_step


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, loss, encode, batch = _setup(dropout=0.0)
        local = _split(batch, world)[rank]
        model.zero_grad(set_to_none=True)
        result = contrastive_step(encode, loss, _split(local, 2), lambda v: v.backward(), lambda v: (False, False))
        value = result.loss.clone()
        dist.all_reduce(value)
        grads = {}
        for name, param in model.named_parameters():
            if param.grad is not None:
                grad = param.grad.clone()
                dist.all_reduce(grad)  # DeepSpeed / DDP average the ranks' gradients
                grads[name] = grad / world
        if rank == 0:
            out["loss"], out["grads"] = value / world, grads
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_accumulation_equal_one_process():
    """Each rank's local loss (rows of its own micro-batches vs all 8 columns) averages to the 1-process loss."""
    model, loss, encode, batch = _setup(dropout=0.0)
    model.zero_grad(set_to_none=True)
    full = contrastive_step(encode, loss, [batch], lambda v: v.backward(), lambda v: (False, False))
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
        result = dict(out)
    torch.testing.assert_close(result["loss"], full.loss, rtol=1e-12, atol=1e-12)
    assert set(result["grads"]) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(result["grads"][name], grad, rtol=1e-9, atol=1e-12, msg=name)
