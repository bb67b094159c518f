"""The documented way to add a loss term: one registered module plus one YAML entry, trained for one step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from test_step import _setup, _split

from pipeline.losses import LossInputs, LossTerm, TermResult, register_term
from pipeline.train.step import contrastive_step


# ---- the file a researcher writes (pipeline/losses/terms/uniformity.py in the docs' example) ----
@dataclass
class UniformityOptions:
    """Options of ``uniformity``."""

    t: float  # scale of the Gaussian potential


@register_term("uniformity")
class Uniformity(LossTerm):
    """Wang & Isola's uniformity of this rank's global image embeddings: log mean exp(-t·|x_i - x_j|²)."""

    Options = UniformityOptions

    def forward(self, inputs: LossInputs) -> TermResult:
        sq = torch.pdist(inputs.image.global_emb).pow(2)
        return TermResult(sq.mul(-self.options.t).exp().mean().log(), {"mean_sq_dist": sq.mean().detach()})


# ---- the YAML entry (a preset file next to configs/loss/sista.yaml, selected with loss.preset=...) ----
PRESET = """\
terms:
  - {term: sia, weight: 1.0}
  - group: sta
    weight: 1.0
    terms:
      - {term: sta_token, weight: 1.0}
      - {term: sta_image, weight: 1.0}
  - {term: uniformity, weight: 0.1, options: {t: 2.0}}
"""


def test_a_new_term_trains_from_one_yaml_entry(tmp_path):
    preset = tmp_path / "sista_uniformity.yaml"
    preset.write_text(PRESET)
    model, loss, encode, batch = _setup(0.0, f"loss.preset={preset}")
    _, plain, _, _ = _setup(0.0)
    model.zero_grad(set_to_none=True)
    out = contrastive_step(encode, loss, _split(batch, 2), lambda v: v.backward(), lambda v: (False, False))
    s = out.scalars
    assert {"uniformity/loss", "uniformity/mean_sq_dist", "sia/loss", "sta/loss"} <= set(s)
    torch.testing.assert_close(out.loss, s["sia/loss"] + s["sta/loss"] + 0.1 * s["uniformity/loss"])
    assert all(p.grad is not None for p in model.image_global_head.parameters())
    image, text, scales = encode(batch)
    with torch.no_grad():
        without = plain(LossInputs(image, text, scales, report_emb=batch.report_emb, labels=batch.labels))
    torch.testing.assert_close(out.loss - 0.1 * s["uniformity/loss"], without.loss)
