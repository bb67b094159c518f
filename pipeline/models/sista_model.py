"""SistaModel: both encoders, their projection heads and temperatures; export to / load from safetensors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
import yaml
from timm.models import save_for_hf
from torch import nn
from transformers import PreTrainedTokenizerFast

from pipeline.config import config_from_dict, to_yaml
from pipeline.models.config import ModelConfig
from pipeline.models.heads import LogitScale, projection_head
from pipeline.models.image_encoder import TIMM_WEIGHTS, ImageEncoder
from pipeline.models.text_encoder import TextEncoder
from pipeline.models.tokenizer import build_tokenizer

IMAGE_DIR, TEXT_DIR = "image_encoder", "text_encoder"
HEADS_FILE, CONFIG_FILE = "heads.safetensors", "model_config.yaml"
_ENCODER_PREFIXES = ("image_encoder.", "text_encoder.")


@dataclass
class ImageFeatures:
    """Image embeddings: ``global_emb`` [B, D], ``patch_emb`` [B, P, D] (both L2-normalised), ``grid_size`` (h, w)."""

    global_emb: torch.Tensor
    patch_emb: torch.Tensor
    grid_size: tuple[int, int]


@dataclass
class TextFeatures:
    """Text embeddings: ``global_emb`` [B, D], ``token_emb`` [B, L', D] (L2-normalised), ``token_mask`` [B, L'] bool."""

    global_emb: torch.Tensor
    token_emb: torch.Tensor
    token_mask: torch.Tensor


class SistaModel(nn.Module):
    """Image and text encoders with global and local projection heads into one ``embed_dim`` space."""

    def __init__(self, cfg: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__()
        self.config = cfg
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        d = cfg.embed_dim
        self.image_global_head = projection_head(cfg.projection, image_encoder.num_features, d)
        self.image_local_head = projection_head(cfg.projection, image_encoder.num_features, d)
        self.text_global_head = projection_head(cfg.projection, text_encoder.num_features, d)
        self.text_local_head = projection_head(cfg.projection, text_encoder.num_features, d)
        self.sia_scale = LogitScale(cfg.temperature.sia)
        self.sta_scale = LogitScale(cfg.temperature.sta)

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Embed ``images`` [B, C, H, W] (normalised intensities)."""
        pooled, tokens, grid = self.image_encoder(images)
        return ImageFeatures(
            F.normalize(self.image_global_head(pooled), dim=-1),
            F.normalize(self.image_local_head(tokens), dim=-1),
            grid,
        )

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor | None = None
    ) -> TextFeatures:
        """Embed token ids [B, L]; with ``word_ids`` the token features are per word (``model.text.token_unit: word``)."""
        pooled, tokens, mask = self.text_encoder(input_ids, attention_mask, word_ids)
        return TextFeatures(
            F.normalize(self.text_global_head(pooled), dim=-1),
            F.normalize(self.text_local_head(tokens), dim=-1),
            mask,
        )

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor | None = None,
    ) -> tuple[ImageFeatures, TextFeatures]:
        """Both encodings at once (what a DeepSpeed engine calls)."""
        return self.encode_image(images), self.encode_text(input_ids, attention_mask, word_ids)

    def logit_scales(self) -> dict[str, torch.Tensor]:
        """The clamped multipliers 1/τ: ``{"sia": 1/τ, "sta": 1/τ_f}``."""
        return {"sia": self.sia_scale(), "sta": self.sta_scale()}

    def token_parameters(self) -> list[nn.Parameter]:
        """Parameters only STA trains (local heads, τ_f): freeze them when STA is off so none is left without grad."""
        modules = (self.image_local_head, self.text_local_head, self.sta_scale)
        return [p for m in modules for p in m.parameters()]

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Projection heads and temperatures (everything outside the two encoders)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(_ENCODER_PREFIXES)}

    def export(self, out_dir: str | Path, tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
        """Write the model as safetensors + configs (see :func:`load_exported`); returns ``out_dir``.

        ``image_encoder/`` (timm ``config.json`` + ``model.safetensors``), ``text_encoder/``
        (``save_pretrained`` + tokenizer files), ``heads.safetensors``, ``model_config.yaml``.
        ``tokenizer`` defaults to :func:`build_tokenizer` of the model's config.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_for_hf(self.image_encoder.trunk, str(out / IMAGE_DIR), safe_serialization=True)
        self.text_encoder.backbone.save_pretrained(out / TEXT_DIR)
        (tokenizer or build_tokenizer(self.config)).save_pretrained(out / TEXT_DIR)
        heads = {k: v.detach().cpu().contiguous() for k, v in self.head_state_dict().items()}
        safetensors.torch.save_file(heads, str(out / HEADS_FILE))
        (out / CONFIG_FILE).write_text(to_yaml(self.config), encoding="utf-8")
        return out


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast | None = None) -> SistaModel:
    """Build the model of ``cfg`` (weights per ``model.image.pretrained`` / ``model.text.name``)."""
    tokenizer = tokenizer or build_tokenizer(cfg)
    text_encoder = TextEncoder(cfg.text, tokenizer.all_special_ids)
    vocab = text_encoder.backbone.config.vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(
            f"model.text: the tokenizer has {len(tokenizer)} tokens but the text model's vocabulary holds {vocab}"
        )
    model = SistaModel(cfg, ImageEncoder(cfg.image), text_encoder)
    if cfg.gradient_checkpointing:
        model.image_encoder.set_grad_checkpointing(True)
        model.text_encoder.set_grad_checkpointing(True)
    return model


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; ValueError naming the file when it is truncated or not safetensors."""
    try:
        return safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable .safetensors file ({err}): re-export the model or copy it again") from err


def load_exported(model_dir: str | Path) -> SistaModel:
    """Load a :meth:`SistaModel.export` folder (safetensors only; nothing is unpickled)."""
    root = Path(model_dir)
    for needed in (CONFIG_FILE, HEADS_FILE, f"{IMAGE_DIR}/{TIMM_WEIGHTS}", f"{TEXT_DIR}/config.json"):
        if not (root / needed).is_file():
            raise FileNotFoundError(f"{root}: not an exported SISTA model ({needed} missing)")
    saved = config_from_dict(ModelConfig, yaml.safe_load((root / CONFIG_FILE).read_text(encoding="utf-8")), str(root / CONFIG_FILE))
    text_dir = str(root / TEXT_DIR)
    cfg = dataclasses.replace(
        saved,
        image=dataclasses.replace(saved.image, pretrained="none"),
        text=dataclasses.replace(saved.text, name=text_dir, tiny=None, tokenizer=text_dir, keep_layers=None),
    )
    model = build_model(cfg)
    trunk_state = _read_safetensors(root / IMAGE_DIR / TIMM_WEIGHTS)
    model.image_encoder.trunk.load_state_dict(trunk_state, strict=True)
    heads = _read_safetensors(root / HEADS_FILE)
    expected = set(model.head_state_dict())
    if set(heads) != expected:
        raise ValueError(
            f"{root / HEADS_FILE}: keys differ from the model's heads "
            f"(missing {sorted(expected - set(heads))}, unexpected {sorted(set(heads) - expected)})"
        )
    model.load_state_dict(heads, strict=False)
    return model
