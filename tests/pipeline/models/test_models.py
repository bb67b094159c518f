"""Encoders, heads, token masks, word grouping, weights from local paths, export/load round trip."""

from __future__ import annotations

import pytest
import torch
from model_configs import make_config

from pipeline.models import build_model, build_tokenizer, load_exported
from pipeline.models.image_encoder import ImageEncoder
from pipeline.models.text_encoder import group_words

REPORTS = ["No acute cardiopulmonary process.", "Left lower lobe pneumonia with a small pleural effusion."]


def tokenise(tokenizer, texts=REPORTS):
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    word_ids = torch.tensor([[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))])
    return enc["input_ids"], enc["attention_mask"], word_ids


@pytest.fixture(scope="module")
def tiny(tiny_tree):
    cfg = make_config(tiny_tree)
    torch.manual_seed(0)
    return build_model(cfg).eval(), build_tokenizer(cfg)


def test_tiny_model_shapes_normalisation_and_token_mask(tiny):
    model, tokenizer = tiny
    ids, attention, _ = tokenise(tokenizer)
    with torch.no_grad():
        image, text = model(torch.randn(2, 1, 64, 64), ids, attention)
    assert image.global_emb.shape == (2, 32) and image.patch_emb.shape == (2, 16, 32) and image.grid_size == (4, 4)
    assert text.global_emb.shape == (2, 32) and text.token_emb.shape == (2, 24, 32)
    for emb in (image.global_emb, image.patch_emb, text.global_emb, text.token_emb):
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(emb.shape[:-1]))
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    assert torch.equal(text.token_mask, attention.bool() & ~special)
    assert not text.token_mask[:, 0].any()  # [CLS]
    scales = model.logit_scales()
    assert scales["sia"].item() == pytest.approx(1 / 0.07) and scales["sta"].item() == pytest.approx(1 / 0.07)


def test_word_units_sum_wordpieces(tiny):
    model, tokenizer = tiny
    ids, attention, word_ids = tokenise(tokenizer)
    hidden = model.text_encoder.backbone(input_ids=ids, attention_mask=attention).last_hidden_state.detach()
    mask = model.text_encoder(ids, attention)[2]
    grouped, word_mask = group_words(hidden, mask, word_ids)
    words = [len([w for w in set(row.tolist()) if w >= 0]) for row in word_ids]
    assert grouped.shape[1] == max(words) and word_mask.sum(1).tolist() == words
    for b in range(2):  # slow check: each word is the sum of its pieces
        for w in range(words[b]):
            torch.testing.assert_close(grouped[b, w], hidden[b][word_ids[b] == w].sum(0))
    assert (grouped[~word_mask] == 0).all()
    with torch.no_grad():
        text = model.encode_text(ids, attention, word_ids)
    assert text.token_emb.shape[1] == max(words) and torch.equal(text.token_mask, word_mask)


def test_resnet_grid_and_three_channels(tiny_tree):
    cfg = make_config(tiny_tree, image={"name": "resnet18", "in_chans": 3})
    encoder = ImageEncoder(cfg.image).eval()
    with torch.no_grad():
        pooled, tokens, grid = encoder(torch.randn(2, 3, 64, 64))
    assert pooled.shape == (2, 512) and tokens.shape == (2, 4, 512) and grid == (2, 2)
    with pytest.raises(ValueError, match="in_chans"):
        encoder(torch.randn(2, 1, 64, 64))


def test_timm_kwargs_reach_timm_and_reserved_keys_are_refused(tiny_tree):
    """``output_stride: 16`` doubles a ResNet's grid; keys the config owns cannot be set twice."""
    cfg = make_config(tiny_tree, image={"name": "resnet18", "timm_kwargs": {"output_stride": 16}})
    with torch.no_grad():
        _, tokens, grid = ImageEncoder(cfg.image).eval()(torch.randn(2, 1, 64, 64))
    assert grid == (4, 4) and tokens.shape == (2, 16, 512)
    with pytest.raises(ValueError, match=r"timm_kwargs may not set \['in_chans'\]"):
        ImageEncoder(make_config(tiny_tree, image={"timm_kwargs": {"in_chans": 3}}).image)


def test_real_minilm_keep_layers_and_mean_pooling(tiny_tree, minilm_dir):
    cfg = make_config(tiny_tree, text={"name": str(minilm_dir), "tiny": None, "tokenizer": None, "keep_layers": 2, "pooling": "mean"})
    model = build_model(cfg).eval()
    backbone = model.text_encoder.backbone
    assert len(backbone.encoder.layer) == 2 and backbone.config.num_hidden_layers == 2
    ids, attention, _ = tokenise(build_tokenizer(cfg))
    with torch.no_grad():
        text = model.encode_text(ids, attention)
    assert torch.isfinite(text.global_emb).all()
    with pytest.raises(ValueError, match="keep_layers"):
        build_model(make_config(tiny_tree, text={"name": str(minilm_dir), "tiny": None, "keep_layers": 9}))


