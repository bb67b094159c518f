"""SIA against a plain InfoNCE written here and against the slow loop reference, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import label_vectors, sia_loss, sia_terms
from pipeline.losses.reference import sia_loop_reference
from pipeline.losses.sia import center_similarity

N, D = 12, 16


def plain_symmetric_info_nce(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Standard CLIP loss (open_clip's formula): mean of the two cross-entropies."""
    logits_per_image = scale * image @ text.T
    logits_per_text = scale * text @ image.T
    labels = torch.arange(image.shape[0])
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


@pytest.fixture()
def batch():
    """Embeddings, reports built from 3 prototypes (so many pairs are near-duplicates), labels."""
    g = torch.Generator().manual_seed(0)
    image = unit(torch.randn(N, D, generator=g, dtype=torch.float64)).requires_grad_()
    text = unit(torch.randn(N, D, generator=g, dtype=torch.float64)).requires_grad_()
    protos = torch.randn(3, 8, generator=g, dtype=torch.float64)
    which = torch.arange(N) % 3
    report = protos[which] + 0.05 * torch.randn(N, 8, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0, -1.0, float("nan")], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])[which]
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    return image, text, report, labels, scale


def cosine(x: torch.Tensor) -> torch.Tensor:
    u = unit(x.double())
    return u @ u.T


SOFT = {"soft_temperature": 0.05, "soft_identity_weight": 0.3}


@pytest.mark.parametrize(
    ("mode", "threshold", "options"),
    [
        ("eliminate", 1.5, {}),
        ("soft", 0.9, {"soft_temperature": 0.05, "soft_identity_weight": 1.0}),
        ("none", 0.9, {}),
    ],
)
def test_nothing_eliminated_is_plain_info_nce_bit_for_bit(batch, mode, threshold, options):
    image, text, report, _, scale = batch
    ours = sia_loss(image, text, scale, report, mode=mode, threshold=threshold, **options)
    assert torch.equal(ours, plain_symmetric_info_nce(image, text, scale))


def test_multi_positive_without_extra_positives_is_info_nce(batch):
    image, text, report, _, scale = batch
    ours = sia_loss(image, text, scale, report, mode="multi_positive", threshold=1.5)
    torch.testing.assert_close(ours, plain_symmetric_info_nce(image, text, scale), rtol=0, atol=1e-13)


@pytest.mark.parametrize("mode", ["eliminate", "multi_positive", "soft"])
@pytest.mark.parametrize("source", ["precomputed", "online", "labels"])
def test_every_mode_and_source_matches_loop_reference(batch, mode, source):
    image, text, report, labels, scale = batch
    similarity = {
        "precomputed": cosine(report),
        "online": cosine(text.detach()),
        "labels": cosine(label_vectors(labels)),
    }[source]
    threshold = 0.9 if source != "online" else 0.2
    eliminated = ((similarity >= threshold).sum() - N).item()
    assert eliminated > 0, "the case must eliminate something to test anything"
    terms = sia_terms(
        image, text, scale, report, labels, mode=mode, threshold=threshold, similarity_source=source, **SOFT
    )
    ours = terms.loss
    ref = sia_loop_reference(image, text, scale, similarity, mode=mode, threshold=threshold, **SOFT)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(ours, (image, text, scale))
    ref_grads = torch.autograd.grad(ref, (image, text, scale))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)
    assert terms.eliminated_per_row.item() == pytest.approx(eliminated / N)


def test_elimination_changes_the_loss(batch):
    image, text, report, _, scale = batch
    plain = plain_symmetric_info_nce(image, text, scale)
    for mode in ("eliminate", "multi_positive", "soft"):
        assert not torch.allclose(sia_loss(image, text, scale, report, mode=mode, threshold=0.9, **SOFT), plain)


@pytest.mark.parametrize("mode", ["eliminate", "multi_positive", "soft"])
def test_fixed_centering_offset_matches_reference_on_centred_similarity(batch, mode):
    image, text, report, _, scale = batch
    offset = 0.4
    similarity = cosine(report)
    centred = torch.where(torch.eye(N, dtype=torch.bool), similarity, center_similarity(similarity, offset))
    ours = sia_loss(image, text, scale, report, mode=mode, threshold=0.9, center=offset, **SOFT)
    ref = sia_loop_reference(image, text, scale, centred, mode=mode, threshold=0.9, **SOFT)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_centering_callable_receives_the_off_diagonal_mean(batch):
    image, text, report, _, scale = batch
    seen = []
    sia_loss(image, text, scale, report, mode="eliminate", threshold=0.9, center=lambda m: seen.append(m) or m)
    similarity = cosine(report)
    expected = (similarity.sum() - similarity.diagonal().sum()) / (N * N - N)
    torch.testing.assert_close(seen[0], expected)


@pytest.mark.parametrize("mode", ["eliminate", "multi_positive", "soft", "none"])
def test_degenerate_batches_give_finite_loss_and_grads(mode):
    # all-equal similarities: identical embeddings and identical reports (every column a false negative)
    image = unit(torch.ones(4, D, dtype=torch.float64)).requires_grad_()
    text = unit(torch.ones(4, D, dtype=torch.float64)).requires_grad_()
    report = torch.ones(4, 8, dtype=torch.float64)
    loss = sia_loss(image, text, 10.0, report, mode=mode, threshold=0.9, **SOFT)
    grads = torch.autograd.grad(loss, (image, text))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    if mode in ("eliminate", "multi_positive"):
        assert loss.item() == pytest.approx(0.0, abs=1e-12)  # nothing left to contrast against
    # a batch of one: a single column, loss 0
    one = sia_loss(image[:1], text[:1], 10.0, report[:1], mode=mode, threshold=0.9, **SOFT)
    assert one.item() == pytest.approx(0.0, abs=1e-12)
    # a zero report embedding (empty report) is never a false negative
    report0 = torch.zeros(4, 8, dtype=torch.float64)
    terms = sia_terms(image, text, 10.0, report0, mode=mode, threshold=0.9, **SOFT)
    assert torch.isfinite(terms.loss) and terms.eliminated_per_row.item() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["eliminate", "multi_positive", "soft"])
