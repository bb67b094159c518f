"""Reading shards when some cannot be read: the one error handler, rate-limited warnings, bounded retries.

A bad sample or shard goes to :class:`CorruptCounter`, which counts it, remembers the last error per
shard and logs it through a :class:`RateLimitedLog` (the first few in full, then one summary line
per interval), so an unreadable store cannot flood the log. A pass over a worker's shards that
yields no sample at all is retried ``data.read_retries`` times, then :class:`NoReadableShard` stops
the run with the shards and their errors (a ``pipe:`` command's exit status and command line).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.data.shards import ShardError
from pipeline.shard_format import META_MEMBER, REPORT_EMBEDDING_MEMBER, TEXT_MEMBER

log = logging.getLogger("pipeline.data.loader")

REQUIRED_MEMBERS = (TEXT_MEMBER, META_MEMBER)
EMBEDDING_MEMBER = REPORT_EMBEDDING_MEMBER


@dataclass
class ReadingConfig:
    """How the loader treats unreadable shards (YAML section ``data.reading``)."""

    retries: int  # passes in a row without any sample before the run stops
    retry_wait_s: float  # wait before retry k: k * retry_wait_s
    warn_burst: int  # corrupt-sample warnings logged in full per worker ...
    warn_interval_s: float  # ... then one summary line per this many seconds
    verify_sha256: bool  # hash every local shard against the manifest before training (sizes are always checked)

    def __post_init__(self) -> None:
        for ok, message in [
            (self.retries >= 0, f"retries must be >= 0, got {self.retries}"),
            (self.retry_wait_s >= 0, f"retry_wait_s must be >= 0, got {self.retry_wait_s}"),
            (self.warn_burst >= 1, f"warn_burst must be >= 1, got {self.warn_burst}"),
            (self.warn_interval_s > 0, f"warn_interval_s must be > 0, got {self.warn_interval_s}"),
        ]:
            if not ok:
                raise ValueError(message)


class NoReadableShard(ShardError):
    """No sample could be read from a worker's shards after the configured retries."""


class RateLimitedLog:
    """Log the first ``burst`` messages, then at most one line per ``interval_s`` saying how many were held back."""

    def __init__(self, burst: int, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.interval_s, self.clock = burst, interval_s, clock
        self.seen, self.held, self.last = 0, 0, float("-inf")

    def warning(self, message: str, *args: Any) -> None:
        """Log ``message % args`` unless the budget is spent; then a summary at most once per interval."""
        self.seen += 1
        now = self.clock()
        if self.seen <= self.burst:
            log.warning(message, *args)
            return
        self.held += 1
        if now - self.last >= self.interval_s:
            log.warning(message + " (%d similar warnings held back; next summary in %.0f s)",
                        *args, self.held - 1, self.interval_s)
            self.held, self.last = 0, now


def _shard_and_error(exn: Exception) -> tuple[str, str]:
    """(the shard URL an error is about, or '?'; the error as one line without the stream objects webdataset adds)."""
    strings = [a for a in getattr(exn, "args", ()) if isinstance(a, str)]
    url = strings.pop() if len(strings) > 1 else "?"  # webdataset appends (stream, url) to the error's args
    text = "; ".join(strings) if strings and url != "?" else str(exn)
    return url, " ".join(f"{type(exn).__name__}: {text}".split())


class CorruptCounter:
    """The one error handler of the pipeline: count the bad sample or shard, warn (rate-limited), continue."""

    def __init__(self, start: int = 0, warn: RateLimitedLog | None = None) -> None:
        self.count = start
        self.warn = warn or RateLimitedLog(burst=20, interval_s=30.0)  # the figures' one-off read
        self.last_errors: dict[str, str] = {}

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        url, text = _shard_and_error(exn)
        self.last_errors[url] = text
        self.warn.warning("skipping corrupt sample or unreadable shard (%d so far in this worker): %s", self.count, text)
        return True


def check_complete(raw: dict[str, Any], with_embedding: bool) -> None:
    """ValueError when a tar sample lacks a member every sample of the shard set has (e.g. a truncated tar)."""
    required = (*REQUIRED_MEMBERS, *((EMBEDDING_MEMBER,) if with_embedding else ()))
    missing = [m for m in required if m not in raw]
    if missing:
        raise ValueError(f"incomplete sample: no {', '.join(missing)} member (has {sorted(k for k in raw if not k.startswith('__'))})")


def bounded_passes(
    make_pass: Callable[[int], Iterable[dict[str, Any]]], shards: Callable[[int], list[str]], cfg: ReadingConfig,
    errors: CorruptCounter,
) -> Iterator[dict[str, Any]]:
    """Endless passes ``make_pass(i)``; after ``cfg.retries`` + 1 passes in a row without a sample, raise NoReadableShard."""
    retries = cfg.retries
    empty, pass_index = 0, 0
    while True:
        got = False
        for sample in make_pass(pass_index):
            got = True
            yield sample
        empty = 0 if got else empty + 1
        if 0 < empty <= retries:
            log.warning("no sample in a whole pass over %d shard(s); retry %d of %d (data.reading.retries)",
                        len(shards(pass_index)), empty, retries)
            time.sleep(empty * cfg.retry_wait_s)
        if empty > retries:
            urls = shards(pass_index)
            shown = "; ".join(f"{u}: {errors.last_errors.get(u, 'no sample')}" for u in urls[:3])
            more = f" and {len(urls) - 3} more" if len(urls) > 3 else ""
            last = next(reversed(errors.last_errors.values()), "no error recorded")
            raise NoReadableShard(
                f"no readable sample in {len(urls)} shard(s) after {retries} retries (data.reading.retries): {shown}{more}"
                f"; last error: {last}. Check the shard files or the pipe: command (credentials, URL)"
            )
        pass_index += 1