@pytest.mark.parametrize("count", [0, 1, 2])
def test_freeze_layers_locks_embeddings_and_first_layers(tiny_tree, count):
    """Frozen parts get no gradient and no dropout; the rest of the model still learns."""
    torch.manual_seed(0)
    model = build_model(make_config(tiny_tree, text={**tiny_tree["text"], "freeze_layers": count}))
    backbone = model.text_encoder.backbone
    frozen = [backbone.embeddings, *list(backbone.encoder.layer)[:count]]
    trainable = list(backbone.encoder.layer)[count:]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in trainable for p in m.parameters())
    model.train()
    assert all(not m.training for m in frozen) and all(m.training for m in trainable)
    ids, attention, _ = tokenise(build_tokenizer(make_config(tiny_tree)))
    image, text = model(torch.randn(2, 1, 64, 64), ids, attention)
    (image.global_emb * text.global_emb).sum().backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert any(p.grad is not None for p in model.text_global_head.parameters())
    if trainable:
        assert all(p.grad is not None for m in trainable for p in m.parameters() if p.ndim > 1)
    with pytest.raises(ValueError, match="freeze_layers=3 but the encoder has only 2 layers"):
        build_model(make_config(tiny_tree, text={**tiny_tree["text"], "freeze_layers": 3}))


def test_export_load_round_trip_is_exact_and_pickle_free(tiny, tmp_path):
    model, tokenizer = tiny
    with torch.no_grad():
        model.sia_scale.log_scale.fill_(3.0)  # a trained temperature must survive
        model.image_global_head.bias.fill_(0.5)
    out = model.export(tmp_path / "export")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert {"heads.safetensors", "model_config.yaml", "image_encoder/model.safetensors",
            "image_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/config.json"} <= set(files)
    assert all(f.endswith((".safetensors", ".json", ".yaml", ".txt")) for f in files), files
    loaded = load_exported(out).eval()
    ids, attention, word_ids = tokenise(tokenizer)
    images = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        a_img, a_txt = model(images, ids, attention, word_ids)
        b_img, b_txt = loaded(images, ids, attention, word_ids)
    for a, b in ((a_img.global_emb, b_img.global_emb), (a_img.patch_emb, b_img.patch_emb),
                 (a_txt.global_emb, b_txt.global_emb), (a_txt.token_emb, b_txt.token_emb)):
        assert torch.equal(a, b)
    assert torch.equal(a_txt.token_mask, b_txt.token_mask)
    assert loaded.logit_scales()["sia"].item() == pytest.approx(torch.tensor(3.0).exp().item())


def test_image_weights_from_a_local_folder_or_file(tiny, tiny_tree, tmp_path):
    model, _ = tiny
    out = model.export(tmp_path / "export")
    for source in (out / "image_encoder", out / "image_encoder" / "model.safetensors"):
        encoder = ImageEncoder(make_config(tiny_tree, image={"pretrained": str(source)}).image)
        for key, value in model.image_encoder.trunk.state_dict().items():
            assert torch.equal(encoder.trunk.state_dict()[key], value), key


def test_missing_weights_say_which_and_how_to_fix(tiny_tree, tmp_path):
    with pytest.raises(RuntimeError, match="huggingface-cli download"):
        build_model(make_config(tiny_tree, text={"name": "no-such-org/no-such-model", "tiny": None}))
    with pytest.raises(FileNotFoundError, match="model.image.pretrained"):
        ImageEncoder(make_config(tiny_tree, image={"pretrained": str(tmp_path / "missing.safetensors")}).image)
    with pytest.raises(RuntimeError, match="model.image.pretrained=DIR"):
        ImageEncoder(make_config(tiny_tree, image={"pretrained": "timm"}).image)  # the hub is offline in tests
    with pytest.raises(ValueError, match="tokenizer"):
        build_tokenizer(make_config(tiny_tree, text={"tokenizer": None}))
    with pytest.raises(FileNotFoundError, match="not an exported SISTA model"):
        load_exported(tmp_path)


def test_gradient_checkpointing_trains(tiny_tree):
    cfg = make_config(tiny_tree, gradient_checkpointing=True)
    model = build_model(cfg).train()
    ids, attention, _ = tokenise(build_tokenizer(cfg))
    image, text = model(torch.randn(2, 1, 64, 64), ids, attention)
    (image.global_emb * text.global_emb).sum().backward()
    assert model.image_encoder.trunk.patch_embed.proj.weight.grad is not None
    assert model.text_encoder.backbone.embeddings.word_embeddings.weight.grad is not None
