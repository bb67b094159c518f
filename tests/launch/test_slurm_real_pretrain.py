"""Pre-training through real sbatch on the session's two-node SLURM (launch/local_slurm/cluster.sh).

Three jobs: an uninterrupted reference (test 1); one job, submitted with ``--wait``, that is preempted
(``scancel --signal=USR2``) and later requeued by the scheduler (``scontrol requeue``), checked by tests 2
and 3; and a job that fails, which ``--wait`` must report.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fake_slurm import EXAMPLE
from test_slurm_pretrain import TINY, train_overrides

from launch.pretrain_run import ATTEMPT_PARAM
from launch.slurm_config import load_slurm_config
from launch.slurm_preflight import preflight
from launch.slurm_pretrain import build_job, main, submit
from launch.slurm_submit import render_sbatch
from pipeline.train.checkpoint import COMPLETE, tag_for

MAX_STEPS = 8
# The example SLURM config sized for the local cluster: 2 nodes x 1 CPU task, any partition.
SLURM = ["nodes=2", "gpus_per_node=0", "tasks_per_node=1", "cpus_per_task=1", "partition=null", "mem_gb=null",
         "exclusive=false", "time=10", "signal_delay_s=60", "setup=[]"]
DEADLINE_S = 300  # per wait; generous: two cores shared with other work
HEADER = re.compile(r"job (\d+) attempt (\d+) \(SLURM_RESTART_COUNT=(\d+)\): rank (\d+)/2")
CHECKPOINTED = re.compile(r"checkpoint \S+ complete \(step (\d+)\)")
RESUMED = re.compile(r"resumed from \S+/step(\d{9}): ")
PLANTED = tag_for(99)  # a newer checkpoint that died before its COMPLETE marker


def _two_nodes(tmp: Path):
    """The SLURM config of these jobs, logging under ``tmp``."""
    return load_slurm_config(EXAMPLE, [*SLURM, f"log_dir={tmp}/slurm/%j"])


def _overrides(tmp: Path, shards: Path) -> tuple[str, list[str]]:
    """(MLflow URI, training overrides) of a tiny 2-node run with its own run folder and MLflow store."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return uri, [*train_overrides(shards, tmp / "runs", uri, max_steps=MAX_STEPS), "checkpoint.export_at_end=true"]


@pytest.fixture(scope="module")
def task_env(repo_root: Path):
    """What sbatch exports to the tasks: the repo on PYTHONPATH, one thread, DeepSpeed on CPU."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1", "SISTA_LOG_LEVEL": "INFO",
                           "DS_ACCELERATOR": "cpu"}.items():
            patch.setenv(key, value)
        patch.chdir(repo_root)  # main() submits from the working directory
        yield


def _logs(folder: Path, job_id: str) -> dict[int, str]:
    """The stderr log of each task (both attempts append to the same file)."""
    paths = {k: folder / f"{job_id}_{k}_log.err" for k in (0, 1)}
    return {k: p.read_text() if p.is_file() else "" for k, p in paths.items()}


def _by_restart(text: str) -> dict[int, str]:
    """A task's log cut at each attempt's first line: SLURM_RESTART_COUNT -> that attempt's part of the log."""
    heads = list(HEADER.finditer(text))
    return {int(h.group(3)): text[h.start():(heads[i + 1].start() if i + 1 < len(heads) else len(text))]
            for i, h in enumerate(heads)}


