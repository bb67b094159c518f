"""Figures of the evaluation: grids of image | phrase | alignment heat map (matplotlib, no display)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402


def grounding_grid(examples: list[dict], path: Path, title: str) -> Path:
    """One row per example: the input crop with the ground-truth outline, the phrase, the heat map over the image.

    Each example holds ``image`` [S, S] (intensities), ``phrase``, ``map`` [S, S], ``mask`` [S, S] bool
    and ``hit`` (pointing game).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = max(len(examples), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 0.8, 1]})
    for ax_row, example in zip(axes, examples):
        image = np.clip(example["image"], 0, 1)
        ax_row[0].imshow(image, cmap="gray", vmin=0, vmax=1)
        if example["mask"].any():
            ax_row[0].contour(example["mask"], levels=[0.5], colors="lime", linewidths=1)
        ax_row[1].text(0.5, 0.5, "\n".join(textwrap.wrap(example["phrase"], 28)), ha="center", va="center",
                       fontsize=10, wrap=True)
        ax_row[1].text(0.5, 0.05, "pointing: hit" if example["hit"] else "pointing: miss", ha="center",
                       color="green" if example["hit"] else "red", fontsize=9)
        ax_row[2].imshow(image, cmap="gray", vmin=0, vmax=1)
        ax_row[2].imshow(example["map"], cmap="jet", alpha=0.45)
        peak = np.unravel_index(int(np.argmax(example["map"])), example["map"].shape)
        ax_row[2].plot(peak[1], peak[0], marker="x", color="white", markersize=8)
        if example["mask"].any():
            ax_row[2].contour(example["mask"], levels=[0.5], colors="lime", linewidths=1)
    for ax in axes.ravel():
        ax.set_axis_off()
    axes[0][0].set_title("image + ground truth")
    axes[0][1].set_title("phrase")
    axes[0][2].set_title("STA alignment map")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / (3 * rows)))  # 0.6 in above the column titles for the suptitle
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def dense_grid(examples: list[dict], path: Path, title: str) -> Path:
    """One row per example: image | ground truth | prediction, each a mask overlay or boxes.

    Each example holds ``image`` [S, S] in [0, 1] and ``truth`` / ``predicted``: bool masks [S, S] or
    ``[k, 4]`` x1, y1, x2, y2 boxes in the image's pixels.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = max(len(examples), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for ax_row, example in zip(axes, examples):
        image = np.clip(example["image"], 0, 1)
        for ax, key in zip(ax_row, (None, "truth", "predicted")):
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            if key is None:
                continue
            region = np.asarray(example[key])
            if region.ndim == 2 and region.shape == image.shape:
                ax.imshow(np.ma.masked_where(~region.astype(bool), region), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
            else:
                for x1, y1, x2, y2 in region.reshape(-1, 4):
                    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", linewidth=1.2))
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, name in zip(axes[0], ("image", "ground truth", "prediction")):
        ax.set_title(name)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
