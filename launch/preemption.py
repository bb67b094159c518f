"""Preemption and time limits inside a submitit job: let the trainer save first, then requeue.

SLURM sends ``SIGUSR2`` (``#SBATCH --signal``) ``signal_delay_s`` seconds before the time limit
and submitit's handler, installed before our code runs, would call ``checkpoint()`` and requeue
at once, in the middle of a training step, on rank 0 only. The relay below takes the signal over
on every rank, asks the trainer to stop (the trainer's own stop signal, ``SIGUSR1``: finish the
step, save a checkpoint collectively, return), and once the trainer has returned hands the
signal to submitit's handler on rank 0, which calls ``checkpoint()`` and requeues the job.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import submitit

log = logging.getLogger(__name__)

# The trainer's "finish the step, checkpoint, exit 0" signal (pipeline.train, issue 6).
TRAINER_STOP_SIGNAL = signal.SIGUSR1

Handler = Callable[[int, Any], Any] | int | None


def _trainer_listens() -> bool:
    """Whether a handler (the trainer's) is installed for the trainer's stop signal."""
    return callable(signal.getsignal(TRAINER_STOP_SIGNAL))


def _deliver_when_listening(poll_s: float = 0.2) -> None:
    """Send the trainer's stop signal to this process as soon as the trainer has installed its handler."""
    while not _trainer_listens():
        time.sleep(poll_s)
    os.kill(os.getpid(), TRAINER_STOP_SIGNAL)


class PreemptionRelay:
    """Context manager: while active, submitit's preemption signal asks the trainer to stop and is remembered."""

    def __init__(self) -> None:
        self.signal = submitit.JobEnvironment._usr_sig()
        self.received: int | None = None
        self._submitit_handler: Handler = None

    def __enter__(self) -> PreemptionRelay:
        self._submitit_handler = signal.getsignal(self.signal)
        signal.signal(self.signal, self._relay)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(self.signal, self._submitit_handler or signal.SIG_DFL)

    def _relay(self, signum: int, frame: types.FrameType | None) -> None:
        """Remember the signal and forward the stop request to the trainer running in this process."""
        if self.received is None:
            log.warning("caught %s: asking the trainer to checkpoint and stop", signal.Signals(signum).name)
        self.received = signum
        if _trainer_listens():
            os.kill(os.getpid(), TRAINER_STOP_SIGNAL)
        else:  # still starting up: SIGUSR1 would kill the task unsaved, so deliver it once the trainer listens
            log.warning("the trainer does not listen for %s yet; the stop request waits for it", TRAINER_STOP_SIGNAL.name)
            threading.Thread(target=_deliver_when_listening, name="stop-request", daemon=True).start()

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
