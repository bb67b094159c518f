"""STA: sparse token alignment inside each pair (SPARC-style), vectorised over samples and tokens.

For every valid token l of a report and every patch p of its image: similarity s_lp, min–max
normalised over patches, zeroed below σ (1/P by default), renormalised to weights a_lp (not a
softmax); the grouped patch embedding c_l = normalise(Σ_p a_lp v_p) is contrasted with the
report's tokens in both directions (c_l vs t_k and t_l vs c_k), with the own token as positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.losses.distributed import all_reduce_sum_no_grad, rank_and_world
from pipeline.losses.sia import compute_dtype

# Added to (max − min) in the min–max normalisation; keeps all-equal rows finite.
MINMAX_EPS = 1e-6


@dataclass
class StaTerms:
    """STA's loss for this rank, its alignment weights and their sparsity."""

    loss: torch.Tensor
    weights: torch.Tensor  # a: [B, L, P]; rows of invalid tokens are zero
    sparsity: torch.Tensor  # fraction of non-zero a over valid tokens × patches


def alignment_weights(similarity: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Sparse weights a [..., P] from token–patch similarities: min–max normalise, cut below σ, renormalise.

    σ = ``threshold`` or 1/P. A token whose similarities are all equal has nothing above σ and
    gets uniform weights 1/P (its grouped embedding is the mean patch).
    """
    patches = similarity.shape[-1]
    sigma = 1.0 / patches if threshold is None else threshold
    low = similarity.amin(dim=-1, keepdim=True)
    high = similarity.amax(dim=-1, keepdim=True)
    normalised = (similarity - low) / (high - low + MINMAX_EPS)
    kept = torch.where(normalised >= sigma, normalised, 0.0)
    total = kept.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(kept, 1.0 / patches)
    return torch.where(total > 0, kept / total.clamp(min=torch.finfo(kept.dtype).tiny), uniform)


def _token_cross_entropy(logits: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Per-token CE [B, L] of rows of ``logits`` [B, L, L] against the diagonal, invalid columns masked."""
    batch, length, _ = logits.shape
    eye = torch.eye(length, dtype=torch.bool, device=logits.device)
    allowed = token_mask[:, None, :] | eye
    masked = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
    target = torch.arange(length, device=logits.device).repeat(batch)
    return F.cross_entropy(masked.flatten(0, 1), target, reduction="none").view(batch, length)


def sta_terms(
    patch_emb: torch.Tensor,
    token_emb: torch.Tensor,
    token_mask: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    threshold: float | None = None,
) -> StaTerms:
    """STA with weights and sparsity; see :func:`sta_loss` for the arguments."""
    if patch_emb.ndim != 3 or token_emb.ndim != 3 or token_mask.shape != token_emb.shape[:2]:
        raise ValueError(
            f"sta expects patch_emb [B, P, D], token_emb [B, L, D], token_mask [B, L]; got "
            f"{tuple(patch_emb.shape)}, {tuple(token_emb.shape)}, {tuple(token_mask.shape)}"
        )
    dtype = compute_dtype(patch_emb, token_emb)
    valid = token_mask.bool()
    with torch.autocast(device_type=patch_emb.device.type, enabled=False):
        patches = patch_emb.to(dtype)
        tokens = token_emb.to(dtype)
        scale = torch.as_tensor(logit_scale, device=patch_emb.device).to(dtype)
        weights = alignment_weights(tokens @ patches.transpose(1, 2), threshold)
        grouped = F.normalize(weights @ patches, dim=-1)
        logits = scale * grouped @ tokens.transpose(1, 2)  # [b, l, k] = c_l · t_k / τ_f
        per_token = (_token_cross_entropy(logits, valid) + _token_cross_entropy(logits.transpose(1, 2), valid)) / 2
        counts = valid.sum(dim=-1)
        per_sample = torch.where(valid, per_token, 0.0).sum(dim=-1) / counts.clamp(min=1)
        nonempty = all_reduce_sum_no_grad((counts > 0).sum().to(dtype))
        _, world = rank_and_world()
        loss = per_sample.sum() * (world / nonempty.clamp(min=1.0))
        weights = torch.where(valid[..., None], weights, 0.0)
        cells = (counts.sum() * patches.shape[1]).clamp(min=1)
        sparsity = ((weights > 0).sum() / cells).detach().float()
    return StaTerms(loss, weights, sparsity)


def sta_loss(
    patch_emb: torch.Tensor,
    token_emb: torch.Tensor,
    token_mask: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse token alignment loss and weights a [B, L, P] for this rank's pairs.

    ``patch_emb`` [B, P, D] and ``token_emb`` [B, L, D] L2-normalised; ``token_mask`` [B, L] True
    for real tokens (specials and padding False); ``logit_scale`` = 1/τ_f; ``threshold`` σ
    (None: 1/P). The loss is the mean over samples with at least one valid token of the mean
    over its tokens of ½(CE(c_l → t) + CE(t_l → c)); under ``torch.distributed`` each rank returns
    its share so the mean over ranks is the global mean. All samples empty: loss 0 (still in the graph).
    """
    terms = sta_terms(patch_emb, token_emb, token_mask, logit_scale, threshold=threshold)
    return terms.loss, terms.weights
