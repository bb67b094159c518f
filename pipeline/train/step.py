"""One optimizer step over one or more micro-batches, keeping the whole contrastive batch.

With ``A`` micro-batches per step (gradient accumulation), DeepSpeed's own accumulation would score each
micro-batch against itself only, shrinking every row's negatives A-fold. Instead (open_clip's method):
1. encode every micro-batch without gradient and cache the features (and the RNG state before each);
2. compute the loss once on the concatenated cache (its value is the step's loss);
3. for each micro-batch j, re-encode it with gradient (same RNG state, so the same dropout masks),
   put it in place of its cached copy, and back-propagate the full loss; gradients add up over j to
   the gradient of the full-batch loss. The temperatures are live in one recompute only, so their
   gradient is counted once; the loss runs in eval mode during recomputes so running statistics
   (the SIA centring EMA) move once per step.

The loss is a module (:class:`pipeline.losses.Objective`, or any ``nn.Module`` taking
:class:`LossInputs` and returning an object with ``loss`` and ``scalars``). ``loss_hook``, when given,
is applied to the total loss of every evaluation (fault injection in tests: ``faults.inject_nan_steps``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.batch import Batch, concat_optional
from pipeline.losses import LossInputs, ObjectiveResult

Encode = Callable[[Batch], tuple[Any, Any, dict[str, torch.Tensor]]]
LossHook = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class StepOutcome:
    """What one step did: its loss and named scalars (detached), whether it was skipped and whether to stop."""

    loss: torch.Tensor
    scalars: dict[str, torch.Tensor]
    skipped: bool
    stop: bool

    @classmethod
    def of(cls, result: ObjectiveResult, skipped: bool, stop: bool) -> StepOutcome:
        """The detached outcome of an objective result."""
        return cls(result.loss.detach(), {k: v.detach() for k, v in result.scalars.items()}, skipped, stop)


def _pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dim 1 of a token tensor ([B, L, ...]) to ``length`` with zeros / False."""
    if x.shape[1] == length:
        return x
    pad = [0, 0] * (x.ndim - 2) + [0, length - x.shape[1]]
    return F.pad(x, pad)


def concat_features(parts: list[Any]) -> Any:
    """Concatenate feature dataclasses (ImageFeatures or TextFeatures) along the batch, padding token dims."""
    first = parts[0]
    values = {}
    for f in dataclasses.fields(first):
        items = [getattr(p, f.name) for p in parts]
        if not isinstance(items[0], torch.Tensor):
            values[f.name] = items[0]
            continue
        if f.name in ("token_emb", "token_mask"):
            length = max(t.shape[1] for t in items)
            items = [_pad_tokens(t, length) for t in items]
        values[f.name] = torch.cat(items, dim=0)
    return dataclasses.replace(first, **values)


def _detached(features: Any) -> Any:
    """A copy of a feature dataclass with every tensor detached."""
    return dataclasses.replace(
        features, **{f.name: getattr(features, f.name).detach() for f in dataclasses.fields(features)
                     if isinstance(getattr(features, f.name), torch.Tensor)}
    )


def _rng_state() -> dict[str, Any]:
    """The torch RNG states that dropout draws from (CPU and current CUDA device)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`_rng_state`."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _loss(loss: nn.Module, image: Any, text: Any, scales: dict[str, torch.Tensor], batches: list[Batch],
          hook: LossHook | None) -> ObjectiveResult:
    """Run the loss on (possibly concatenated) features with the batches' report embeddings and labels."""
    inputs = LossInputs(image, text, scales, report_emb=concat_optional(batches, "report_emb"),
                        labels=concat_optional(batches, "labels"), findings=concat_optional(batches, "findings"))
    result = loss(inputs)
    return result if hook is None else dataclasses.replace(result, loss=hook(result.loss))


def contrastive_step(
    encode: Encode,
    loss: nn.Module,
    micro_batches: list[Batch],
    backward: Callable[[torch.Tensor], None],
    agree: Callable[[torch.Tensor], tuple[bool, bool]],
    loss_hook: LossHook | None = None,
) -> StepOutcome:
    """Forward, agree with the other ranks (skip on a non-finite loss anywhere, stop on a signal), backward.

    ``backward(loss)`` is called once per micro-batch (``engine.backward`` without accumulation
    scaling, then ``engine.step``); ``agree(loss)`` returns (skip, stop) decided across ranks.
    """
    if len(micro_batches) == 1:
        image, text, scales = encode(micro_batches[0])
        result = _loss(loss, image, text, scales, micro_batches, loss_hook)
        skip, stop = agree(result.loss)
        if not skip:
            backward(result.loss)
        return StepOutcome.of(result, skip, stop)

    states, images, texts = [], [], []
    with torch.no_grad():
        for batch in micro_batches:
            states.append(_rng_state())
            image, text, scales = encode(batch)
            images.append(image)
            texts.append(text)
        result = _loss(loss, concat_features(images), concat_features(texts), scales, micro_batches, loss_hook)
    skip, stop = agree(result.loss)
    if skip:
        return StepOutcome.of(result, True, stop)
    after = _rng_state()
    was_training = loss.training
    loss.train(False)
    try:
        for j, batch in enumerate(micro_batches):
            _set_rng_state(states[j])
            image, text, live_scales = encode(batch)
            if j > 0:
                live_scales = {k: v.detach() for k, v in live_scales.items()}
            image_all = concat_features([*images[:j], image, *images[j + 1:]])
            text_all = concat_features([*texts[:j], text, *texts[j + 1:]])
            backward(_loss(loss, image_all, text_all, live_scales, micro_batches, loss_hook).loss)
    finally:
        loss.train(was_training)
    _set_rng_state(after)
    return StepOutcome.of(result, False, stop)


__all__ = ["StepOutcome", "concat_features", "contrastive_step"]
