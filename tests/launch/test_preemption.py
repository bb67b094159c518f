"""The preemption relay with real signals: the trainer is asked to stop first, submitit gets the signal after."""

from __future__ import annotations

import os
import signal
import time

import pytest

from launch.preemption import TRAINER_STOP_SIGNAL, PreemptionRelay


@pytest.fixture
def restore_signals():
    """Put back the handlers this test replaces."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _wait_for(predicate, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_relay_stops_trainer_then_hands_signal_to_submitit(restore_signals) -> None:
    submitit_calls: list[int] = []
    trainer_stops: list[int] = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: submitit_calls.append(signum))  # submitit's handler
    with PreemptionRelay() as relay:
        assert relay.signal == signal.SIGUSR2
        signal.signal(TRAINER_STOP_SIGNAL, lambda signum, frame: trainer_stops.append(signum))  # the trainer's
        os.kill(os.getpid(), signal.SIGUSR2)  # SLURM's --signal
        _wait_for(lambda: trainer_stops)
        assert trainer_stops == [TRAINER_STOP_SIGNAL] and submitit_calls == []
    assert relay.preempted
    relay.hand_over()
    assert submitit_calls == [signal.SIGUSR2]
    assert signal.getsignal(signal.SIGUSR2) is not relay._relay


def test_no_signal_no_hand_over(restore_signals) -> None:
    submitit_calls: list[int] = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: submitit_calls.append(signum))
    with PreemptionRelay() as relay:
        pass
    relay.hand_over()
    assert not relay.preempted and submitit_calls == []


def test_signal_before_trainer_listens_is_delivered_once_it_does(restore_signals) -> None:
    trainer_stops: list[int] = []
    signal.signal(TRAINER_STOP_SIGNAL, signal.SIG_DFL)  # default action of SIGUSR1 would terminate us
    signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    with PreemptionRelay() as relay:
        os.kill(os.getpid(), signal.SIGUSR2)
        _wait_for(lambda: relay.preempted)
        time.sleep(0.3)
        assert relay.preempted and trainer_stops == []
        signal.signal(TRAINER_STOP_SIGNAL, lambda signum, frame: trainer_stops.append(signum))  # trainer starts
        _wait_for(lambda: trainer_stops)
    assert trainer_stops == [TRAINER_STOP_SIGNAL]
