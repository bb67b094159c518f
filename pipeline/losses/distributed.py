"""The one place where the losses talk to ``torch.distributed``.

Two gathers along dim 0 over the default process group:

* :func:`gather_with_grad` — forward all-gather; backward sums every rank's gradient for the
  gathered copy and hands each rank the slice that belongs to its own rows (reduce-scatter with
  SUM; ``all_reduce`` + slice on backends without reduce-scatter, e.g. gloo). With this backward,
  a per-rank loss ``L_r`` whose mean over ranks is the global loss yields, after the usual
  gradient averaging over ranks (DDP, DeepSpeed), exactly the gradient of the global loss.
* :func:`gather_no_grad` — a detached all-gather (report embeddings, labels).

Ranks may hold different numbers of rows; tensors are padded to the largest for the collective
and unpadded afterwards. Without an initialised process group both are the identity (rank 0 of 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline import job_env


@dataclass(frozen=True)
class RowLayout:
    """Where this rank's rows sit in the gathered batch: its offset, its count, and every rank's count."""

    rank: int
    world_size: int
    sizes: tuple[int, ...]

    @property
    def offset(self) -> int:
        """Index of this rank's first row in the gathered batch."""
        return sum(self.sizes[: self.rank])

    @property
    def local_size(self) -> int:
        """Number of rows this rank holds."""
        return self.sizes[self.rank]

    @property
    def global_size(self) -> int:
        """Number of rows over all ranks (N)."""
        return sum(self.sizes)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    return job_env.rank(), job_env.world_size()


def row_layout(local_rows: int, device: torch.device) -> RowLayout:
    """Gather every rank's row count (one tiny collective) and return this rank's :class:`RowLayout`."""
    rank, world = rank_and_world()
    if world == 1:
        return RowLayout(0, 1, (local_rows,))
    mine = torch.tensor([local_rows], dtype=torch.long, device=device)
    counts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(counts, mine)
    return RowLayout(rank, world, tuple(int(c.item()) for c in counts))


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` padded with zero rows to ``rows`` rows (contiguous)."""
    if x.shape[0] == rows:
        return x.contiguous()
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad], dim=0)


def _all_gather_rows(x: torch.Tensor, layout: RowLayout) -> torch.Tensor:
    """Concatenate every rank's rows of ``x`` in rank order (no autograd)."""
    longest = max(layout.sizes)
    parts = [x.new_empty((longest, *x.shape[1:])) for _ in range(layout.world_size)]
    dist.all_gather(parts, _padded(x, longest))
    return torch.cat([p[:n] for p, n in zip(parts, layout.sizes)], dim=0)


def _supports_reduce_scatter() -> bool:
    """Whether the default group's backend implements reduce-scatter (gloo does not)."""
    return dist.get_backend() not in ("gloo",)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows forward; reduce-scatter (SUM) of the gathered gradient backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: RowLayout) -> torch.Tensor:  # type: ignore[override]
        ctx.layout = layout
        return _all_gather_rows(x, layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        layout: RowLayout = ctx.layout
        longest = max(layout.sizes)
        chunks = torch.split(grad, list(layout.sizes), dim=0)
        stacked = torch.stack([_padded(c, longest) for c in chunks], dim=0)
        if _supports_reduce_scatter():
            mine = grad.new_empty((longest, *grad.shape[1:]))
            dist.reduce_scatter_tensor(mine, stacked.flatten(0, 1), op=dist.ReduceOp.SUM)
        else:
            dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
            mine = stacked[layout.rank]
        return mine[: layout.local_size], None


def gather_with_grad(x: torch.Tensor, layout: RowLayout) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order, differentiable back to this rank's rows."""
    if layout.world_size == 1:
        return x
    return _GatherWithGrad.apply(x, layout)


def gather_no_grad(x: torch.Tensor, layout: RowLayout) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order, detached."""
    if layout.world_size == 1:
        return x.detach()
    with torch.no_grad():
        return _all_gather_rows(x.detach(), layout)


def all_reduce_sum_no_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over all ranks, detached (a copy; ``x`` is untouched)."""
    out = x.detach().clone()
    if job_env.is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
