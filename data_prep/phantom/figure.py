"""The README picture: a few phantom studies, their images with the drawn masks outlined, and their reports.

    python -m data_prep.phantom.figure docs/img/phantoms.png
"""

from __future__ import annotations

import argparse
import io
import textwrap
from pathlib import Path

import matplotlib
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data_prep.phantom.cohort import plan_cohort  # noqa: E402
from data_prep.phantom.dicom_io import to_jpg_pixels  # noqa: E402
from data_prep.phantom.study import RenderedStudy, render_study  # noqa: E402

COLORS = {"cardiomegaly": "#ff4d4d", "effusion": "#4da6ff", "consolidation": "#ffb000", "pneumothorax": "#b84dff",
          "lesion": "#00e08a", "atelectasis": "#ff7ad9", "edema": "#00d8ff", "device": "#f5f542"}  # fmt: skip
WANTED = (("effusion", "device"), ("consolidation",), ("pneumothorax",), ("cardiomegaly",), ())


def pick_examples(seed: int, size: int, candidates: int = 120) -> list[RenderedStudy]:
    """One study for each wanted combination of finding kinds (the last: a normal study), PA + lateral first."""
    chosen: list[RenderedStudy] = []
    plans = plan_cohort(candidates, seed, (1.0, 0.0, 0.0))
    for wanted in WANTED:
        for plan in plans:
            study = render_study(seed, plan, (size, size))
            kinds = {f.kind for f in study.case.findings}
            full = study.case.style == "full" and len(study.images) >= (1 if "device" in wanted else 2)
            if full and set(wanted) <= kinds and (wanted or not kinds) and len(kinds) <= len(wanted) + 1:
                if all(s.plan.index != plan.index for s in chosen):
                    chosen.append(study)
                    break
    return chosen


def report_body(report: str, width: int = 58) -> str:
    """FINDINGS and IMPRESSION of a report, re-wrapped for the figure."""
    text = " ".join(line.strip() for line in report.splitlines())
    start = text.find("FINDINGS:") if "FINDINGS:" in text else text.find("IMPRESSION:")
    body = text[start:].replace("IMPRESSION:", "\n\nIMPRESSION:")
    return "\n".join(textwrap.fill(part.strip(), width) for part in body.split("\n\n"))


def render_figure(out: Path, seed: int = 0, size: int = 384) -> None:
    """Write the figure: one row per study (frontal, lateral if any, report)."""
    studies = pick_examples(seed, size)
    fig, axes = plt.subplots(len(studies), 3, figsize=(15, 4.6 * len(studies)),
                             gridspec_kw={"width_ratios": [1, 1, 1.5]})  # fmt: skip
    for row, study in zip(axes, studies):
        for ax in row[:2]:
            ax.axis("off")
        for ax, image in zip(row[:2], study.images):
            ax.imshow(to_jpg_pixels(image.presentation), cmap="gray", vmin=0, vmax=255)
            for finding, mask in image.masks:
                ax.contour(mask, levels=[0.5], colors=[COLORS[finding.kind]], linewidths=1.2)
            ax.set_title(f"{image.view}  ({image.encoding.photometric}, {image.encoding.bits_stored} bits)", fontsize=9)
        row[2].axis("off")
        legend = ", ".join(f"{f.kind} ({f.status})" for f in study.case.findings) or "normal"
        row[2].text(0.0, 1.0, f"drawn: {legend}\n\n{report_body(study.report)}", va="top", ha="left",
                    family="monospace", fontsize=8.5, transform=row[2].transAxes)  # fmt: skip
    fig.suptitle("Phantom MIMIC-CXR: synthetic images (mask outlines in colour) and their reports", fontsize=13)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=60, format="png")
    plt.close(fig)
    # A 256-colour palette keeps the committed PNG small.
    Image.open(buffer).convert("RGB").quantize(256).save(out, optimize=True)


def main() -> None:
    """Command line: the output PNG path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    render_figure(args.out, args.seed)


if __name__ == "__main__":
    main()
