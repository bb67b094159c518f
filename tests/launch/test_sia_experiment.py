"""launch/sia_experiment.py: the plan, the validate-split choice, reuse of finished runs, the mean ± sd table (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from launch import sia_experiment as exp

# The image AUROC each setting's fake evaluation reports: on validate the MiniLM κ 0.7 setting wins,
# on test every arm scores by seed so the table's mean ± sd can be checked by hand.
VALIDATE_AUROC = {"default": 0.60, "labels_k0.95_centred": 0.55, "minilm_k0.7_uncentred": 0.70}


class FakeRunner:
    """Stands in for ablation.run: records each command, writes an export or a metrics.json."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, command: list[str], what: str, nproc: int) -> None:
        self.calls.append(what)
        args = dict(c.split("=", 1) for c in command if "=" in c and not c.startswith("-"))
        if what.startswith("train"):
            export = Path(args["run.output_dir"]) / args["run.name"] / "export"
            export.mkdir(parents=True)
            (export / "model_config.yaml").write_text("{}", encoding="utf-8")
            if args["loss.preset"] != "clip":  # the run's MLflow store, with what the SIA term logs
                client = MlflowClient(f"sqlite:///{export.parent / 'mlflow.db'}")
                run_id = client.create_run(client.create_experiment("sista")).info.run_id
                for key, value, step in (("sia/fn_precision", 0.5, 1), ("sia/fn_precision", 1.0, 2), ("sia/loss", 9.0, 1)):
                    client.log_metric(run_id, key, value, step=step)
            return
        run_id = Path(args["checkpoint"]).parents[1].name
        split = args.get("data.shards.test_split", "test")
        setting = next((s for s in VALIDATE_AUROC if s in run_id), None)
        seed = int(run_id.rsplit("_s", 1)[1])
        image = VALIDATE_AUROC[setting] if split == "validate" else 0.5 + 0.1 * seed
        tasks = {"retrieval": {"split": split, "findings_geometry": {"image_auroc": image, "text_auroc": 0.9}}}
        out = Path(args["output_dir"])
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"tasks": tasks}), encoding="utf-8")


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--out", str(tmp_path / "out"), "--steps", "5", "--studies", "40", "--seeds", "0", "1",
            "--report-voices", "4", "--finding-sets", "6", "--manifest", "m.json", "--annotations", "a.json", *extra]


def test_step3_plan_has_every_arm_per_seed_and_shares_step2s_run() -> None:
    runs = exp.step3_runs("labels_k0.95_centred", [3, 4])
    assert [exp.arm_of(r) for r in runs[:5]] == ["clip", "sia_only", "sista", "oracle", "random"]
    assert [r.seed for r in runs] == [3] * 5 + [4] * 5  # all arms of a seed before the next seed
    by_arm = {exp.arm_of(r): r for r in runs[:5]}
    assert by_arm["sia_only"].run_id == exp.setting_run("labels_k0.95_centred", 3, ()).run_id
    assert by_arm["clip"].overrides == () and by_arm["clip"].preset == "clip"
    assert "loss.options.sia.false_negatives=oracle" in by_arm["oracle"].overrides
    assert "loss.options.sia.similarity_source=labels" not in by_arm["oracle"].overrides
    assert by_arm["random"].overrides[-1] == "loss.options.sia.false_negatives=random"
    assert "loss.options.sia.threshold=0.95" in by_arm["random"].overrides and by_arm["random"].preset == "sia_only"


def test_validate_evaluation_never_touches_the_test_split(tmp_path: Path) -> None:
    args = exp.parse_args(_args(tmp_path))
    run = exp.step2_runs(0)[0]
    validate = exp.ablation.eval_command(exp.eval_args(args, run, exp.VALIDATE), run.preset)
    assert "data.shards.test_split=validate" in validate and validate[-1] == "tasks=[retrieval]"
    test = exp.ablation.eval_command(exp.eval_args(args, run, exp.TEST), run.preset)
    assert not any(c.startswith("data.shards.test_split") for c in test)
    # the last output_dir wins (overrides apply in order): one folder per split
    last = [[c for c in command if c.startswith("output_dir=")][-1] for command in (validate, test)]
    assert last[0].endswith("eval_validate") and last[1].endswith("eval_test")
    with pytest.raises(SystemExit, match="not 'validate'"):
        exp.chosen_setting({"default": {"tasks": {"retrieval": {"split": "test"}}}})


def test_experiment_chooses_on_validate_reuses_runs_and_tabulates(tmp_path: Path) -> None:
    runner = FakeRunner()
    text = exp.run_experiment(exp.parse_args(_args(tmp_path)), runner)
    assert "| minilm_k0.7_uncentred (chosen) | 70.0 | n/a | n/a | 0.750 | n/a |" in text
    assert "| sista | n/a | n/a | 0.750 | n/a |" in text and "| clip | n/a" not in text  # detector in training
    # 3 settings + 2 seeds x 5 arms, less the sia_only seed-0 run step 2 already trained
    assert sum(c.startswith("train") for c in runner.calls) == 3 + 10 - 1
    assert "evaluate sia_only_minilm_k0.7_uncentred_s0 on test" in runner.calls
    # the image AUROC is 50 at seed 0 and 60 at seed 1: mean 55, sd 7.1
    assert "| oracle | 2 | 90.0 ± 0.0 | 55.0 ± 7.1 | n/a |" in text
    assert (tmp_path / "out" / "sia_experiment.md").read_text(encoding="utf-8").strip() == text
    timings = json.loads((tmp_path / "out" / "runs" / "clip_s1" / "timings.json").read_text(encoding="utf-8"))
    assert set(timings) == {"train_s", "eval_test_s"}

    again = FakeRunner()  # the same command again: every run is reused
    assert exp.run_experiment(exp.parse_args(_args(tmp_path)), again) == text and again.calls == []
    plan = exp.plan(exp.parse_args(_args(tmp_path, "--plan", "--seeds", "0", "1", "2")))
    assert plan[0] == "step 2: sia_only_default_s0: done" and plan[-1] == "step 3: random_minilm_k0.7_uncentred_s2: to run"
    assert sum(line.endswith("to run") for line in plan) == 5

    with pytest.raises(SystemExit, match="other .*settings"):  # another budget never reuses these runs
        exp.run_experiment(exp.parse_args([*_args(tmp_path), "--steps", "6"]), FakeRunner())
