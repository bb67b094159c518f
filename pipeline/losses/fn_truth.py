"""SIA's false-negative detector against the truth: TFN rate, precision, recall, soft target mass; the bounding arms.

The truth is the true-false-negative mask of pipeline.data.findings (identical findings, not the
pair). Counts are summed over the global batch (one all-reduce when distributed), so every rank
logs the same values. The ``oracle`` arm eliminates exactly the TFNs; the ``random`` arm
eliminates, in each row, as many random columns as the detector does.
"""

from __future__ import annotations

import torch

from pipeline.data.findings import tfn_mask
from pipeline.losses.distributed import all_reduce_sum_no_grad, gather_no_grad, row_layout


def batch_tfn_mask(findings: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
    """This rank's TFN mask [B, N] from its rows' signatures [B] (columns: the gathered batch)."""
    layout = row_layout(findings.shape[0], findings.device)
    columns = gather_no_grad(findings, layout)
    return tfn_mask(findings, columns, paired)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, NaN when den is 0 (an undefined precision or recall is not a zero)."""
    return torch.where(den > 0, num / den.clamp(min=1.0), torch.full_like(num, float("nan")))


def detector_scores(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """tfn_per_row, tfn_fraction, fn_precision, fn_recall of a hard false-negative mask [B, N] (global values)."""
    rows, cols = truth.shape
    stats = torch.stack([
        (predicted & truth).sum(), predicted.sum(), truth.sum(), torch.tensor(rows, device=truth.device),
    ]).to(torch.float64)  # fmt: skip
    hits, chosen, true, total_rows = all_reduce_sum_no_grad(stats).unbind()
    per_row = true / total_rows.clamp(min=1.0)
    return {
        "tfn_per_row": per_row.float(),
        "tfn_fraction": (per_row / max(cols - 1, 1)).float(),
        "fn_precision": _ratio(hits, chosen).float(),
        "fn_recall": _ratio(hits, true).float(),
    }


def soft_tfn_mass(soft_target: torch.Tensor, truth: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
    """Share of the soft targets' off-pair mass that lies on TFN columns (global mean over rows)."""
    off = soft_target.masked_fill(paired, 0.0)
    share = (off * truth).sum(dim=-1) / off.sum(dim=-1).clamp(min=torch.finfo(off.dtype).tiny)
    stats = torch.stack([share.sum(), torch.tensor(float(share.shape[0]), device=share.device, dtype=share.dtype)])
    total, rows = all_reduce_sum_no_grad(stats.double()).unbind()
    return (total / rows.clamp(min=1.0)).float()


def random_like(detected: torch.Tensor, paired: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A mask with as many True per row as ``detected``, on random non-paired columns."""
    scores = torch.rand(detected.shape, generator=generator, device=detected.device)
    scores = scores.masked_fill(paired, float("inf"))  # the pair sorts last, never chosen
    order = scores.argsort(dim=-1).argsort(dim=-1)
    return order < detected.sum(dim=-1, keepdim=True)
