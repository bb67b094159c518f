"""The objective from ``loss.terms``: presets as files, weighting and its exact order, diagnostics, centring EMA."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, apply_overrides, config_from_dict, load_yaml_tree
from pipeline.losses import (
    LossConfig,
    LossContext,
    LossInputs,
    build_objective,
    sia_loss,
    sta_image_loss,
    sta_loss,
)
from pipeline.losses.sia import sia_terms
from pipeline.losses.sta import sta_terms

B, P, L, D = 6, 5, 4, 8


@pytest.fixture()
def loss_cfg(repo_root):
    """``loss_cfg(preset, *overrides)``: the loss section of base.yaml with a preset and dotted overrides."""

    def make(preset: str = "sista", *overrides: str) -> LossConfig:
        tree, origins = load_yaml_tree(repo_root / "configs/pretrain/base.yaml")
        apply_overrides(tree, origins, [f"loss.preset={preset}", *overrides])
        return config_from_dict(LossConfig, tree["loss"], "base.yaml", section="loss")

    return make


@pytest.fixture()
def inputs():
    g = torch.Generator().manual_seed(5)
    unit = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    image = SimpleNamespace(
        global_emb=unit(torch.randn(B, D, generator=g, dtype=torch.float64)),
        patch_emb=unit(torch.randn(B, P, D, generator=g, dtype=torch.float64)),
    )
    text = SimpleNamespace(
        global_emb=unit(torch.randn(B, D, generator=g, dtype=torch.float64)),
        token_emb=unit(torch.randn(B, L, D, generator=g, dtype=torch.float64)),
        token_mask=torch.ones(B, L, dtype=torch.bool),
    )
    report = torch.randn(B, 16, generator=g, dtype=torch.float64)
    report[3] = report[0]  # a duplicate report: one false negative pair
    scales = {"sia": torch.tensor(14.0, dtype=torch.float64), "sta": torch.tensor(20.0, dtype=torch.float64)}
    return LossInputs(image, text, scales, report_emb=report)


def test_presets_switch_terms(loss_cfg, inputs):
    image, text, scales, report = inputs.image, inputs.text, inputs.logit_scales, inputs.report_emb
    plain = sia_loss(image.global_emb, text.global_emb, scales["sia"], mode="none")
    sia = sia_loss(image.global_emb, text.global_emb, scales["sia"], report, mode="eliminate", threshold=0.9)
    sta, _ = sta_loss(image.patch_emb, text.token_emb, text.token_mask, scales["sta"])
    assert not torch.allclose(plain, sia)
    expected = {"clip": ("infonce", plain, 0.0), "sia_only": ("sia", sia, 0.0), "sta_only": ("infonce", plain, sta),
                "sista": ("sia", sia, sta)}
    for preset, (name, global_term, token_term) in expected.items():
        objective = build_objective(loss_cfg(preset))
        out = objective(inputs)
        torch.testing.assert_close(out.scalars[f"{name}/loss"], global_term)
        torch.testing.assert_close(out.loss, global_term + token_term)
        has_sta = preset in ("sta_only", "sista")
        assert ("sta_token/weights" in out.maps) == has_sta and ("sta/loss" in out.scalars) == has_sta
        assert objective.needs_token_features == has_sta
        assert objective.needs == ({"report_emb"} if name == "sia" else set())


def test_weights_and_diagnostics(loss_cfg, inputs):
    out = build_objective(loss_cfg("sista", "loss.weights={sia: 2.0, sta: 0.25}"))(inputs)
    s = out.scalars
    torch.testing.assert_close(out.loss, 2.0 * s["sia/loss"] + 0.25 * s["sta/loss"])
    assert s["sia/fn_eliminated_per_row"].item() == pytest.approx(2 / B)  # rows 0 and 3 lose each other
    assert s["sia/fn_eliminated_fraction"].item() == pytest.approx(2 / B / (B - 1))
    assert out.maps["sta_token/weights"].shape == (B, L, P) and not out.maps["sta_token/weights"].requires_grad
    assert 0 < s["sta_token/sparsity"].item() < 1
    assert s["temperature/sia"].item() == pytest.approx(1 / 14)
    assert s["temperature/sta"].item() == pytest.approx(1 / 20)


def test_total_keeps_the_exact_order_of_additions(loss_cfg, inputs):
    """total = w_sia·sia + w_sta·(sta_token + w_img·sta_image), bit for bit (the pre-redesign arithmetic)."""
    cfg = loss_cfg("sista", "loss.weights={sia: 0.7, sta: 1.3, sta_image: 0.3}", "loss.options.sta_image.negatives=3",
                   "loss.options.sia.centering=false")
    out = build_objective(cfg)(inputs)
    image, text, scales = inputs.image, inputs.text, inputs.logit_scales
    sia = sia_terms(image.global_emb, text.global_emb, scales["sia"], inputs.report_emb, mode="eliminate",
                    threshold=0.9, similarity_source="precomputed", soft_temperature=0.05,
                    soft_identity_weight=0.5).loss
    token = sta_terms(image.patch_emb, text.token_emb, text.token_mask, scales["sta"]).loss
    cross = sta_image_loss(image.patch_emb, text.token_emb, text.token_mask, scales["sta"], negatives=3)
    assert torch.equal(out.loss, 0.7 * sia + 1.3 * (token + 0.3 * cross))


def test_cross_image_term_is_one_switch_inside_sta(loss_cfg, inputs):
    image, text, scales = inputs.image, inputs.text, inputs.logit_scales
    assert loss_cfg().options["sta_image"]["negatives"] == 0  # off by default (SPARC's within-sample contrast only)
    off = build_objective(loss_cfg("sta_only"))(inputs).scalars
    assert "sta_image/loss" not in off and torch.equal(off["sta/loss"], off["sta_token/loss"])
    cfg = loss_cfg("sta_only", "loss.options.sta_image.negatives=3", "loss.weights.sta_image=0.5")
    out = build_objective(cfg)(inputs)
    expected = sta_image_loss(image.patch_emb, text.token_emb, text.token_mask, scales["sta"], negatives=3)
    torch.testing.assert_close(out.scalars["sta_image/loss"], expected)
    torch.testing.assert_close(out.scalars["sta_token/loss"], off["sta_token/loss"])
    torch.testing.assert_close(out.scalars["sta/loss"], off["sta_token/loss"] + 0.5 * expected)
    torch.testing.assert_close(out.loss, out.scalars["infonce/loss"] + out.scalars["sta/loss"])
    clip = build_objective(loss_cfg("clip", "loss.options.sta_image.negatives=3"))(inputs).scalars
    assert "sta_image/loss" not in clip and "sta/loss" not in clip  # STA off switches it off too


def test_zero_weight_switches_a_term_off(loss_cfg, inputs):
    """λ_STA = 0 removes STA (not computed, token parameters frozen), as before the redesign."""
    objective = build_objective(loss_cfg("sista", "loss.weights.sta=0"))
    assert not objective.needs_token_features and "sta/loss" not in objective(inputs).scalars


@pytest.mark.parametrize(("bad", "match"), [
    ("loss.options.sta_image.negatives=-1", "sta_image.negatives"),
    ("loss.options.sta_image.negatives=2.5", "negatives"),
    ("loss.weights.sta_image=-0.1", "loss.weights.sta_image"),
    ("loss.options.sia.kappa=0.8", "unknown key 'kappa'"),
    ("loss.options.siaa.threshold=0.8", "not loss terms"),
    ("loss.terms=[{term: sia, weight: 1.0}, {term: stta, weight: 1.0}]", "unknown loss term 'stta'"),
    ("loss.terms=[{term: sia, weight: 1.0}, {term: sia, weight: 1.0}]", "appear twice"),
])
def test_loss_options_are_checked(loss_cfg, bad, match):
    with pytest.raises(ConfigError, match=match):
        loss_cfg("sista", bad)


def test_centering_auto_and_ema(loss_cfg, inputs):
    sia = lambda cfg, **ctx: build_objective(cfg, LossContext(**ctx)).find("sia")  # noqa: E731
    assert not sia(loss_cfg(), report_pooling="mean").centering
    assert sia(loss_cfg(), report_pooling="cls").centering
    assert not sia(loss_cfg("sista", "loss.options.sia.similarity_source=labels"), report_pooling="cls").centering
    online = loss_cfg("sista", "loss.options.sia.similarity_source=online")
    assert sia(online, report_pooling="mean", text_pooling="cls").centering
    assert not sia(online, report_pooling="cls", text_pooling="mean").centering
    loss = build_objective(loss_cfg("sista", "loss.options.sia.centering=true",
                                    "loss.options.sia.centering_momentum=0.5"))
    report = inputs.report_emb
    unit = F.normalize(report, dim=-1)
    r = unit @ unit.T
    batch_mean = (r.sum() - r.diagonal().sum()) / (B * B - B)

    def offset(emb):
        step = LossInputs(inputs.image, inputs.text, inputs.logit_scales, report_emb=emb)
        return loss(step).scalars["sia/center_offset"]

    first = offset(report)
    assert first.item() == pytest.approx(batch_mean.item())
    second = offset(-report)  # same off-diagonal mean
    assert second.item() == pytest.approx(batch_mean.item())
    shifted = report + 3.0  # a batch whose reports all look alike moves the EMA half-way
    unit = F.normalize(shifted, dim=-1)
    r2 = unit @ unit.T
    mean2 = (r2.sum() - r2.diagonal().sum()) / (B * B - B)
    third = offset(shifted)
    assert third.item() == pytest.approx(0.5 * batch_mean.item() + 0.5 * mean2.item())
    loss.eval()
    frozen = offset(report)
    assert frozen.item() == pytest.approx(third.item())


def test_warns_when_too_many_columns_are_eliminated(loss_cfg, inputs, caplog):
    same = LossInputs(inputs.image, inputs.text, inputs.logit_scales, report_emb=torch.ones(B, 16, dtype=torch.float64))
    with caplog.at_level(logging.WARNING):
        out = build_objective(loss_cfg())(same)
    assert out.scalars["sia/fn_eliminated_fraction"].item() == pytest.approx(1.0)
    assert "warn_eliminated_fraction" in caplog.text


def test_precomputed_source_without_embeddings_is_a_clear_error(loss_cfg, inputs):
    bare = LossInputs(inputs.image, inputs.text, inputs.logit_scales)
    with pytest.raises(ValueError, match="similarity_source"):
        build_objective(loss_cfg())(bare)


def test_scalar_keys_are_the_same_every_step(loss_cfg, inputs):
    objective = build_objective(loss_cfg("sista", "loss.options.sta_image.negatives=2"))
    keys = [sorted(objective(inputs).scalars) for _ in range(2)]
    assert keys[0] == keys[1] == sorted([
        "sia/loss", "sia/fn_eliminated_per_row", "sia/fn_eliminated_fraction", "sia/center_offset", "sta/loss",
        "sta_token/loss", "sta_token/sparsity", "sta_image/loss", "temperature/sia", "temperature/sta"])
