"""SistaLoss: presets as one switch, weighting, diagnostics, centring EMA, the elimination warning."""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import config_from_dict, load_yaml_tree
from pipeline.losses import LossConfig, SistaLoss, StaConfig, sia_loss, sta_image_loss, sta_loss

B, P, L, D = 6, 5, 4, 8


@pytest.fixture()
def base_cfg(repo_root) -> LossConfig:
    tree, _ = load_yaml_tree(repo_root / "configs/pretrain/base.yaml")
    return config_from_dict(LossConfig, tree["loss"], "base.yaml")


def with_preset(cfg: LossConfig, preset: str, **sia) -> LossConfig:
    return dataclasses.replace(cfg, preset=preset, sia=dataclasses.replace(cfg.sia, **sia))


@pytest.fixture()
def features():
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
    return image, text, report, scales


def test_presets_switch_terms(base_cfg, features):
    image, text, report, scales = features
    plain = sia_loss(image.global_emb, text.global_emb, scales["sia"], mode="none")
    sia = sia_loss(image.global_emb, text.global_emb, scales["sia"], report, mode="eliminate", threshold=0.9)
    sta, _ = sta_loss(image.patch_emb, text.token_emb, text.token_mask, scales["sta"])
    assert not torch.allclose(plain, sia)
    expected = {"clip": (plain, 0.0), "sia_only": (sia, 0.0), "sta_only": (plain, sta), "sista": (sia, sta)}
    for preset, (global_term, token_term) in expected.items():
        out = SistaLoss(with_preset(base_cfg, preset))(image, text, scales, report_emb=report)
        torch.testing.assert_close(out["sia_loss"], global_term)
        torch.testing.assert_close(out["loss"], global_term + token_term)
        assert ("sta_weights" in out) == (preset in ("sta_only", "sista"))


def test_weights_and_diagnostics(base_cfg, features):
    image, text, report, scales = features
    cfg = dataclasses.replace(base_cfg, weights=dataclasses.replace(base_cfg.weights, sia=2.0, sta=0.25))
    out = SistaLoss(cfg)(image, text, scales, report_emb=report)
    torch.testing.assert_close(out["loss"], 2.0 * out["sia_loss"] + 0.25 * out["sta_loss"])
    assert out["fn_eliminated_per_row"].item() == pytest.approx(2 / B)  # rows 0 and 3 lose each other
    assert out["fn_eliminated_fraction"].item() == pytest.approx(2 / B / (B - 1))
    assert out["sta_weights"].shape == (B, L, P) and not out["sta_weights"].requires_grad
    assert 0 < out["sta_sparsity"].item() < 1
    assert out["temperature_sia"].item() == pytest.approx(1 / 14)
    assert out["temperature_sta"].item() == pytest.approx(1 / 20)


def test_cross_image_term_is_one_switch_inside_sta(base_cfg, features):
    image, text, report, scales = features
    assert base_cfg.sta.image_negatives == 0  # off by default (SPARC's within-sample contrast only)
    off = SistaLoss(with_preset(base_cfg, "sta_only"))(image, text, scales, report_emb=report)
    assert "sta_image_loss" not in off and torch.equal(off["sta_loss"], off["sta_token_loss"])
    sta = dataclasses.replace(base_cfg.sta, image_negatives=3, image_negatives_weight=0.5)
    cfg = dataclasses.replace(with_preset(base_cfg, "sta_only"), sta=sta)
    out = SistaLoss(cfg)(image, text, scales, report_emb=report)
    expected = sta_image_loss(image.patch_emb, text.token_emb, text.token_mask, scales["sta"], negatives=3)
    torch.testing.assert_close(out["sta_image_loss"], expected)
    torch.testing.assert_close(out["sta_token_loss"], off["sta_token_loss"])
    torch.testing.assert_close(out["sta_loss"], off["sta_token_loss"] + 0.5 * expected)
    torch.testing.assert_close(out["loss"], out["sia_loss"] + out["sta_loss"])
    clip = SistaLoss(dataclasses.replace(cfg, preset="clip"))(image, text, scales, report_emb=report)
    assert "sta_image_loss" not in clip and clip["sta_loss"].item() == 0.0  # STA off switches it off too


@pytest.mark.parametrize("bad", [{"image_negatives": -1}, {"image_negatives": 2.5}, {"image_negatives_weight": -0.1}])
def test_cross_image_options_are_checked(bad):
    with pytest.raises(ValueError, match="sta.image_negatives"):
        StaConfig(token_unit="subword", **bad)


def test_centering_auto_and_ema(base_cfg, features):
    image, text, report, scales = features
    assert not SistaLoss(base_cfg, report_pooling="mean").centering
    assert SistaLoss(base_cfg, report_pooling="cls").centering
    assert not SistaLoss(with_preset(base_cfg, "sista", similarity_source="labels"), report_pooling="cls").centering
    loss = SistaLoss(with_preset(base_cfg, "sista", centering=True, centering_momentum=0.5))
    unit = F.normalize(report, dim=-1)
    r = unit @ unit.T
    batch_mean = (r.sum() - r.diagonal().sum()) / (B * B - B)
    first = loss(image, text, scales, report_emb=report)["sia_center_offset"]
    assert first.item() == pytest.approx(batch_mean.item())
    second = loss(image, text, scales, report_emb=-report)["sia_center_offset"]  # same off-diagonal mean
    assert second.item() == pytest.approx(batch_mean.item())
    shifted = report + 3.0  # a batch whose reports all look alike moves the EMA half-way
    unit = F.normalize(shifted, dim=-1)
    r2 = unit @ unit.T
    mean2 = (r2.sum() - r2.diagonal().sum()) / (B * B - B)
    third = loss(image, text, scales, report_emb=shifted)["sia_center_offset"]
    assert third.item() == pytest.approx(0.5 * batch_mean.item() + 0.5 * mean2.item())
    loss.eval()
    frozen = loss(image, text, scales, report_emb=report)["sia_center_offset"]
    assert frozen.item() == pytest.approx(third.item())


def test_warns_when_too_many_columns_are_eliminated(base_cfg, features, caplog):
    image, text, _, scales = features
    same = torch.ones(B, 16, dtype=torch.float64)  # every report identical
    with caplog.at_level(logging.WARNING):
        out = SistaLoss(base_cfg)(image, text, scales, report_emb=same)
    assert out["fn_eliminated_fraction"].item() == pytest.approx(1.0)
    assert "warn_eliminated_fraction" in caplog.text


def test_precomputed_source_without_embeddings_is_a_clear_error(base_cfg, features):
    image, text, _, scales = features
    with pytest.raises(ValueError, match="similarity_source"):
        SistaLoss(base_cfg)(image, text, scales)
