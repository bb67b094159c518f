"""The preemption relay with real signals: the trainer is asked to stop first, submitit gets the signal after."""

from __future__ import annotations

import os
import signal
import time

import pytest

from launch.preemption import PreemptionRelay
from pipeline.train.faults import (
    STOP_SIGNALS,
    StopRequest,
    note_unfinished,
    take_unfinished,
    withdraw_stop_request,
)


class RecordingTrainer(StopRequest):
    """The trainer's stop request, recording every request it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def request(self, reason: str) -> None:
        self.requests.append(reason)
        super().request(reason)


@pytest.fixture
def restore_signals():
    """Put back the handlers this test replaces; drop a stop request no trainer took."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, *STOP_SIGNALS)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    withdraw_stop_request()


def _wait_for(predicate, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_relay_stops_trainer_then_hands_signal_to_submitit(restore_signals) -> None:
    submitit_calls: list[int] = []
    trainer = RecordingTrainer()
    signal.signal(signal.SIGUSR2, lambda signum, frame: submitit_calls.append(signum))  # submitit's handler
    with PreemptionRelay() as relay:
        assert relay.signal == signal.SIGUSR2
        trainer.install()  # the trainer listens
        os.kill(os.getpid(), signal.SIGUSR2)  # SLURM's --signal
        _wait_for(lambda: trainer.requests)
        trainer.uninstall()
        assert len(trainer.requests) == 1 and "SIGUSR2" in trainer.requests[0] and submitit_calls == []
    assert relay.preempted and trainer.requested
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
    trainer = RecordingTrainer()
    signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    with PreemptionRelay() as relay:
        os.kill(os.getpid(), signal.SIGUSR2)
        _wait_for(lambda: relay.preempted)
        assert relay.preempted and trainer.requests == []
        trainer.install()  # the trainer starts: the waiting request reaches it at once
        trainer.uninstall()
    assert len(trainer.requests) == 1 and "SIGUSR2" in trainer.requests[0]


def test_request_no_trainer_took_is_dropped_when_the_relay_ends(restore_signals) -> None:
    signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    with PreemptionRelay() as relay:
        os.kill(os.getpid(), signal.SIGUSR2)
        _wait_for(lambda: relay.preempted)
    later = RecordingTrainer()
    later.install()  # a later trainer in this process (the one before never started)
    later.uninstall()
    assert relay.preempted and later.requests == [] and not later.requested


def test_relay_says_whether_the_trainer_stopped_before_its_end(restore_signals) -> None:
    note_unfinished("an earlier trainer's stop")  # must not be taken for this trainer's
    with PreemptionRelay() as relay:
        trainer = StopRequest()
        trainer.install()
        trainer.uninstall()  # ran to its end
    assert relay.unfinished is None
    with PreemptionRelay() as relay:
        trainer = StopRequest()
        trainer.install()
        note_unfinished("received SIGTERM")  # what fit() records when it stops on a request
        trainer.uninstall()
    assert relay.unfinished == "received SIGTERM" and take_unfinished() is None  # taken once

