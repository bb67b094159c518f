"""A tiny model (ViT-tiny at 64 px, 2-layer BERT) overfits 8 pairs with the `sista` preset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_configs import make_config

from pipeline.config import config_from_dict, load_yaml_tree
from pipeline.losses import LossConfig, LossContext, LossInputs, build_objective
from pipeline.models import build_model, build_tokenizer

REPORTS = [
    "No acute cardiopulmonary process.",
    "Right upper lobe consolidation concerning for pneumonia.",
    "Moderate left pleural effusion with adjacent atelectasis.",
    "Cardiomegaly with pulmonary vascular congestion and interstitial edema.",
    "Small right apical pneumothorax after chest tube removal.",
    "Endotracheal tube terminates 3 cm above the carina; nasogastric tube in the stomach.",
    "Healed fractures of the left posterior ribs; no focal opacity.",
    "Large hiatal hernia; lungs are hyperinflated consistent with emphysema.",
]


def report_embeddings(minilm_dir, texts):
    """What the sharder stores: the frozen MiniLM's mean-pooled, L2-normalised report embeddings."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(minilm_dir), AutoModel.from_pretrained(minilm_dir).eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    weights = enc["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)


def perfect_retrieval(model, images, ids, attention) -> bool:
    model.eval()
    with torch.no_grad():
        image, text = model(images, ids, attention)
    model.train()
    sims = image.global_emb @ text.global_emb.T
    target = torch.arange(len(images))
    return bool((sims.argmax(1) == target).all() and (sims.argmax(0) == target).all())


@pytest.fixture()
def one_thread():
    """Tiny matrices: one intra-op thread is faster, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_model_overfits_eight_pairs_with_sista(repo_root, tiny_tree, minilm_dir, one_thread):
    torch.manual_seed(0)
    cfg = make_config(tiny_tree)
    model, tokenizer = build_model(cfg).train(), build_tokenizer(cfg)
    tree, _ = load_yaml_tree(repo_root / "configs/pretrain/tiny.yaml")
    loss_cfg = config_from_dict(LossConfig, tree["loss"], "tiny.yaml", section="loss")
    assert loss_cfg.preset == "sista"
    criterion = build_objective(loss_cfg, LossContext(report_pooling="mean"))
    report_emb = report_embeddings(minilm_dir, REPORTS)
    enc = tokenizer(REPORTS, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    ids, attention = enc["input_ids"], enc["attention_mask"]
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 1, 64, 64, generator=g)
    assert not perfect_retrieval(model, images, ids, attention)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    history = []
    for step in range(150):
        out = criterion(LossInputs(*model(images, ids, attention), model.logit_scales(), report_emb=report_emb))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append((out.scalars["sia/loss"].item(), out.scalars["sta/loss"].item()))
        if step % 10 == 9 and perfect_retrieval(model, images, ids, attention):
            break
    print(f"perfect after {len(history)} steps")
    assert perfect_retrieval(model, images, ids, attention), f"not perfect after {len(history)} steps"
    assert history[-1][0] < 0.5 * history[0][0], history[:: max(1, len(history) // 10)]
    assert history[-1][1] < history[0][1]
