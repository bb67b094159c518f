"""Job state without accounting: which states count as ended for a client waiting on a job."""

from __future__ import annotations

import pytest

from launch.slurm_state import GONE, QueueWatcher


@pytest.mark.parametrize("state, done", [
    ("RUNNING", False), ("PENDING", False), ("REQUEUED", False), ("COMPLETING", False),
    ("SUSPENDED", False), ("REQUEUE_HOLD", False), ("STOPPED", False),  # submitit alone would say done
    ("COMPLETED", True), ("FAILED", True), ("CANCELLED by 0", True), ("TIMEOUT", True), ("NODE_FAIL", True),
    (GONE, True),
])
def test_suspended_or_held_job_is_not_done(state: str, done: bool) -> None:
    watcher = QueueWatcher(delay_s=3600)
    watcher.register_job("42")
    watcher._info_dict["42"] = {"JobID": "42", "State": state, "NodeList": ""}
    assert watcher.is_done("42", mode="cache") is done
