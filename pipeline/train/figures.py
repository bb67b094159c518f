"""The dashboards' patch-word alignment figure: STA weights as heat maps over fixed validation images."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pipeline.losses import alignment_weights  # noqa: E402


def token_labels(tokenizer: Any, input_ids: torch.Tensor, word_ids: torch.Tensor, count: int) -> list[str]:
    """Text of each of the ``count`` token slots of one sample: subword pieces, or whole words when grouped."""
    pieces = tokenizer.convert_ids_to_tokens(input_ids.tolist())
    if count == len(pieces):
        return pieces
    words: dict[int, str] = {}
    for piece, word in zip(pieces, word_ids.tolist()):
        if word >= 0:
            words[word] = words.get(word, "") + piece.removeprefix("##")
    return [words.get(i, "?") for i in range(count)]


@torch.no_grad()
def alignment_figure(
    image_feats: Any, text_feats: Any, batch: Any, tokenizer: Any, words: int, threshold: float | None,
) -> plt.Figure:
    """Rows = images; first column the image, then its ``words`` most localised tokens with their weight maps."""
    h, w = image_feats.grid_size
    sims = torch.einsum("bld,bpd->blp", text_feats.token_emb.float(), image_feats.patch_emb.float())
    weights = alignment_weights(sims, threshold)  # [B, L', P]
    rows = weights.shape[0]
    fig, axes = plt.subplots(rows, words + 1, figsize=(2.0 * (words + 1), 2.1 * rows), squeeze=False)
    for i in range(rows):
        image = batch.images[i, 0].float().cpu()
        valid = text_feats.token_mask[i].cpu()
        labels = token_labels(tokenizer, batch.input_ids[i], batch.word_ids[i], weights.shape[1])
        peak = weights[i].amax(dim=-1).cpu().masked_fill(~valid, -1.0)
        order = [j for j in peak.argsort(descending=True).tolist() if valid[j] and labels[j].isalpha()][:words]
        axes[i, 0].imshow(image, cmap="gray")
        axes[i, 0].set_title(batch.keys[i][:12], fontsize=7)
        for c, j in enumerate(order, start=1):
            heat = weights[i, j].reshape(h, w).cpu()
            axes[i, c].imshow(image, cmap="gray")
            axes[i, c].imshow(heat, cmap="jet", alpha=0.45, extent=(0, image.shape[1], image.shape[0], 0),
                              interpolation="bilinear")
            axes[i, c].set_title(labels[j], fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    return fig
