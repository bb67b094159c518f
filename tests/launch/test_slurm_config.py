"""The SLURM config and the sbatch script it turns into (no scheduler needed)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from fake_slurm import EXAMPLE, EXAMPLE_SHARD, sbatch_options

from launch.slurm_config import load_slurm_config, parse_time_minutes, split_overrides
from launch.slurm_submit import render_sbatch
from pipeline.config import ConfigError


@pytest.mark.parametrize("nodes", [1, 4])
def test_sbatch_script_for_nodes_times_8_gpus(nodes: int, tmp_path: Path) -> None:
    overrides = [
        f"nodes={nodes}", "account=rad-lab", "qos=high", "constraint=h100", "mem_gb=480", "time=1-12:00:00",
        "extra_sbatch={reservation: vlp, mail-type: END}", "setup=[module load cuda/12.4, source env.sh]",
        "srun_args=[--cpu-bind=cores]", "python=apptainer exec --nv sista.sif python",
    ]
    cfg = load_slurm_config(EXAMPLE, overrides)
    script = render_sbatch(cfg, tmp_path)
    options = sbatch_options(script)
    folder = tmp_path / "runs" / "slurm" / "%j"
    assert options == {
        "job-name": "sista-pretrain",
        "partition": "gpu",
        "account": "rad-lab",
        "qos": "high",
        "time": str(36 * 60),
        "nodes": str(nodes),
        "ntasks-per-node": "8",
        "gpus-per-node": "8",
        "cpus-per-task": "12",
        "mem": "480G",
        "constraint": "h100",
        "exclusive": True,
        "signal": "USR2@180",
        "reservation": "vlp",
        "mail-type": "END",
        "chdir": str(tmp_path),
        "output": f"{folder}/%j_0_log.out",
        "error": f"{folder}/%j_0_log.err",
        "open-mode": "append",
        "wckey": "submitit",
    }
    assert script.startswith("#!/bin/bash\n")
    body = script.split("# setup\n", 1)[1]
    assert body.index("module load cuda/12.4") < body.index("source env.sh") < body.index("srun ")
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--cpu-bind=cores" in srun
    assert srun.endswith(f"apptainer exec --nv sista.sif python -u -m submitit.core._submit {folder}")
    assert nodes * 8 == cfg.world_size


def test_defaults_without_optional_directives(tmp_path: Path) -> None:
    cfg = load_slurm_config(EXAMPLE, ["partition=null", "exclusive=false", "mem_gb=null", "time=90"])
    options = sbatch_options(render_sbatch(cfg, tmp_path))
    for absent in ("partition", "account", "qos", "constraint", "exclusive", "mem"):
        assert absent not in options
    assert options["time"] == "90"
    srun = next(line for line in render_sbatch(cfg, tmp_path).splitlines() if line.startswith("srun "))
    assert srun.endswith(f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {tmp_path}/runs/slurm/%j")


def test_job_array_script(tmp_path: Path) -> None:
    cfg = load_slurm_config(EXAMPLE_SHARD, ["array_tasks=3", "array_parallelism=2"])
    options = sbatch_options(render_sbatch(cfg, tmp_path, array_size=3))
    assert options["array"] == "0-2%2"
    assert options["ntasks-per-node"] == "1" and "gpus-per-node" not in options
    assert options["output"].endswith("%A_%a_0_log.out")
    merge = sbatch_options(render_sbatch(cfg, tmp_path, dependency="afterok:77"))
    assert merge["dependency"] == "afterok:77" and "array" not in merge


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("30:00", 30), ("30:01", 31), ("12:00:00", 720), ("2-00", 2880), ("1-02:03", 1563), ("0-0:0:30", 1)],
)
def test_parse_time_minutes(text: str, minutes: int) -> None:
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize("override, message", [
    ("time=soon", "not a SLURM time limit"),
    ("nodes=0", "nodes must be >= 1"),
    ("gpus_per_node=0", "one task per GPU"),
    ("partitoin=x", "unknown key 'partitoin'"),
    ("executor=kubernetes", "not one of"),
])
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_slurm_config(EXAMPLE, [override])


def test_split_overrides() -> None:
    job, slurm = split_overrides(["optim.lr=1e-4", "slurm.nodes=2", "slurm.extra_sbatch.gres=gpu:8", "resume=latest"])
    assert job == ["optim.lr=1e-4", "resume=latest"]
    assert slurm == ["nodes=2", "extra_sbatch.gres=gpu:8"]
