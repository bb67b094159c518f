"""Text encoder: a BERT-family ``transformers`` model giving a global feature, token features and their mask."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, BertConfig, BertModel, PreTrainedModel

from pipeline.models.config import TextEncoderConfig


def create_backbone(cfg: TextEncoderConfig) -> PreTrainedModel:
    """The ``transformers`` encoder: pretrained from ``cfg.name`` (hub id or folder) or random from ``cfg.tiny``."""
    if cfg.tiny is not None:
        backbone = BertModel(BertConfig(**cfg.tiny), add_pooling_layer=False)
    else:
        backbone = _load_pretrained(cfg.name)
    if cfg.keep_layers is not None:
        keep_first_layers(backbone, cfg.keep_layers)
    return backbone


def frozen_modules(backbone: PreTrainedModel, count: int | None) -> list[nn.Module]:
    """The embeddings and the first ``count`` layers of ``backbone`` (none when ``count`` is None)."""
    if count is None:
        return []
    layers = backbone.encoder.layer
    if count > len(layers):
        raise ValueError(f"model.text.freeze_layers={count} but the encoder has only {len(layers)} layers")
    return [backbone.embeddings, *list(layers)[:count]]


def _load_pretrained(name: str) -> PreTrainedModel:
    """``AutoModel.from_pretrained`` without the unused pooler; a clear error when the weights cannot be had."""
    try:
        try:
            return AutoModel.from_pretrained(name, add_pooling_layer=False)
        except TypeError:  # families without a pooler option
            return AutoModel.from_pretrained(name)
    except (OSError, ValueError) as err:
        where = "local folder" if Path(name).exists() else "hub id (offline or not found)"
        raise RuntimeError(
            f"model.text.name={name!r} ({where}) could not be loaded: {err}. Fix: on a machine with internet run "
            f"`huggingface-cli download {name} --local-dir DIR` and set model.text.name=DIR (and "
            "model.text.tokenizer if the tokenizer lives elsewhere), or use model.text.tiny for a random model."
        ) from err


def keep_first_layers(backbone: PreTrainedModel, count: int) -> None:
    """Drop all but the first ``count`` transformer layers (MGCA's option), updating the saved config."""
    layers = backbone.encoder.layer
    if count > len(layers):
        raise ValueError(f"model.text.keep_layers={count} but the encoder has only {len(layers)} layers")
    backbone.encoder.layer = nn.ModuleList(list(layers)[:count])
    backbone.config.num_hidden_layers = count


class TextEncoder(nn.Module):
    """A ``transformers`` ``backbone``; ``forward`` returns (global [B, H], tokens [B, L', H], token mask [B, L'])."""

    def __init__(
        self, cfg: TextEncoderConfig, special_token_ids: list[int], backbone: PreTrainedModel | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else create_backbone(cfg)
        self.num_features = int(self.backbone.config.hidden_size)
        self.frozen = frozen_modules(self.backbone, cfg.freeze_layers)
        for module in self.frozen:
            module.requires_grad_(False)
        self.register_buffer("special_token_ids", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long), persistent=False)

    def train(self, mode: bool = True) -> TextEncoder:
        """Train mode for what learns; the frozen embeddings and layers stay in eval mode (no dropout)."""
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute layer activations in the backward pass to save memory."""
        if not enable:
            self.backbone.gradient_checkpointing_disable()
        elif hasattr(self.backbone, "activation_checkpointing_enable"):
            self.backbone.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global feature ([CLS] or masked mean), token features and mask (specials/padding False).

        With ``word_ids`` [B, L] (−1 for specials and padding) the WordPieces of a word are summed
        into one token, so L' is the largest word count in the batch; otherwise L' = L.
        """
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        present = attention_mask.bool()
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = present.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        token_mask = present & ~torch.isin(input_ids, self.special_token_ids)
        if word_ids is None:
            return pooled, hidden, token_mask
        return (pooled, *group_words(hidden, token_mask, word_ids))


def group_words(hidden: torch.Tensor, token_mask: torch.Tensor, word_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the token features of each word: ([B, W, H], mask [B, W]) with W the largest word count."""
    if word_ids.shape != token_mask.shape:
        raise ValueError(f"word_ids {tuple(word_ids.shape)} must match input_ids {tuple(token_mask.shape)}")
    keep = token_mask & (word_ids >= 0)
    words = int(word_ids.masked_fill(~keep, -1).max().clamp(min=0).item()) + 1
    index = torch.where(keep, word_ids, torch.full_like(word_ids, words))  # the extra slot is dropped
    grouped = hidden.new_zeros((hidden.shape[0], words + 1, hidden.shape[2]))
    grouped.scatter_add_(1, index.unsqueeze(-1).expand_as(hidden), hidden)
    counts = torch.zeros((hidden.shape[0], words + 1), dtype=torch.long, device=hidden.device)
    counts.scatter_add_(1, index, keep.long())
    return grouped[:, :words], counts[:, :words] > 0
