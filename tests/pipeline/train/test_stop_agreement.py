"""Every rank must agree on the kind of stop: it decides whether all of them join the export collective."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.train.faults import BUDGET_STOP, OTHER_RANK_STOP, StopRequest, agree_across_ranks

CASES = [  # (each rank's local stop reason, what each rank must end with: (skip, stop, reason))
    ([None, None], [(False, False, None)] * 2),
    ([None, BUDGET_STOP], [(False, True, BUDGET_STOP)] * 2),  # the demo's case: one rank's clock ran out first
    ([BUDGET_STOP, "received SIGTERM"], [(False, True, OTHER_RANK_STOP), (False, True, "received SIGTERM")]),
    (["received SIGUSR1", None], [(False, True, "received SIGUSR1"), (False, True, OTHER_RANK_STOP)]),
]


def _worker(rank: int, world: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for case, (local_reasons, _) in enumerate(CASES):
            stop = StopRequest()
            stop.reason = local_reasons[rank]
            skip, stopping = agree_across_ranks(torch.tensor(1.0), stop)
            results[(case, rank)] = (skip, stopping, stop.reason)
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_the_kind_of_stop(tmp_path) -> None:
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    for case, (local_reasons, expected) in enumerate(CASES):
        assert [results[(case, r)] for r in range(2)] == expected, local_reasons
