"""STA against the per-sample, per-token loop reference of method.md's six steps, in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import alignment_weights, sta_image_loss, sta_loss, sta_terms
from pipeline.losses.reference import sta_image_loop_reference, sta_loop_reference
from pipeline.losses.sta import image_window

B, L, P, D = 4, 7, 9, 16


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


@pytest.fixture()
def batch():
    """Patch/token embeddings and a mask with a full sample, partial ones and an empty one."""
    g = torch.Generator().manual_seed(1)
    patches = unit(torch.randn(B, P, D, generator=g, dtype=torch.float64)).requires_grad_()
    tokens = unit(torch.randn(B, L, D, generator=g, dtype=torch.float64)).requires_grad_()
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, [0, 3, 6]] = False
    mask[3] = False  # an empty report after masking
    scale = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)
    return patches, tokens, mask, scale


@pytest.mark.parametrize("threshold", [None, 0.35])
def test_matches_loop_reference_loss_weights_and_grads(batch, threshold):
    patches, tokens, mask, scale = batch
    loss, weights = sta_loss(patches, tokens, mask, scale, threshold=threshold)
    ref, ref_weights = sta_loop_reference(patches, tokens, mask, scale, threshold=threshold)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(weights.detach(), ref_weights, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(loss, (patches, tokens, scale))
    ref_grads = torch.autograd.grad(ref, (patches, tokens, scale))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-11)


def test_weights_are_sparse_renormalised_and_zero_for_invalid_tokens(batch):
    patches, tokens, mask, scale = batch
    terms = sta_terms(patches, tokens, mask, scale)
    a = terms.weights.detach()
    sums = a.sum(-1)
    torch.testing.assert_close(sums[mask], torch.ones_like(sums[mask]))
    assert (a[~mask] == 0).all()
    assert ((a[mask] == 0).sum(-1) > 0).all(), "every token drops at least its least similar patch"
    assert terms.sparsity.item() == pytest.approx(((a > 0).sum() / (mask.sum() * P)).item())
    assert 0 < terms.sparsity.item() < 1


def test_padding_tokens_change_nothing(batch):
    patches, tokens, mask, scale = batch
    loss, weights = sta_loss(patches, tokens, mask, scale)
    g = torch.Generator().manual_seed(2)
    junk = unit(torch.randn(B, 5, D, generator=g, dtype=torch.float64))
    padded_tokens = torch.cat([tokens, junk], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(B, 5, dtype=torch.bool)], dim=1)
    padded_loss, padded_weights = sta_loss(patches, padded_tokens, padded_mask, scale)
    torch.testing.assert_close(padded_loss, loss, rtol=0, atol=1e-13)
    torch.testing.assert_close(padded_weights[:, :L], weights, rtol=0, atol=1e-13)
    # changing what sits under the mask changes nothing either
    scrambled = tokens.detach().clone()
    scrambled[~mask] = unit(torch.randn(int((~mask).sum()), D, generator=g, dtype=torch.float64))
    torch.testing.assert_close(sta_loss(patches, scrambled, mask, scale)[0], loss, rtol=0, atol=1e-13)


def test_all_equal_similarities_give_uniform_weights_and_finite_grads():
    patches = unit(torch.ones(2, P, D, dtype=torch.float64)).requires_grad_()  # every patch alike
    tokens = unit(torch.randn(2, L, D, dtype=torch.float64)).requires_grad_()
    mask = torch.ones(2, L, dtype=torch.bool)
    loss, weights = sta_loss(patches, tokens, mask, 10.0)
    torch.testing.assert_close(weights, torch.full_like(weights, 1.0 / P))
    grads = torch.autograd.grad(loss, (patches, tokens))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    ref, _ = sta_loop_reference(patches, tokens, mask, 10.0)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-12)


def test_all_reports_empty_or_single_token(batch):
    patches, tokens, _, scale = batch
    empty = torch.zeros(B, L, dtype=torch.bool)
    loss, weights = sta_loss(patches, tokens, empty, scale)
    assert loss.item() == 0.0 and (weights == 0).all()
    grads = torch.autograd.grad(loss, (patches, tokens))
    assert all(torch.isfinite(g).all() for g in grads)
    one = torch.zeros(B, L, dtype=torch.bool)
    one[:, 2] = True  # a single token has nothing to contrast with: loss 0
    assert sta_loss(patches, tokens, one, scale)[0].item() == pytest.approx(0.0, abs=1e-12)
    single = sta_loss(patches[:1], tokens[:1], torch.ones(1, L, dtype=torch.bool), scale)[0]  # batch of one
    assert torch.isfinite(single) and single.item() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_finite(batch, dtype):
    patches, tokens, mask, _ = batch
    patches_h = patches.detach().to(dtype).requires_grad_()
    tokens_h = tokens.detach().to(dtype).requires_grad_()
    loss, weights = sta_loss(patches_h, tokens_h, mask, torch.tensor(100.0, dtype=dtype))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(weights).all()
    assert torch.isfinite(patches_h.grad).all() and torch.isfinite(tokens_h.grad).all()


def test_alignment_weights_threshold_default_is_one_over_p():
    s = torch.tensor([[0.0, 0.01, 0.5, 1.0]], dtype=torch.float64)  # normalised: 0, 0.01, 0.5, 1
    a = alignment_weights(s, None)  # σ = 1/4 keeps 0.5 and 1
    torch.testing.assert_close(a, torch.tensor([[0.0, 0.0, 0.5, 1.0]], dtype=torch.float64) / 1.5, rtol=0, atol=1e-6)


def test_shape_errors_are_clear(batch):
    patches, tokens, mask, scale = batch
    with pytest.raises(ValueError, match="token_mask"):
        sta_loss(patches, tokens, mask[:, :3], scale)


@pytest.mark.parametrize(("negatives", "threshold"), [(1, None), (2, 0.35), (3, None), (50, None)])
def test_image_term_matches_loop_reference_loss_and_grads(batch, negatives, threshold):
    patches, tokens, mask, scale = batch
    loss = sta_image_loss(patches, tokens, mask, scale, negatives=negatives, threshold=threshold)
    ref = sta_image_loop_reference(patches, tokens, mask, scale, negatives=negatives, threshold=threshold)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(loss, (patches, tokens, scale))
    ref_grads = torch.autograd.grad(ref, (patches, tokens, scale))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-11)
    assert patches.grad is None and grads[0][1:3].abs().sum() > 0, "other images get gradient"


def test_image_term_window_is_cyclic_and_capped_at_the_batch():
    torch.testing.assert_close(image_window(2, 2, 4, 2, torch.device("cpu")), torch.tensor([[2, 3, 0], [3, 0, 1]]))
    assert image_window(0, 3, 3, 99, torch.device("cpu")).shape == (3, 3)  # K' = N - 1
    assert image_window(0, 1, 1, 5, torch.device("cpu")).tolist() == [[0]]


def test_image_term_is_blind_to_content_free_slots():
    """Identical images give every candidate the same grouping: the loss is log(K+1), whatever the tokens."""
    g = torch.Generator().manual_seed(3)
    image = unit(torch.randn(1, P, D, generator=g, dtype=torch.float64))
    patches = image.expand(B, P, D).clone().requires_grad_()
    tokens = unit(torch.randn(B, L, D, generator=g, dtype=torch.float64))
    loss = sta_image_loss(patches, tokens, torch.ones(B, L, dtype=torch.bool), 30.0, negatives=3)
    assert loss.item() == pytest.approx(math.log(4.0), abs=1e-12)
    # ... while images that each hold their own token's direction in one patch win their tokens
    distinct = patches.detach().clone()
    distinct[:, 0] = tokens[:, 0]
    own = sta_image_loss(distinct, tokens[:, :1], torch.ones(B, 1, dtype=torch.bool), 30.0, negatives=3)
    assert own.item() < 0.5 * loss.item()


def test_image_term_empty_reports_and_bad_negatives(batch):
    patches, tokens, _, scale = batch
    empty = sta_image_loss(patches, tokens, torch.zeros(B, L, dtype=torch.bool), scale, negatives=2)
    assert empty.item() == 0.0
    assert all(torch.isfinite(x).all() for x in torch.autograd.grad(empty, (patches, tokens)))
    single = sta_image_loss(patches[:1], tokens[:1], torch.ones(1, L, dtype=torch.bool), scale, negatives=4)
    assert single.item() == pytest.approx(0.0, abs=1e-12)  # a batch of one has no other image
    with pytest.raises(ValueError, match="negatives"):
        sta_image_loss(patches, tokens, torch.ones(B, L, dtype=torch.bool), scale, negatives=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_image_term_half_precision_is_finite(batch, dtype):
    patches, tokens, mask, _ = batch
    patches_h = patches.detach().to(dtype).requires_grad_()
    loss = sta_image_loss(patches_h, tokens.detach().to(dtype), mask, torch.tensor(100.0, dtype=dtype), negatives=3)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(patches_h.grad).all()
