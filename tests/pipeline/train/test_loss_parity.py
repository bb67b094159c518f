"""Bit-identical per-step losses of a fixed 20-step tiny run (CPU, fp32, 2 ranks) against recorded fixtures.

The fixture holds the losses of the code before the contracts redesign (issue 13, commit 25ab0ee), one
recording per kind of CPU, all under the pinned CPU kernels that ``tests/conftest.py`` sets (AVX2 for ATen,
MKL and oneDNN). The pin is not enough across vendors: an AMD Zen 5 and an Intel AMX machine still differ
from step 1 in the last bits, so a run must equal one recording exactly. A refactor that changes any loss
by one ulp fails here. Re-record only for an intended change of the numbers, or to add a kind of CPU (with
the pre-redesign commit checked out, the same variables set, and its own RUNS keys), and say why in the
commit: ``python tests/pipeline/train/test_loss_parity.py MANIFEST`` prints one recording's losses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from train_helpers import step_losses, tiny_overrides, torchrun

FIXTURE = Path(__file__).parent / "fixtures" / "tiny20_losses.json"
RUNS = {
    "sista": {},
    "sista_word_xneg_accum2": {"loss__options__sta_image__negatives": 2, "optim__accumulation_steps": 2,
                               "model__text__token_unit": "word"},
}


def _run(manifest: Path, run_dir: Path, extra: dict) -> list[float]:
    over = tiny_overrides(manifest, run_dir, schedule__max_steps=20, checkpoint__every_steps=20,
                          checkpoint__keep_last=1, **extra)
    result = torchrun(over, timeout=420)
    assert result.returncode == 0, result.stderr[-4000:]
    losses = step_losses(run_dir / "steps.jsonl")
    assert sorted(losses) == list(range(1, 21))
    return [losses[s][0] for s in range(1, 21)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_losses_bit_identical_to_recorded(train_manifest, tmp_path, name):
    """The same 20-step 2-rank run gives exactly the recorded per-step losses."""
    recordings = json.loads(FIXTURE.read_text())["recordings"]
    got = _run(train_manifest, tmp_path / name, RUNS[name])
    matches = [r["cpu"] for r in recordings if r["losses"][name] == got]
    first_differences = {r["cpu"]: next(((s + 1, a, b) for s, (a, b) in enumerate(zip(got, r["losses"][name])) if a != b),
                                        None) for r in recordings}
    assert matches, f"equals no recording; first (step, got, recorded) that differs per CPU: {first_differences}"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({n: _run(Path(sys.argv[1]), Path(tmp) / n, e) for n, e in RUNS.items()}, indent=1))