def _losses(uri: str, run_id: str) -> list[tuple[int, float]]:
    """Every (step, loss) the run logged, by step (a step logged twice shows twice)."""
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, "loss"))


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def _wait(what: str, found: Callable[[], Any], launcher: Future, logs: Callable[[], object]) -> Any:
    """Poll ``found`` until it returns something truthy; fail naming ``what`` if the launcher ended or time ran out."""
    deadline = time.monotonic() + DEADLINE_S
    while not (result := found()):
        if launcher.done():
            pytest.fail(f"slurm_pretrain --wait returned {launcher.result()!r} before {what}: {logs()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {DEADLINE_S} s: {logs()}")
        time.sleep(0.1)
    return result


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, phantom_shards, tmp_path_factory, repo_root, task_env):
    """One uninterrupted 2-node run: (tmp, job, submitted, uri, results, logs)."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("real_pretrain")
    uri, overrides = _overrides(tmp, phantom_shards[0])
    slurm = _two_nodes(tmp)
    preflight(slurm, render_sbatch(slurm, repo_root))
    job = build_job(str(TINY), overrides, slurm)
    assert MlflowClient(uri).get_run(job.mlflow.run_id).info.status == "SCHEDULED"  # created at submission
    submitted = submit(job, repo_root)
    try:
        results = submitted.results()
    finally:
        logs = _logs(Path(submitted.paths.folder), submitted.job_id)
    return tmp, job, submitted, uri, results, logs


@pytest.fixture(scope="module")
def interrupted(slurm_cluster, phantom_shards, tmp_path_factory, task_env) -> dict[str, Any]:
    """One 2-node job through ``slurm_pretrain.py --wait``, interrupted twice while the launcher waits.

    USR2 after its step-2 checkpoint (submitit requeues it: SLURM_RESTART_COUNT=1), then, once the resumed
    attempt has written a checkpoint of its own, ``scontrol requeue`` (SLURM_RESTART_COUNT=2) and, while the
    job waits to restart, a newer checkpoint folder without its COMPLETE marker planted next to the others.
    """
    tmp = tmp_path_factory.mktemp("interrupted")
    uri, overrides = _overrides(tmp, phantom_shards[0])
    argv = ["--wait", "--config", str(TINY), "--slurm", str(EXAMPLE), *overrides,
            *(f"slurm.{o}" for o in SLURM), f"slurm.log_dir={tmp}/slurm/%j"]
    ckpts = tmp / "runs" / "slurm" / "checkpoints"
    seen: dict[str, Any] = {"tmp": tmp, "uri": uri}
    with ThreadPoolExecutor(1) as pool:
        launcher = pool.submit(main, argv)
        submitted = _wait("submission", lambda: next((tmp / "slurm").glob("*/*_submitted.pkl"), None), launcher,
                          lambda: "nothing submitted")
        folder, job_id = submitted.parent, submitted.parent.name
        seen.update(folder=folder, job_id=job_id)

        def logs() -> dict[int, str]:
            return _logs(folder, job_id)

        try:
            _wait("step-2 checkpoint", (ckpts / tag_for(2) / COMPLETE).is_file, launcher, logs)
            subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
            resumed = _wait("resumed attempt", lambda: RESUMED.search(_by_restart(logs()[0]).get(1, "")), launcher,
                            logs)
            own = tag_for(int(resumed.group(1)) + 1)
            _wait("checkpoint of the resumed attempt", (ckpts / own / COMPLETE).is_file, launcher, logs)
            subprocess.run(["scontrol", "requeue", job_id], check=True)
            seen["requeued_at_step"] = max(_steps(tmp / "runs" / "slurm"))
            newest = sorted(p for p in ckpts.iterdir() if (p / COMPLETE).is_file())[-1]
            shutil.copytree(newest, ckpts / PLANTED, ignore=shutil.ignore_patterns(COMPLETE))
            seen["code"] = launcher.result(timeout=DEADLINE_S)
            seen["at_return"] = _steps(tmp / "runs" / "slurm"), (tmp / "runs" / "slurm" / "export").is_dir()
        finally:
            if not launcher.done():
                subprocess.run(["scancel", job_id], check=False)
    seen["logs"] = logs()
    with (folder / f"{job_id}_submitted.pkl").open("rb") as f:
        seen["run_id"] = pickle.load(f).function.mlflow.run_id  # the job's MLflow run, as its tasks got it
    return seen


@pytest.mark.slurm
def test_two_node_pretrain_on_real_slurm(uninterrupted) -> None:
    """Ranks from SLURM's environment on node1/node2, gloo across them: trains, checkpoints, exports; MLflow run FINISHED."""
    from mlflow.tracking import MlflowClient

    tmp, job, submitted, uri, results, text = uninterrupted
    assert results == [0, 0], text
    for rank, node in ((0, "node1"), (1, "node2")):
        assert f"rank {rank}/2 (local 0) on {node}, rendezvous node1:" in text[rank], text[rank]
        assert f"job {submitted.job_id} attempt 0 (SLURM_RESTART_COUNT=0): rank {rank}/2" in text[rank]
    assert "per-device 4 x 2 ranks" in text[0] and f"step {MAX_STEPS}/{MAX_STEPS}" in text[0]  # one gloo group
    run_dir = tmp / "runs" / "slurm"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step"))[-1] == (
        tag_for(MAX_STEPS))
    assert _steps(run_dir) == list(range(1, MAX_STEPS + 1))
    assert (run_dir / "export" / "model_config.yaml").is_file()
    run = MlflowClient(uri).get_run(job.mlflow.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["slurm.nodes"] == "2"
    assert [step for step, _ in _losses(uri, job.mlflow.run_id)] == _steps(run_dir)


@pytest.mark.slurm
def test_usr2_checkpoints_requeues_and_resumes(uninterrupted, interrupted) -> None:
    """scancel --signal=USR2 mid-run: both ranks checkpoint, the same job id requeues (SLURM_RESTART_COUNT=1) and
    resumes; the per-step losses equal the uninterrupted run's bit for bit; one MLflow run; --wait waited it out."""
    from mlflow.tracking import MlflowClient

    _, ref_job, _, ref_uri, _, _ = uninterrupted
    seen, job_id = interrupted, interrupted["job_id"]
    text = seen["logs"]
    assert seen["code"] == 0, text
    assert seen["at_return"] == (list(range(1, MAX_STEPS + 1)), True)  # --wait waited through both requeues
    run_dir = seen["tmp"] / "runs" / "slurm"
    for rank in (0, 1):
        parts = _by_restart(text[rank])
        assert sorted(parts) == [0, 1, 2], text[rank]
        assert "caught SIGUSR2: asking the trainer to checkpoint and stop" in parts[0], parts[0]
        assert f"job {job_id} attempt 1 (SLURM_RESTART_COUNT=1): rank {rank}/2" in parts[1], parts[1]
    first, second = _by_restart(text[0])[0], _by_restart(text[0])[1]
    assert "requeueing as attempt 1" in first
    stopped, resumed = re.search(r"stopped at step (\d+) ", first), RESUMED.search(second)
    assert stopped and resumed and resumed.group(1) == f"{int(stopped.group(1)):09d}", (first, second)  # its save
    assert _steps(run_dir) == list(range(1, MAX_STEPS + 1))
    assert _losses(seen["uri"], seen["run_id"]) == _losses(ref_uri, ref_job.mlflow.run_id)  # bit for bit
    run = MlflowClient(seen["uri"]).get_run(seen["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["slurm.attempts"] == "3"
    assert [run.data.params[f"{ATTEMPT_PARAM}{n}"] for n in range(3)] == [job_id] * 3


@pytest.mark.slurm
def test_scheduler_requeue_resumes_from_newest_complete_checkpoint(interrupted) -> None:
    """scontrol requeue mid-run: SIGTERM, every rank saves and reports no result, the same job id restarts with
    SLURM_RESTART_COUNT=2 and resumes from the newest complete checkpoint, not from a newer incomplete one."""
    seen, job_id = interrupted, interrupted["job_id"]
    ckpts = seen["tmp"] / "runs" / "slurm" / "checkpoints"
    for rank in (0, 1):
        parts = _by_restart(seen["logs"][rank])
        assert "received SIGTERM: finishing this step" in parts[1], parts[1]
        assert "this attempt reports no result" in parts[1], parts[1]  # no result pickle: --wait kept waiting
        assert f"job {job_id} attempt 1 (SLURM_RESTART_COUNT=2): rank {rank}/2" in parts[2], parts[2]
    before, after = _by_restart(seen["logs"][0])[1], _by_restart(seen["logs"][0])[2]
    newest = max(int(step) for step in CHECKPOINTED.findall(before))  # complete when the job restarted
    assert newest >= seen["requeued_at_step"]  # the requeue came mid-run, after that step
    resumed = RESUMED.search(after)
    assert resumed and int(resumed.group(1)) == newest, after
    assert not (ckpts / PLANTED / COMPLETE).exists() and (ckpts / PLANTED).is_dir()  # passed over, left alone
    assert newest < MAX_STEPS and f"step {MAX_STEPS}/{MAX_STEPS}" in after


@pytest.mark.slurm
def test_wait_exits_nonzero_when_the_job_fails(slurm_cluster, phantom_shards, tmp_path, task_env,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """slurm_pretrain --wait on a job whose trainer fails (no such manifest): exit 1 naming the job and the error."""
    _, overrides = _overrides(tmp_path, phantom_shards[0])
    overrides = [o for o in overrides if not o.startswith("data.manifest=")]
    argv = ["--wait", "--config", str(TINY), "--slurm", str(EXAMPLE), *overrides,
            f"data.manifest={tmp_path / 'no-such-shards' / 'manifest.json'}", *(f"slurm.{o}" for o in SLURM),
            "slurm.nodes=1", f"slurm.log_dir={tmp_path}/slurm/%j"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    job_id = re.search(r"submitted job (\d+)", out).group(1)
    assert f"job {job_id} failed" in err and "pipeline.train exited with code" in err, err
    assert "no-such-shards" in (tmp_path / "slurm" / job_id / f"{job_id}_0_log.err").read_text()
