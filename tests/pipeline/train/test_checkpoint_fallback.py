"""A corrupt file inside a COMPLETE checkpoint: every rank falls back to the previous one together, or stops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.train.checkpoint import COMPLETE, complete_checkpoints, tag_for
from pipeline.train.checkpoint_verify import CheckpointError, file_digests, first_intact


def _fake_checkpoint(root: Path, step: int, files: int = 4) -> Path:
    """A checkpoint folder with ``files`` files and a marker recording their digests (as save_checkpoint does)."""
    folder = root / tag_for(step)
    folder.mkdir(parents=True)
    for i in range(files):
        (folder / f"part{i}.pt").write_bytes(bytes([step, i]) * 100)
    (folder / COMPLETE).write_text(json.dumps({"step": step, "world_size": 2, "files": file_digests(folder)}))
    return folder


def _choose(rank: int, world: int, init_file: str, root: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        newest_first = list(reversed(complete_checkpoints(Path(root))))
        results[(0, rank)] = str(first_intact(newest_first, rank, world))
        dist.barrier()
        if rank == 0:
            (newest_first[1] / "part0.pt").unlink()  # now the older one is broken too
        dist.barrier()
        try:
            results[(1, rank)] = str(first_intact(newest_first, rank, world))
        except CheckpointError as err:
            results[(1, rank)] = f"error: {err}"
    finally:
        dist.destroy_process_group()


def _run_two_ranks(tmp_path: Path, root: Path) -> tuple[list[str], list[str]]:
    """Each rank's choice with the newest checkpoint broken, then with both broken."""
    results = mp.Manager().dict()
    mp.spawn(_choose, args=(2, str(tmp_path / "init"), str(root), results), nprocs=2, join=True)
    return [results[(0, r)] for r in range(2)], [results[(1, r)] for r in range(2)]


def test_ranks_agree_on_the_fallback_and_stop_without_one(tmp_path, caplog):
    """part3.pt of step 4 is checked by rank 1 only; both ranks take step 2. With step 2 broken too: both stop."""
    root = tmp_path / "checkpoints"
    older, newest = _fake_checkpoint(root, 2), _fake_checkpoint(root, 4)
    (newest / "part3.pt").write_bytes(b"corrupt")
    with caplog.at_level("WARNING"):
        assert first_intact([newest, older], 0, 1) == older
    assert "part3.pt (sha256 differs)" in caplog.text and str(newest) in caplog.text
    chosen, results = _run_two_ranks(tmp_path, root)
    assert chosen == [str(older)] * 2
    assert results[0] == results[1] and results[0].startswith("error: no intact checkpoint")
    assert "part0.pt (missing)" in results[0] and "part3.pt (sha256 differs)" in results[0]


def test_checkpoint_without_digests_is_taken_as_is(tmp_path):
    """A marker from before digests were recorded: resumed as before."""
    folder = _fake_checkpoint(tmp_path, 1)
    (folder / COMPLETE).write_text(json.dumps({"step": 1, "world_size": 1}))
    assert first_intact([folder], 0, 1) == folder
    with pytest.raises(CheckpointError):
        (folder / COMPLETE).write_text("{not json")
        first_intact([folder], 0, 1)


def test_trainer_resumes_from_the_previous_checkpoint(train_manifest, tmp_path):
    """One rank: a byte flipped in step 4's model states -> the rerun warns, resumes from step 2 and finishes."""
    from train_helpers import step_losses, tiny_overrides, torchrun

    run_dir = tmp_path / "run"
    first = torchrun(tiny_overrides(train_manifest, run_dir, schedule__max_steps=4), nproc=1)
    assert first.returncode == 0, first.stderr[-3000:]
    newest = run_dir / "checkpoints" / tag_for(4)
    victim = next(newest.rglob("*model_states.pt"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    again = torchrun(tiny_overrides(train_manifest, run_dir, schedule__max_steps=5), nproc=1)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"checkpoint {newest} has broken file(s) {victim.relative_to(newest)}" in again.stderr
    assert f"resumed from {run_dir / 'checkpoints' / tag_for(2)}" in again.stderr
    assert max(step_losses(run_dir / "steps.jsonl")) == 5
