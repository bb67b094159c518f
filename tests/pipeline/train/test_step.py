"""Contrastive gradient accumulation: 2 micro-batches of 4 give the gradients of one batch of 8."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizerFast

from pipeline.config import load_config
from pipeline.data import Batch
from pipeline.losses import LossContext, LossInputs, build_objective
from pipeline.train.config import PretrainConfig
from pipeline.train.step import _rng_state, _set_rng_state, concat_features, contrastive_step

REPO = Path(__file__).resolve().parents[3]
WORDS = ["no", "acute", "effusion", "left", "right", "small", "large", "opacity", "heart", "normal"]


def _tokenizer() -> BertTokenizerFast:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return BertTokenizerFast(vocab=vocab)


def _setup(dropout: float, *overrides: str):
    """A float64 tiny model (ViT 32 px, 2-layer BERT), the SISTA loss and a batch of 8."""
    from pipeline.models import build_model

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        "model.image.img_size=32", "data.manifest=unused", "loss.options.sia.threshold=0.5",
        f"model.text.tiny.hidden_dropout_prob={dropout}", f"model.text.tiny.attention_probs_dropout_prob={dropout}",
        "model.text.tiny.vocab_size=16", "model.text.max_length=8", *overrides,
    ])
    tok = _tokenizer()
    torch.manual_seed(0)
    model = build_model(cfg.model, tok).double().train()
    gen = torch.Generator().manual_seed(1)
    texts = [" ".join(WORDS[j] for j in torch.randint(0, 10, (5,), generator=gen).tolist()) for _ in range(8)]
    enc = tok(texts, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    emb = F.normalize(torch.randn(8, 6, generator=gen, dtype=torch.float64), dim=-1)
    emb[1] = emb[0]  # a false negative for SIA to eliminate
    batch = Batch(keys=[f"k{i}" for i in range(8)], images=torch.randn(8, 1, 32, 32, generator=gen, dtype=torch.float64),
                  input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                  word_ids=torch.full((8, 8), -1), labels=torch.zeros(8, 14, dtype=torch.float64),
                  labels_known=torch.zeros(8, 14, dtype=torch.bool), report_emb=emb)
    loss = build_objective(cfg.loss, LossContext(report_pooling="mean"))

    def encode(b):
        return model.encode_image(b.images), model.encode_text(b.input_ids, b.attention_mask), model.logit_scales()

    return model, loss, encode, batch


def _split(batch, parts):
    size = len(batch) // parts
    return [batch.rows(i * size, (i + 1) * size) for i in range(parts)]


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(model, loss, encode, micro):
    model.zero_grad(set_to_none=True)
    out = contrastive_step(encode, loss, micro, lambda value: value.backward(), lambda value: (False, False))
    return out, _grads(model)


@pytest.mark.parametrize("image_negatives", [0, 5])
def test_two_micro_batches_of_four_equal_one_batch_of_eight(image_negatives):
    """Loss and every gradient (temperatures included, counted once) match in float64.

    With STA's cross-image term (K = 5) a token's negatives lie in the other micro-batch too.
    """
    model, loss, encode, batch = _setup(0.0, f"loss.options.sta_image.negatives={image_negatives}")
    full, g_full = _step(model, loss, encode, [batch])
    accum, g_accum = _step(model, loss, encode, _split(batch, 2))
    assert torch.allclose(full.loss, accum.loss, rtol=0, atol=1e-12)
    assert ("sta_image/loss" in full.scalars) == (image_negatives > 0)
    assert float(full.scalars["sia/fn_eliminated_per_row"]) > 0  # SIA really eliminated something
    assert set(g_full) == set(g_accum) and any("log_scale" in n for n in g_full)
    for name in g_full:
        torch.testing.assert_close(g_accum[name], g_full[name], rtol=1e-9, atol=1e-12, msg=name)


def test_recompute_replays_dropout():
    """With dropout on, the recompute draws the same masks as the cached pass (RNG replayed per micro-batch)."""
    model, loss, encode, batch = _setup(0.2)
    micro = _split(batch, 2)
    torch.manual_seed(5)
    _, g_accum = _step(model, loss, encode, micro)
    torch.manual_seed(5)
    model.zero_grad(set_to_none=True)
    feats = []
    for b in micro:  # reference: one graph, each micro-batch under the RNG state it had in the cached pass
        state = _rng_state()
        feats.append(encode(b))
        _set_rng_state(state)
        with torch.no_grad():
            encode(b)
    image = concat_features([f[0] for f in feats])
    text = concat_features([f[1] for f in feats])
    out = loss(LossInputs(image, text, feats[0][2], report_emb=batch.report_emb, labels=batch.labels))
    out.loss.backward()
    for name, grad in _grads(model).items():
        torch.testing.assert_close(g_accum[name], grad, rtol=1e-9, atol=1e-12, msg=name)


def test_non_finite_loss_skips_backward():
    """When the ranks agree to skip, no gradient is produced."""
    model, loss, encode, batch = _setup(0.0)
    model.zero_grad(set_to_none=True)
    calls = []
    out = contrastive_step(encode, loss, _split(batch, 2), calls.append, lambda value: (True, False))
    assert out.skipped and not calls and not _grads(model)


@pytest.mark.parametrize("lengths", [(5, 5), (3, 6)])
def test_concat_pads_token_features(lengths):
    """Token features of different lengths are padded (mask False) when concatenated."""
    from pipeline.models import TextFeatures

    parts = [TextFeatures(torch.ones(2, 4), torch.ones(2, n, 4), torch.ones(2, n, dtype=torch.bool)) for n in lengths]
    out = concat_features(parts)
    assert out.token_emb.shape == (4, max(lengths), 4) and int(out.token_mask.sum()) == 2 * sum(lengths)
    assert dataclasses.is_dataclass(out)


@pytest.mark.parametrize("parts", [1, 2])
def test_loss_hook_applies_to_every_evaluation(parts):
    """The step's loss hook (NaN injection) changes the reported loss and every loss it back-propagates."""
    model, loss, encode, batch = _setup(0.0)
    seen, backed = [], []

    def hook(value):
        seen.append(value.detach())
        return value * float("nan")

    out = contrastive_step(encode, loss, _split(batch, parts), lambda v: backed.append(v.detach()),
                           lambda v: (False, False), loss_hook=hook)
    assert torch.isnan(out.loss) and len(seen) == (1 if parts == 1 else 1 + parts)
    assert len(backed) == parts and all(torch.isnan(v) for v in backed)
    assert loss.training  # the recompute's eval mode is undone
