"""Preemption and time limits inside a submitit job: let the trainer save first, then requeue.

SLURM sends ``SIGUSR2`` (``#SBATCH --signal``) ``signal_delay_s`` seconds before the time limit
and submitit's handler, installed before our code runs, would call ``checkpoint()`` and requeue
at once, in the middle of a training step, on rank 0 only. The relay below takes the signal over
on every rank, asks the trainer in this process to stop (``pipeline.train.faults.request_stop``:
finish the step, save a checkpoint collectively, return; a request made while the trainer is still
starting up waits for it), and once the trainer has returned hands the signal to submitit's handler
on rank 0, which calls ``checkpoint()`` and requeues the job.

The relay also tells the job whether the trainer stopped before its end (on this signal, or on a stop
signal such as the ``SIGTERM`` of ``scancel`` or of a requeue by the scheduler): such a task must not
report a result, or a client waiting for the job would take the interrupted attempt for its outcome.
"""

from __future__ import annotations

import logging
import signal
import types
from collections.abc import Callable
from typing import Any

import submitit

from pipeline.train.faults import request_stop, take_unfinished, withdraw_stop_request

log = logging.getLogger(__name__)

Handler = Callable[[int, Any], Any] | int | None


class PreemptionRelay:
    """Context manager: while active, submitit's preemption signal asks the trainer to stop and is remembered."""

    def __init__(self) -> None:
        self.signal = submitit.JobEnvironment._usr_sig()
        self.received: int | None = None
        self.unfinished: str | None = None  # why the trainer stopped before its end (set on exit)
        self._submitit_handler: Handler = None

    def __enter__(self) -> PreemptionRelay:
        self._submitit_handler = signal.getsignal(self.signal)
        signal.signal(self.signal, self._relay)
        take_unfinished()  # an earlier trainer's stop is not this one's
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(self.signal, self._submitit_handler or signal.SIG_DFL)
        withdraw_stop_request()  # the trainer never started: its request must not stop a later one
        self.unfinished = take_unfinished()

    def _relay(self, signum: int, frame: types.FrameType | None) -> None:
        """Remember the signal and ask the trainer running in this process to stop."""
        name = signal.Signals(signum).name
        if self.received is None:
            log.warning("caught %s: asking the trainer to checkpoint and stop", name)
        self.received = signum
        request_stop(f"SLURM sent {name} (preemption or time limit)")

    @property
    def preempted(self) -> bool:
        """Whether the preemption / time-limit signal arrived while the relay was active."""
        return self.received is not None

    def hand_over(self) -> None:
        """Give the remembered signal to submitit's handler (rank 0: checkpoint() then requeue and exit)."""
        handler = self._submitit_handler
        if self.received is None or not callable(handler):
            return
        handler(self.received, None)
