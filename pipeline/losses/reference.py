"""Slow loop references of SIA and STA, written straight from docs/method.md (tests and bench only).

Plain Python loops over rows, samples and tokens; no masking tricks. One process, whole batch.
"""

from __future__ import annotations

import torch


def sia_loop_reference(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: float | torch.Tensor,
    similarity: torch.Tensor | None,
    *,
    mode: str,
    threshold: float,
    soft_temperature: float | None = None,
    soft_identity_weight: float | None = None,
) -> torch.Tensor:
    """Symmetric SIA over the whole batch, row by row; ``similarity`` is R (N × N, already centred)."""
    n = image_emb.shape[0]
    logits_i2t = logit_scale * image_emb @ text_emb.T
    logits_t2i = logit_scale * text_emb @ image_emb.T

    def row_loss(row: torch.Tensor, i: int) -> torch.Tensor:
        if mode == "none":
            return torch.logsumexp(row, 0) - row[i]
        fn = [j for j in range(n) if j != i and similarity[i, j] >= threshold]
        if mode == "eliminate":
            kept = [j for j in range(n) if j not in fn]
            return torch.logsumexp(row[kept], 0) - row[i]
        if mode == "multi_positive":
            positives = [i, *fn]
            negatives = [j for j in range(n) if j not in positives]
            terms = []
            for q in positives:
                denominator = torch.logsumexp(row[[q, *negatives]], 0)
                terms.append(denominator - row[q])
            return sum(terms) / len(terms)
        if mode == "soft":
            soft = torch.softmax(similarity[i] / soft_temperature, 0)
            log_p = row - torch.logsumexp(row, 0)
            total = 0.0
            for j in range(n):
                target = soft_identity_weight * (1.0 if j == i else 0.0) + (1 - soft_identity_weight) * soft[j]
                total = total - target * log_p[j]
            return total
        raise ValueError(mode)

    i2t = sum(row_loss(logits_i2t[i], i) for i in range(n)) / n
    t2i = sum(row_loss(logits_t2i[i], i) for i in range(n)) / n
    return (i2t + t2i) / 2


def _group_loop(v: torch.Tensor, t: torch.Tensor, sigma: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """STA steps 1-5 for one token ``t`` over one image's patches ``v``: (weights a [P], normalised c)."""
    patches = v.shape[0]
    s = v @ t  # step 1
    s_hat = (s - s.min()) / (s.max() - s.min() + eps)  # step 2
    s_tilde = torch.stack([x if x >= sigma else x * 0 for x in s_hat])  # step 3
    if float(s_tilde.sum().detach()) > 0:
        a = s_tilde / s_tilde.sum()  # step 4
    else:
        a = torch.full_like(s_tilde, 1.0 / patches)
    c = sum(a[p] * v[p] for p in range(patches))  # step 5
    return a, c / c.norm().clamp(min=1e-12)


def sta_loop_reference(
    patch_emb: torch.Tensor,
    token_emb: torch.Tensor,
    token_mask: torch.Tensor,
    logit_scale: float | torch.Tensor,
    *,
    threshold: float | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """STA sample by sample, token by token (method.md's six steps); returns (loss, a [B, L, P])."""
    batch, length, _ = token_emb.shape
    patches = patch_emb.shape[1]
    sigma = 1.0 / patches if threshold is None else threshold
    weights_out = torch.zeros(batch, length, patches, dtype=patch_emb.dtype)
    sample_losses = []
    for b in range(batch):
        valid = [tok for tok in range(length) if bool(token_mask[b, tok])]
        if not valid:
            continue
        grouped = {}
        for tok in valid:
            a, grouped[tok] = _group_loop(patch_emb[b], token_emb[b, tok], sigma, eps)
            weights_out[b, tok] = a.detach()
        token_terms = []
        for tok in valid:  # step 6
            t_l, c_l = token_emb[b, tok], grouped[tok]
            c_to_t = torch.stack([logit_scale * (c_l @ token_emb[b, k]) for k in valid])
            t_to_c = torch.stack([logit_scale * (t_l @ grouped[k]) for k in valid])
            own = valid.index(tok)
            ce_c = torch.logsumexp(c_to_t, 0) - c_to_t[own]
            ce_t = torch.logsumexp(t_to_c, 0) - t_to_c[own]
            token_terms.append((ce_c + ce_t) / 2)
        sample_losses.append(sum(token_terms) / len(token_terms))
    if not sample_losses:
        return patch_emb.sum() * 0, weights_out
    return sum(sample_losses) / len(sample_losses), weights_out


def sta_image_loop_reference(
    patch_emb: torch.Tensor,
    token_emb: torch.Tensor,
    token_mask: torch.Tensor,
    logit_scale: float | torch.Tensor,
    *,
    negatives: int,
    threshold: float | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The cross-image STA term sample by sample, token by token, candidate image by candidate image."""
    batch, length, _ = token_emb.shape
    sigma = 1.0 / patch_emb.shape[1] if threshold is None else threshold
    window = min(negatives, batch - 1)
    sample_losses = []
    for b in range(batch):
        valid = [tok for tok in range(length) if bool(token_mask[b, tok])]
        if not valid:
            continue
        token_terms = []
        for tok in valid:
            t_l = token_emb[b, tok]
            logits = []
            for step in range(window + 1):  # own image first, then the next ones, wrapping around
                _, c = _group_loop(patch_emb[(b + step) % batch], t_l, sigma, eps)
                logits.append(logit_scale * (t_l @ c))
            logits = torch.stack(logits)
            token_terms.append(torch.logsumexp(logits, 0) - logits[0])
        sample_losses.append(sum(token_terms) / len(token_terms))
    if not sample_losses:
        return patch_emb.sum() * 0
    return sum(sample_losses) / len(sample_losses)


__all__ = ["sia_loop_reference", "sta_image_loop_reference", "sta_loop_reference"]