def test_half_precision_inputs_are_finite(batch, dtype, mode):
    image, text, report, _, _ = batch
    image_h = image.detach().to(dtype).requires_grad_()
    text_h = text.detach().to(dtype).requires_grad_()
    scale = torch.tensor(100.0, dtype=dtype)  # the largest allowed multiplier
    loss = sia_loss(image_h, text_h, scale, report.to(dtype), mode=mode, threshold=0.9, **SOFT)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(image_h.grad).all() and torch.isfinite(text_h.grad).all()
    full = sia_loss(image.detach().float(), text.detach().float(), 100.0, report.float(), mode=mode, threshold=0.9, **SOFT)
    torch.testing.assert_close(loss, full, rtol=0.05, atol=0.05)


def test_missing_inputs_are_named(batch):
    image, text, _, _, scale = batch
    with pytest.raises(ValueError, match="report_emb"):
        sia_loss(image, text, scale, mode="eliminate", similarity_source="precomputed")
    with pytest.raises(ValueError, match="labels"):
        sia_loss(image, text, scale, mode="eliminate", similarity_source="labels")
    with pytest.raises(ValueError, match="soft_temperature"):
        sia_loss(image, text, scale, mode="soft")
    with pytest.raises(ValueError, match="mode"):
        sia_loss(image, text, scale, mode="hard")


# --------------------------------------------------------------------------- the detector against the truth


def test_detector_scores_and_arms_on_a_hand_made_batch() -> None:
    from pipeline.data.findings import tfn_mask
    from pipeline.losses.fn_truth import detector_scores, random_like, soft_tfn_mass

    sig = torch.tensor([1, 1, 2, 2, 3])
    paired = torch.eye(5, dtype=torch.bool)
    truth = tfn_mask(sig, sig, paired)  # TFNs: (0,1), (1,0), (2,3), (3,2)
    predicted = torch.zeros(5, 5, dtype=torch.bool)
    predicted[0, 1] = predicted[0, 2] = predicted[4, 0] = True  # one hit, two false alarms
    scores = detector_scores(predicted, truth)
    assert scores["tfn_per_row"].item() == pytest.approx(4 / 5)
    assert scores["tfn_fraction"].item() == pytest.approx(4 / 5 / 4)
    assert scores["fn_precision"].item() == pytest.approx(1 / 3)
    assert scores["fn_recall"].item() == pytest.approx(1 / 4)
    assert torch.isnan(detector_scores(torch.zeros_like(truth), truth)["fn_precision"])
    soft = torch.full((5, 5), 0.1, dtype=torch.float64)
    soft[0, 1] = 0.3  # row 0 off-pair mass 0.6, 0.3 on its TFN; rows 1-3: 0.1 of 0.4; row 4: 0
    expected = (0.5 + 0.25 * 3 + 0.0) / 5
    assert soft_tfn_mass(soft, truth, paired).item() == pytest.approx(expected)
    drawn = random_like(predicted, paired, torch.Generator().manual_seed(0))
    assert torch.equal(drawn.sum(dim=-1), predicted.sum(dim=-1)) and not (drawn & paired).any()


def test_oracle_arm_eliminates_exactly_the_tfns() -> None:
    from pipeline.losses.registry import LossContext, LossInputs
    from pipeline.losses.terms.sia import SIA, SiaOptions

    torch.manual_seed(0)
    image, text = (torch.nn.functional.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1) for _ in range(2))
    reports = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    sig = torch.tensor([4, 4, 5, 6, 6, 6])
    feats = lambda e: type("F", (), {"global_emb": e})()  # noqa: E731
    base = dict(mode="eliminate", similarity_source="precomputed", threshold=2.0, soft_temperature=0.05,
                soft_identity_weight=0.5, centering=False, centering_momentum=0.9, warn_eliminated_fraction=1.0,
                random_seed=0)  # fmt: skip
    inputs = LossInputs(feats(image), feats(text), {"sia": torch.tensor(10.0, dtype=torch.float64)},
                        report_emb=reports, findings=sig)  # fmt: skip
    oracle = SIA(SiaOptions(**base, false_negatives="oracle"), LossContext())(inputs)
    assert oracle.scalars["fn_precision"].item() == 1.0 and oracle.scalars["fn_recall"].item() == 1.0
    assert oracle.scalars["fn_eliminated_per_row"].item() == pytest.approx(8 / 6)
    detector = SIA(SiaOptions(**base, false_negatives="detector"), LossContext())(inputs)
    assert detector.scalars["fn_eliminated_per_row"].item() == 0.0 and detector.scalars["fn_recall"].item() == 0.0
    assert oracle.loss.item() < detector.loss.item()
    plain = SIA(SiaOptions(**base, false_negatives="detector"), LossContext())(
        LossInputs(feats(image), feats(text), inputs.logit_scales, report_emb=reports))
    assert torch.equal(plain.loss, detector.loss) and "fn_precision" not in plain.scalars
