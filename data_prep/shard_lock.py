"""One writer per shard: byte-range locks that refuse a second sharder on the same ``--out``.

Each run locks, for every shard it will write, byte ``index`` of ``OUT/.shard_state/<split>.lock``
(POSIX record locks: ``fcntl.lockf``, which NFS v4 and Lustre honour across nodes). A second run
planning any of the same shards is refused with the shard and the holder's process id; the tasks
of one job array write disjoint shards, so their locks never overlap and they run side by side.
The kernel releases the locks when the process ends, SIGKILL included, so a crash leaves no stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

from data_prep.shard_writer import STATE_DIR


class ShardLockError(RuntimeError):
    """Another sharder is writing some of this run's shards into the same output."""


def _holder(fd: int, index: int) -> str:
    """Who holds byte ``index`` of the lock file (``pid N``), as far as the kernel tells."""
    probe = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, index, 1, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
    except OSError:
        return "another process"
    pid = struct.unpack("hhqqi", answer)[4]
    return f"process {pid}" if pid > 0 else "another process"


class ShardLocks:
    """Holds the locks of one run's shards until :meth:`release` (or process exit)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.files: dict[str, int] = {}

    def acquire(self, shards: Iterable[tuple[str, int, str]]) -> None:
        """Lock ``(split, index, relative path)`` shards without waiting; ShardLockError naming the first taken one."""
        folder = self.out_dir / STATE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        for split, index, relative in shards:
            if split not in self.files:
                self.files[split] = os.open(folder / f"{split}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fd = self.files[split]
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, index, os.SEEK_SET)
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                holder = _holder(fd, index)
                self.release()
                raise ShardLockError(
                    f"{self.out_dir}: shard {relative} is being written by {holder} on {socket.gethostname()} or another "
                    "node: wait for that sharder, or give this one another --out (job-array tasks need distinct --task-index)"
                ) from None

    def release(self) -> None:
        """Drop every lock of this run."""
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()
