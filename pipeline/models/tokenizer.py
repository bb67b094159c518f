"""The text tokenizer (batches are tokenised by ``pipeline.data.collate``)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipeline.models.config import ModelConfig


def tokenizer_source(cfg: ModelConfig) -> str:
    """Where the tokenizer comes from: ``model.text.tokenizer``, else ``model.text.name``."""
    source = cfg.text.tokenizer or cfg.text.name
    if source is None:
        raise ValueError(
            "model.text.tokenizer is not set and model.text uses a 'tiny' spec: set model.text.tokenizer "
            "to a tokenizer folder (e.g. one holding vocab.txt/tokenizer.json) or a hub id"
        )
    return source


def build_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerFast:
    """The fast tokenizer of ``model.text`` (local folder or hub id), truncating at ``text.max_length``."""
    source = tokenizer_source(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        where = "local folder" if Path(source).exists() else "hub id"
        raise RuntimeError(
            f"model.text tokenizer {source!r} ({where}) could not be loaded: {err}. Fix: point "
            "model.text.tokenizer (or model.text.name) at a folder with the tokenizer files, e.g. "
            f"`huggingface-cli download {source} --local-dir DIR` on a machine with internet."
        ) from err
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise RuntimeError(f"model.text tokenizer {source!r} has no fast tokenizer (word ids need one)")
    tokenizer.model_max_length = cfg.text.max_length
    return tokenizer
