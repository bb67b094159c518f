"""Loader workers ignore stop signals (they belong to the rank), yet never outlive or hang their process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

LEAKED_ITERATOR = textwrap.dedent("""
    import multiprocessing, sys
    sys.path.insert(0, sys.argv[2])
    from test_loader import data_config, tokenizer
    from pipeline.data import Collator, DataPosition, build_epoch_loader, resolve_shards

    cfg = data_config(sys.argv[1], num_workers=1)
    shards = resolve_shards(cfg.train_split, manifest=cfg.manifest)
    loader = build_epoch_loader(shards, cfg, Collator(tokenizer(), 12), rank=0, world_size=1, seed=0,
                                accumulation=1, start=DataPosition(0))
    LEAKED = iter(loader)  # a caller that never closes it, kept alive until the interpreter exits
    next(LEAKED)
    assert multiprocessing.active_children(), "expected a live loader worker"
    print("worker alive; exiting", flush=True)
""")


def test_process_exits_with_a_leaked_loader_iterator(tiny_shards, tmp_path: Path):
    """multiprocessing ends daemonic workers at exit with SIGTERM and joins them: an ignored TERM hung that join."""
    manifest = tiny_shards(32, 8)
    done = subprocess.run([sys.executable, "-c", LEAKED_ITERATOR, str(manifest), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "worker alive; exiting" in done.stdout


def test_closing_the_epoch_iterator_ends_its_workers(tiny_shards):
    """Closing the iterator (what the trainer does on every path) shuts the workers down at once."""
    import multiprocessing

    from test_loader import data_config, tokenizer

    from pipeline.data import Collator, DataPosition, build_epoch_loader, resolve_shards

    cfg = data_config(tiny_shards(32, 8), num_workers=1)
    shards = resolve_shards(cfg.train_split, manifest=cfg.manifest)
    loader = build_epoch_loader(shards, cfg, Collator(tokenizer(), 12), rank=0, world_size=1, seed=0,
                                accumulation=1, start=DataPosition(0))
    others = set(multiprocessing.active_children())  # children of earlier tests in this process
    batches = iter(loader)
    next(batches)
    workers = set(multiprocessing.active_children()) - others
    assert workers
    batches.close()
    assert not workers & set(multiprocessing.active_children())


SIGNAL_WHILE_A_WORKER_STARTS = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    import torch.multiprocessing
    from test_loader import data_config, tokenizer
    from pipeline.data import Collator, DataPosition, build_epoch_loader, resolve_shards

    # torch's worker installs its own SIGTERM handler (die unless the parent sent it), then names its
    # thread, then runs our worker_init_fn: send the group's TERM from inside that window.
    PARENT = os.getpid()
    name_thread = torch.multiprocessing._set_thread_name
    def name_thread_then_term(name):
        if os.getpid() != PARENT:
            os.killpg(0, signal.SIGTERM)
        name_thread(name)
    torch.multiprocessing._set_thread_name = name_thread_then_term

    received = []
    signal.signal(signal.SIGTERM, lambda signum, _: received.append(signum))
    cfg = data_config(sys.argv[1], num_workers=1)
    shards = resolve_shards(cfg.train_split, manifest=cfg.manifest)
    loader = build_epoch_loader(shards, cfg, Collator(tokenizer(), 12), rank=0, world_size=1, seed=0,
                                accumulation=1, start=DataPosition(0))
    expected = len(loader)
    batches = sum(1 for _ in loader)
    print(f"batches={batches} expected={expected} received={received}", flush=True)
""")


def test_a_stop_signal_while_a_worker_starts_leaves_it_alive(tiny_shards, tmp_path: Path):
    """``scancel`` while an epoch's worker starts: the worker ignores the TERM, the rank still gets it once."""
    manifest = tiny_shards(32, 8)
    done = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_A_WORKER_STARTS, str(manifest), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "killed by signal" not in done.stderr, done.stderr[-3000:]
    counts = dict(part.split("=", 1) for part in done.stdout.split() if "=" in part)
    assert int(counts["batches"]) == int(counts["expected"]) > 0, done.stdout
    assert counts["received"] == "[15]", done.stdout
