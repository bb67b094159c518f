"""A brief in-process pre-training of a tiny model on phantom shards, exported like the trainer exports.

Only for the evaluation tests: a plain torch loop over :class:`SistaLoss` (the DeepSpeed trainer
has its own tests), so that the evaluation can be checked against a model that learned something.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from pipeline.config import config_from_dict, load_yaml_tree, save_config
from pipeline.data.collate import Collator
from pipeline.data.transforms import TransformConfig, sample_generator, train_transform
from pipeline.eval.adapters import load_shard_split
from pipeline.losses import LossConfig, LossContext, LossInputs, build_objective
from pipeline.models import ModelConfig, build_model, build_tokenizer
from pipeline.models.export_format import (
    SCHEMA_VERSION,
    ExportDescription,
    ImagePreprocessing,
    Preprocessing,
    Provenance,
    TextPreprocessing,
    write_description,
)
from pipeline.models.sista_model import TEXT_DIR

log = logging.getLogger(__name__)
IMAGE_SIZE = 96
TRANSFORM = {
    "image_size": IMAGE_SIZE, "resize_size": 104, "crop_scale": [0.7, 1.0], "crop_ratio": [0.9, 1.1],
    "rotate_degrees": 3.0, "translate": 0.03, "scale": [0.95, 1.05], "brightness": 0.1, "contrast": 0.1,
    "mean": 0.5, "std": 0.25, "channels": 1,
}


def tiny_model_config(repo_root: Path, minilm_dir: Path, image: dict | None = None) -> ModelConfig:
    """configs/pretrain/tiny.yaml's model with timm's ``test_vit`` (64-d, a 6 x 6 patch grid at 96 px) and MiniLM text.

    The text tower is the real pretrained MiniLM (as in the demo); the tests keep it frozen so a
    brief run on CPU only trains the image tower, the heads and the temperatures. ``image``: keys
    of ``model.image`` to change (another timm trunk).
    """
    tree, _ = load_yaml_tree(repo_root / "configs/pretrain/tiny.yaml")
    model = tree["model"]
    model["image"].update({"name": "test_vit", "img_size": IMAGE_SIZE, **(image or {})})
    model["text"].update({"name": str(minilm_dir), "tiny": None, "pooling": "mean", "max_length": 40})
    return config_from_dict(ModelConfig, model, "tiny.yaml (eval tests)")


def export_run(model, cfg: ModelConfig, run_dir: Path, loss_cfg: LossConfig) -> Path:
    """Write ``run_dir/export`` with its ``sista_export.json``; an MLflow run in ``run_dir/mlflow.db`` stands for the training run."""
    from mlflow.tracking import MlflowClient

    run_dir.mkdir(parents=True, exist_ok=True)
    model.export(run_dir / "export")
    uri = f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    run = MlflowClient(uri).create_run("0", run_name="pretrain")  # the Default experiment; no global URI set
    write_description(run_dir / "export", ExportDescription(
        schema_version=SCHEMA_VERSION,
        preprocessing=Preprocessing(
            image=ImagePreprocessing("short_side", "center", config_from_dict(TransformConfig, TRANSFORM, "eval tests")),
            text=TextPreprocessing(TEXT_DIR, cfg.text.max_length),
        ),
        provenance=Provenance(tracking_uri=uri, run_id=run.info.run_id, step=0, config_hash="sha256:test"),
    ))
    save_config(cfg, run_dir / "model_config_used.yaml")
    return run_dir / "export"


def train_tiny(
    repo_root: Path, minilm_dir: Path, shards_root: Path, run_dir: Path, *, steps: int, preset: str = "sista",
    batch_size: int = 32, seed: int = 0, image: dict | None = None,
) -> Path:
    """Train for ``steps`` steps on the shards' train split (online SIA similarity); return the export folder."""
    torch.manual_seed(seed)
    cfg = tiny_model_config(repo_root, minilm_dir, image)
    tokenizer = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer)
    tree, _ = load_yaml_tree(repo_root / "configs/pretrain/tiny.yaml")
    tree["loss"].update({"preset": preset})
    tree["loss"]["options"]["sia"]["similarity_source"] = "online"
    loss_cfg = config_from_dict(LossConfig, tree["loss"], "tiny.yaml (eval tests)", section="loss")
    if steps == 0:
        return export_run(model, cfg, run_dir, loss_cfg)
    criterion = build_objective(loss_cfg, LossContext(text_pooling=cfg.text.pooling))
    transform = config_from_dict(TransformConfig, TRANSFORM, "eval tests")
    data = load_shard_split(shards_root, "train", uncertain="ignore")
    images = [loader() for loader in data.loaders]
    collate = Collator(tokenizer, cfg.text.max_length)
    model.text_encoder.requires_grad_(False)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    order = torch.Generator().manual_seed(seed)
    model.train()
    model.text_encoder.eval()  # frozen: no dropout
    for step in range(steps):
        started = time.perf_counter()
        batch = torch.randperm(len(images), generator=order)[:batch_size].tolist()
        pixels = torch.stack([
            train_transform(images[i], transform, sample_generator(seed, step, data.ids[i])) for i in batch
        ])
        enc = collate.tokenise([data.texts[i] for i in batch])
        word_ids = enc["word_ids"] if cfg.text.token_unit == "word" else None
        image, text = model(pixels, enc["input_ids"], enc["attention_mask"], word_ids)
        out = criterion(LossInputs(image, text, model.logit_scales()))
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        log.info("step %d loss %.4f (%.2f s)", step, float(out.loss.detach()), time.perf_counter() - started)
    return export_run(model.eval(), cfg, run_dir, loss_cfg)
