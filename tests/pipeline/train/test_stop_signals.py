"""Stop signals as ``scancel``, ``timeout`` and Ctrl-C send them: to the whole process group, loader workers included.

Every rank must finish its step, save one collective checkpoint and exit 0; the loader workers leave
the signal to their rank. Under torchrun the ranks exit 0 and torchrun itself re-raises the signal
(documented in docs/pretraining.md, "Stopping a run").
"""

from __future__ import annotations

import os
import signal

from train_helpers import (
    finish,
    kill_all,
    spawn_ranks,
    start_torchrun,
    step_losses,
    tiny_overrides,
    wait_for_step,
)

from pipeline.train.checkpoint import complete_checkpoints, describe

STEPS = 60


def _stopped_cleanly(run_dir, outputs: list[str], signame: str) -> int:
    """The stop step, after checking the single checkpoint written there by both ranks and each rank's log."""
    last = max(step_losses(run_dir / "steps.jsonl"))
    assert 2 <= last < STEPS
    newest = complete_checkpoints(run_dir / "checkpoints")[-1]
    info = describe(newest)
    assert (info.step, info.world_size) == (last, 2)
    for text in outputs:
        assert "killed by signal" not in text, text[-6000:]
    assert sum(f"received {signame}" in text for text in outputs) >= 1
    return last


def test_sigterm_to_the_process_group_checkpoints_every_rank(train_manifest, tmp_path):
    """``timeout``/``scancel``: SIGTERM to both ranks and their loader workers at once -> checkpoint, exit 0."""
    run_dir = tmp_path / "term"
    over = tiny_overrides(train_manifest, run_dir, schedule__max_steps=STEPS, checkpoint__every_steps=1000,
                          data__num_workers=1)
    procs = spawn_ranks(over, new_session=True)
    try:
        wait_for_step(run_dir / "steps.jsonl", 2, procs)
        os.killpg(procs[0].pid, signal.SIGTERM)
        results = finish(procs)
    finally:
        kill_all(procs)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    assert not any("Traceback" in out for _, out in results), results[0][1][-3000:]
    last = _stopped_cleanly(run_dir, [out for _, out in results], "SIGTERM")
    assert all(f"stopped at step {last}" in out for _, out in results)


def test_sigint_to_torchrun_group_checkpoints_and_ranks_exit_0(train_manifest, tmp_path):
    """Ctrl-C on a torchrun job (SIGINT to its group): the ranks checkpoint and exit 0; torchrun re-raises SIGINT."""
    run_dir = tmp_path / "int"
    over = tiny_overrides(train_manifest, run_dir, schedule__max_steps=STEPS, checkpoint__every_steps=1000,
                          data__num_workers=1)
    proc = start_torchrun(over)
    try:
        wait_for_step(run_dir / "steps.jsonl", 2, [proc])
        os.killpg(proc.pid, signal.SIGINT)
        code, out = finish([proc])[0]
    finally:
        kill_all([proc])
    last = _stopped_cleanly(run_dir, [out], "SIGINT")
    assert out.count(f"stopped at step {last}") == 2, out[-3000:]  # both ranks returned from fit
    assert "exitcode: -" not in out and "ChildFailedError" not in out, out[-3000:]  # no rank died of the signal
    # torchrun's only traceback is its own re-raise of the signal, and it exits non-zero (documented)
    assert out.count("Traceback") == 1 and "SignalException" in out, out[-3000:]
    assert code == 1, code
