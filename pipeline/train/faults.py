"""Faults: stop requests (SIGTERM/SIGINT/SIGUSR1 or in-process), non-finite losses agreed across ranks, injected NaNs for tests."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.job_env import STOP_SIGNALS, is_distributed

log = logging.getLogger(__name__)


class StopRequest:
    """Why this rank was asked to stop (a stop signal, :func:`request_stop`, the time budget); None: keep going.

    The loop then finishes its step, checkpoints and exits 0.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous = {}

    def install(self) -> None:
        """Catch the stop signals (main thread only) and take this process's in-process requests, earlier ones too."""
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        _in_process.listener = self  # listen first, then take a pending request: none can fall in between
        _in_process.unfinished = None
        pending, _in_process.pending = _in_process.pending, None
        if pending is not None:
            self.request(pending)

    def uninstall(self) -> None:
        """Restore the previous handlers and stop taking in-process requests."""
        if _in_process.listener is self:
            _in_process.listener = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def request(self, reason: str) -> None:
        """Stop after the current step; ``reason`` says why (the first one is kept)."""
        log.warning("%s: finishing this step, then checkpoint and exit", reason)
        if self.reason is None:
            self.reason = reason

    def _handle(self, signum: int, _frame) -> None:
        self.request(f"received {signal.Signals(signum).name}")

    @property
    def requested(self) -> bool:
        """Whether this rank was asked to stop."""
        return self.reason is not None


@dataclass
class _InProcessRequests:
    """The trainer listening in this process, or a stop request made before it listened."""

    listener: StopRequest | None = None
    pending: str | None = None
    unfinished: str | None = None  # why the last trainer of this process stopped before its end


_in_process = _InProcessRequests()


def request_stop(reason: str = "stop requested in-process") -> None:
    """Ask the trainer in this process to stop as a stop signal would; kept until it listens if it does not yet.

    Call it from the main thread (a signal handler runs there); it takes no lock.
    """
    listener = _in_process.listener
    if listener is not None:
        listener.request(reason)
    else:
        _in_process.pending = reason


def note_unfinished(reason: str) -> None:
    """Record that the trainer of this process stopped before its end because of ``reason`` (not the time budget)."""
    _in_process.unfinished = reason


def take_unfinished() -> str | None:
    """Why the last trainer of this process stopped before its end, then forget it; None: it ran to its end."""
    reason, _in_process.unfinished = _in_process.unfinished, None
    return reason


def withdraw_stop_request() -> None:
    """Forget a request that no trainer has taken (so that a later trainer in this process is not stopped by it)."""
    _in_process.pending = None


class BadStepError(RuntimeError):
    """Too many non-finite losses in a row."""


class BadStepGuard:
    """Counts skipped (non-finite) steps; raises after ``limit`` in a row."""

    def __init__(self, limit: int) -> None:
        self.limit, self.consecutive, self.total = limit, 0, 0

    def record(self, skipped: bool, step: int) -> None:
        """Update the counts after a step; abort with a clear message after ``limit`` bad steps in a row."""
        if not skipped:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        log.warning("step %d: non-finite loss on at least one rank, step skipped on all ranks (%d in a row, %d in all)",
                    step, self.consecutive, self.total)
        if self.consecutive >= self.limit:
            raise BadStepError(
                f"{self.consecutive} consecutive steps had a non-finite loss (last: step {step}; "
                f"faults.max_consecutive_bad_steps={self.limit}): lower optim.lr, check the data, or use fp32/bf16"
            )


BUDGET_STOP = "run.max_minutes reached"  # the StopRequest reason of a planned end (exported like a finished run)
OTHER_RANK_STOP = "another rank was asked to stop"


def agree_across_ranks(loss: torch.Tensor, stop: StopRequest) -> tuple[bool, bool]:
    """(skip, stop) decided by all ranks together: skip if the loss is non-finite anywhere, stop if any rank was asked to.

    The kind of stop is agreed too, since it decides whether every rank joins the export collective:
    a planned end (``BUDGET_STOP``) only when no rank got a signal or request; afterwards every rank's
    ``stop.reason`` is ``BUDGET_STOP`` exactly when that is the agreed kind.
    """
    kind = 0.0 if not stop.requested else (1.0 if stop.reason == BUDGET_STOP else 2.0)
    flags = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0, kind], device=loss.device)
    if is_distributed():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    agreed = int(flags[1].item())
    if agreed == 1:
        stop.reason = BUDGET_STOP
    elif agreed == 2 and stop.reason in (None, BUDGET_STOP):
        stop.reason = OTHER_RANK_STOP
    return bool(flags[0] > 0), agreed > 0


def inject_nan(terms_loss: torch.Tensor, step: int, rank: int, steps: list[int], on_rank: int) -> torch.Tensor:
    """The loss, made NaN at the configured steps on the configured rank (fault-injection for tests)."""
    if step in steps and rank == on_rank:
        log.warning("step %d: injecting a NaN loss on rank %d (faults.inject_nan_steps)", step, rank)
        return terms_loss * float("nan")
    return terms_loss
