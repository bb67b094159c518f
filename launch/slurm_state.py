"""Job state without accounting: submitit polls ``sacct``, which many clusters lack or disable.

When ``sacct`` fails, the state comes from ``squeue --states=all`` (the controller remembers a
finished job for ``MinJobAge``, 300 s by default); a job the controller has forgotten counts as
ended, and its result pickle, if any, says how. Without this, submitit leaves every state
``UNKNOWN`` and waits forever on a job that was cancelled or killed.
"""

from __future__ import annotations

import subprocess
import time

from submitit.core import logger
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

GONE = "GONE"  # no longer known to the controller and no accounting to ask: ended, outcome unknown
# States of a job that has not ended (squeue(1), "JOB STATE CODES"), plus submitit's own READY and UNKNOWN.
# submitit's list lacks SUSPENDED, REQUEUE_HOLD, STOPPED...: it would take a suspended job for a finished one.
UNFINISHED = frozenset({
    "READY", "UNKNOWN", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
    "STAGE_OUT", "RESIZING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD", "PREEMPTED",
})


def queue_info(watcher: SlurmInfoWatcher, job_ids: set[str]) -> dict[str, dict[str, str]]:
    """``sacct``-like info of ``job_ids`` (ids or ``<array>_<task>``) read from ``squeue``."""
    bases = sorted({job_id.split("_")[0] for job_id in job_ids})
    info: dict[str, dict[str, str]] = {}
    for base in bases:  # one id per call: squeue fails the whole call on a forgotten id
        done = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%N", "-j", base],
                              capture_output=True, text=True)
        rows = done.stdout.strip() if done.returncode == 0 else ""
        if rows:
            info.update(watcher.read_info("JobID|State|NodeList\n" + rows))
    for job_id in job_ids:
        info.setdefault(job_id, {"JobID": job_id, "State": GONE, "NodeList": ""})
    return info


class QueueWatcher(SlurmInfoWatcher):
    """submitit's watcher, falling back on ``squeue`` when ``sacct`` fails; a suspended or held job is not done."""

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        """Whether the job has ended (any state but those of ``UNFINISHED``)."""
        return self.get_state(job_id, mode=mode).upper() not in UNFINISHED

    def update(self) -> None:
        """Refresh the state of every registered, unfinished job."""
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        pending = self._registered - self._finished
        try:
            self._info_dict.update(self.read_info(subprocess.check_output(command, stderr=subprocess.PIPE)))
        except (OSError, subprocess.CalledProcessError) as err:
            logger.get_logger().debug(f"sacct unavailable ({err}); job state from squeue")
            self._info_dict.update(queue_info(self, pending))
        self._last_status_check = time.time()
        for job_id in pending:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)


class QueueJob(SlurmJob):
    """A submitit SLURM job whose state polling works without accounting."""

    watcher = QueueWatcher(delay_s=10)
