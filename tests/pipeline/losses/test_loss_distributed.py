"""W gloo processes == 1 process on the concatenated batch: losses (mean over ranks) and every gradient.

One spawn per world size runs every case (each SIA mode × similarity source, unequal rows per rank,
STA with unequal empty reports, STA's cross-image term with windows that cross rank boundaries, the
full sista objective with centring and the cross-image term) and the parent compares.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from pipeline.config import config_from_dict
from pipeline.losses import LossConfig, LossInputs, build_objective, sia_terms, sta_image_loss, sta_loss

N, FEAT, D, P, L = 12, 10, 8, 6, 5
MODES = ("eliminate", "multi_positive", "soft")
SOURCES = ("precomputed", "online", "labels")
THRESHOLD = {"precomputed": 0.9, "online": 0.6, "labels": 0.9}
SOFT = {"soft_temperature": 0.1, "soft_identity_weight": 0.4}


def global_data() -> dict[str, torch.Tensor]:
    """One global batch whose pairs fall into 3 near-duplicate groups spread over all ranks."""
    g = torch.Generator().manual_seed(7)
    group = torch.randperm(N, generator=g) % 3
    protos = torch.randn(3, FEAT, generator=g, dtype=torch.float64)
    mask = torch.rand(N, L, generator=g) > 0.3
    mask[[1, 2, 9]] = False  # empty reports, unevenly spread over ranks
    return {
        "image": protos[group] + 0.3 * torch.randn(N, FEAT, generator=g, dtype=torch.float64),
        "text": protos[group] + 0.3 * torch.randn(N, FEAT, generator=g, dtype=torch.float64),
        "report": protos[group] + 0.05 * torch.randn(N, FEAT, generator=g, dtype=torch.float64),
        "labels": torch.tensor([[1.0, 0.0, float("nan")], [0.0, 1.0, -1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)[group],
        "patches": torch.randn(N, P, FEAT, generator=g, dtype=torch.float64),
        "tokens": torch.randn(N, L, FEAT, generator=g, dtype=torch.float64),
        "mask": mask,
    }


class TinyHeads(nn.Module):
    """Linear projections + temperatures, identical on every rank (fixed seed)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        eye = torch.eye(FEAT, D, dtype=torch.float64)
        self.image = nn.Parameter(eye + 0.1 * torch.randn(FEAT, D, generator=g, dtype=torch.float64))
        self.text = nn.Parameter(eye + 0.1 * torch.randn(FEAT, D, generator=g, dtype=torch.float64))
        self.patch = nn.Parameter(torch.randn(FEAT, D, generator=g, dtype=torch.float64))
        self.token = nn.Parameter(torch.randn(FEAT, D, generator=g, dtype=torch.float64))
        self.log_scale = nn.Parameter(torch.tensor([2.0, 2.5], dtype=torch.float64))

    def forward(self, data: dict[str, torch.Tensor]):
        image = SimpleNamespace(
            global_emb=F.normalize(data["image"] @ self.image, dim=-1),
            patch_emb=F.normalize(data["patches"] @ self.patch, dim=-1),
        )
        text = SimpleNamespace(
            global_emb=F.normalize(data["text"] @ self.text, dim=-1),
            token_emb=F.normalize(data["tokens"] @ self.token, dim=-1),
            token_mask=data["mask"],
        )
        return image, text, {"sia": self.log_scale[0].exp(), "sta": self.log_scale[1].exp()}


def cases() -> list[str]:
    return [f"sia:{m}:{s}" for m in MODES for s in SOURCES] + ["sia_unequal", "sta", "sta_image", "sta_image_unequal", "sista_loss"]


def unequal_sizes(world: int) -> list[int]:
    return {1: [N], 2: [5, 7], 3: [3, 4, 5]}[world]


def run_case(case: str, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """Loss, parameter gradients and the eliminated-per-row diagnostic for one case on the given rows."""
    heads = TinyHeads()
    image, text, scales = heads(data)
    eliminated = 0.0
    if case.startswith("sia"):
        mode, source = ("eliminate", "precomputed") if case == "sia_unequal" else case.split(":")[1:]
        terms = sia_terms(
            image.global_emb, text.global_emb, scales["sia"], data["report"], data["labels"],
            mode=mode, threshold=THRESHOLD[source], similarity_source=source, **SOFT,
        )
        loss, eliminated = terms.loss, float(terms.eliminated_per_row)
    elif case == "sta":
        loss, _ = sta_loss(image.patch_emb, text.token_emb, text.token_mask, scales["sta"])
    elif case.startswith("sta_image"):
        negatives = N - 1 if case == "sta_image_unequal" else 5  # 5 > rows per rank: windows span ranks
        loss = sta_image_loss(image.patch_emb, text.token_emb, text.token_mask, scales["sta"], negatives=negatives)
    else:
        options = {
            "sia": {"mode": "soft", "similarity_source": "precomputed", "threshold": 0.9, "centering": True,
                    "centering_momentum": 0.9, "warn_eliminated_fraction": 1.0, **SOFT,
                    "false_negatives": "detector", "random_seed": 0},
            "sta_token": {"threshold": None}, "sta_image": {"negatives": 4, "threshold": None},
        }
        cfg = config_from_dict(LossConfig, {"preset": "sista", "weights": {"sia": 1.0, "sta": 0.5, "sta_image": 0.7},
                                            "options": options}, "test", section="loss")
        loss = build_objective(cfg)(LossInputs(image, text, scales, report_emb=data["report"])).loss
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in heads.named_parameters() if p.grad is not None}
    return loss.detach(), grads, eliminated


def rows_of(data: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in data.items()}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data = global_data()
        results = {}
        for case in cases():
            sizes = unequal_sizes(world) if case.endswith("_unequal") else [N // world] * world
            start = sum(sizes[:rank])
            results[case] = run_case(case, rows_of(data, start, start + sizes[rank]))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single_process() -> dict[str, tuple]:
    data = global_data()
    return {case: run_case(case, data) for case in cases()}


@pytest.mark.parametrize("world", [2, 3])
def test_w_processes_equal_one_process_on_concatenated_batch(world, single_process, tmp_path):
    mp.spawn(_worker, args=(world, str(tmp_path / "pg"), str(tmp_path)), nprocs=world, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for case, (loss, grads, eliminated) in single_process.items():
        losses = torch.stack([r[case][0] for r in per_rank])
        torch.testing.assert_close(losses.mean(), loss, rtol=0, atol=1e-12, msg=f"{case}: loss")
        for name, grad in grads.items():
            averaged = torch.stack([r[case][1][name] for r in per_rank]).mean(0)
            torch.testing.assert_close(averaged, grad, rtol=0, atol=1e-12, msg=f"{case}: grad of {name}")
        if case.startswith("sia:"):
            assert eliminated > 0, f"{case}: nothing eliminated, the case tests nothing"
            assert sum(r[case][2] for r in per_rank) / world == pytest.approx(eliminated)
    # the ranks really saw different rows
    assert not torch.equal(per_rank[0]["sta"][0], per_rank[1]["sta"][0])
