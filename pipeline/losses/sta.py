"""STA: sparse token alignment inside each pair (SPARC-style), vectorised over samples and tokens.

For every valid token l of a report and every patch p of its image: similarity s_lp, min–max
normalised over patches, zeroed below σ (1/P by default), renormalised to weights a_lp (not a
softmax); the grouped patch embedding c_l = normalise(Σ_p a_lp v_p) is contrasted with the
report's tokens in both directions (c_l vs t_k and t_l vs c_k), with the own token as positive.

Optionally (``loss.sta.image_negatives`` K > 0) a cross-image term: each token is grouped the same way
over its own image and over K other images of the global batch, and must pick its own image. It removes
the content-blind solution of the within-sample contrast (fixed "slots" on featureless patches; see
docs/method.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.losses.distributed import all_reduce_sum_no_grad, gather_with_grad, rank_and_world, row_layout
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


def _promoted(
    patch_emb: torch.Tensor, token_emb: torch.Tensor, token_mask: torch.Tensor, logit_scale: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shape-checked (patches, tokens, valid mask, scale) in the loss's compute dtype (float32 or float64)."""
    if patch_emb.ndim != 3 or token_emb.ndim != 3 or token_mask.shape != token_emb.shape[:2]:
        raise ValueError(
            f"sta expects patch_emb [B, P, D], token_emb [B, L, D], token_mask [B, L]; got "
            f"{tuple(patch_emb.shape)}, {tuple(token_emb.shape)}, {tuple(token_mask.shape)}"
        )
    dtype = compute_dtype(patch_emb, token_emb)
    scale = torch.as_tensor(logit_scale, device=patch_emb.device).to(dtype)
    return patch_emb.to(dtype), token_emb.to(dtype), token_mask.bool(), scale


def _global_token_mean(per_token: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """This rank's share of the mean over non-empty samples (global) of the mean over valid tokens of ``per_token`` [B, L].

    Across devices the denominator is the global count of non-empty samples, so the mean of the
    ranks' values is the global loss. All samples empty: 0, still attached to the graph.
    """
    counts = valid.sum(dim=-1)
    per_sample = torch.where(valid, per_token, 0.0).sum(dim=-1) / counts.clamp(min=1)
    nonempty = all_reduce_sum_no_grad((counts > 0).sum().to(per_token.dtype))
    _, world = rank_and_world()
    return per_sample.sum() * (world / nonempty.clamp(min=1.0))


def sta_terms(
    patch_emb: torch.Tensor,
    token_emb: torch.Tensor,
    token_mask: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    threshold: float | None = None,
) -> StaTerms:
    """STA with weights and sparsity; see :func:`sta_loss` for the arguments."""
    with torch.autocast(device_type=patch_emb.device.type, enabled=False):
        patches, tokens, valid, scale = _promoted(patch_emb, token_emb, token_mask, logit_scale)
        weights = alignment_weights(tokens @ patches.transpose(1, 2), threshold)
        grouped = F.normalize(weights @ patches, dim=-1)
        logits = scale * grouped @ tokens.transpose(1, 2)  # [b, l, k] = c_l · t_k / τ_f
        per_token = (_token_cross_entropy(logits, valid) + _token_cross_entropy(logits.transpose(1, 2), valid)) / 2
        loss = _global_token_mean(per_token, valid)
        weights = torch.where(valid[..., None], weights, 0.0)
        cells = (valid.sum() * patches.shape[1]).clamp(min=1)
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


def image_window(offset: int, rows: int, global_size: int, negatives: int, device: torch.device) -> torch.Tensor:
    """Global image indices [rows, 1 + K'] each token is grouped over: its own image, then the next K' (cyclic).

    K' = min(``negatives``, N − 1). Fixed by global position, so W devices see the same candidates
    as one device on the concatenated batch.
    """
    window = min(negatives, global_size - 1)
    own = torch.arange(offset, offset + rows, device=device)
    return (own[:, None] + torch.arange(window + 1, device=device)[None, :]) % global_size


def sta_image_loss(
    patch_emb: torch.Tensor,
    token_emb: torch.Tensor,
    token_mask: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    negatives: int,
    threshold: float | None = None,
) -> torch.Tensor:
    """Cross-image token contrast: each token must prefer its grouping over its own image to K others.

    For token l of pair i and candidate image j (its own, then the K following images of the
    all-gathered batch, cyclic): c_l^(j) = normalise(Σ_p a_lp^(j) v_jp) with STA's sparse weights of
    t_l over image j's patches; ℓ_l = CE_j(s_f · t_l · c_l^(j), own image). Averaged like
    :func:`sta_loss` (valid tokens, then non-empty samples; each rank returns its share). Patch
    embeddings are gathered with gradient, so other ranks' images get their gradient back.
    """
    if negatives < 1:
        raise ValueError(f"sta_image_loss needs negatives >= 1, got {negatives}")
    with torch.autocast(device_type=patch_emb.device.type, enabled=False):
        patches, tokens, valid, scale = _promoted(patch_emb, token_emb, token_mask, logit_scale)
        layout = row_layout(patches.shape[0], patches.device)
        all_patches = gather_with_grad(patches, layout)
        window = image_window(layout.offset, layout.local_size, layout.global_size, negatives, patches.device)
        candidates = all_patches[window]  # [B, J, P, D]
        weights = alignment_weights(torch.einsum("bld,bjpd->bljp", tokens, candidates), threshold)
        grouped = F.normalize(torch.einsum("bljp,bjpd->bljd", weights, candidates), dim=-1)
        logits = scale * torch.einsum("bld,bljd->blj", tokens, grouped)
        per_token = torch.logsumexp(logits, dim=-1) - logits[..., 0]
        return _global_token_mean(per_token, valid)
