"""launch/ablation.py: every preset gets the same budget; the table labels every number phantom."""

from __future__ import annotations

from launch.ablation import PRESETS, ROWS, UNTRAINED, ablation_table, eval_command, parse_args, train_command


def test_presets_differ_only_in_the_loss_preset(tmp_path) -> None:
    args = parse_args(["--manifest", "m.json", "--annotations", "a.json", "--out", str(tmp_path), "--steps", "7",
                       "model.embed_dim=16"])
    commands = {p: train_command(args, p) for p in PRESETS}
    for preset, command in commands.items():
        assert f"loss.preset={preset}" in command and "schedule.max_steps=7" in command
        assert "model.embed_dim=16" in command and "--nproc_per_node=2" in command
        rest = [c for c in command if not c.startswith(("loss.preset=", "run.name="))]
        assert rest == [c for c in commands["clip"] if not c.startswith(("loss.preset=", "run.name="))]
    evaluation = eval_command(args, "sista")
    assert any(c.endswith("configs/eval/phantom_all.yaml") for c in evaluation)
    assert f"checkpoint={tmp_path / 'sista' / 'export'}" in evaluation


def test_untrained_row_is_the_first_presets_command_without_a_step(tmp_path) -> None:
    args = parse_args(["--manifest", "m.json", "--annotations", "a.json", "--out", str(tmp_path), "--steps", "7"])
    assert args.presets == list(ROWS) and ROWS[0] == UNTRAINED  # on by default, first in the table
    untrained, first = train_command(args, UNTRAINED), train_command(args, PRESETS[0])
    assert "schedule.max_steps=0" in untrained and f"run.name={UNTRAINED}" in untrained
    assert [c.replace("max_steps=0", "max_steps=7").replace(f"name={UNTRAINED}", f"name={PRESETS[0]}")
            for c in untrained] == first
    assert f"checkpoint={tmp_path / UNTRAINED / 'export'}" in eval_command(args, UNTRAINED)
    table = ablation_table({UNTRAINED: {"tasks": {}}, "clip": {"tasks": {}}}, steps=7).splitlines()
    assert table[2].startswith("| untrained (0 steps") and table[3].startswith("| clip |")


def test_table_has_one_row_per_preset_and_says_phantom() -> None:
    tasks = {
        "zero_shot": {"mean_auroc": {"auroc": 0.61}},
        "retrieval": {"image_to_report": {"label_set": {"R@1": {"value": 0.25}}},
                      "centred_label_set": {"image_to_report": {"R@1": 0.5}}},
        "linear_probe": {"datasets": {"shards": {"fractions": {"1pct": {"auroc": 0.7}}}}},
        "grounding": {"overall": {"pointing_accuracy": 0.125, "mean_iou": 0.05}},
    }
    table = ablation_table({"clip": {"tasks": tasks}, "sista": {"tasks": {}}}, steps=60)
    lines = table.splitlines()
    assert "phantom" in lines[0] and "60 steps" in lines[0]
    assert lines[2].startswith("| clip | 61.0 | 25.0 | n/a | n/a | n/a | 50.0 | 70.0 | 12.5 | 5.0 |")
    assert lines[3] == "| sista | " + " | ".join(["n/a"] * 9) + " |"
    assert "phantom set" in table


def test_runs_made_with_other_settings_are_never_reused(tmp_path) -> None:
    """A changed budget stops the run (or, with --replace-stale, removes the old runs), never mixes them."""
    import pytest

    from launch.ablation import SETTINGS_FILE, ablation_settings, check_settings

    args = parse_args(["--manifest", "m.json", "--annotations", "a.json", "--out", str(tmp_path), "--steps", "7"])
    check_settings(tmp_path, ablation_settings(args), replace_stale=False)
    (tmp_path / "clip" / "export").mkdir(parents=True)
    check_settings(tmp_path, ablation_settings(args), replace_stale=False)  # same settings: kept
    assert (tmp_path / "clip" / "export").is_dir()
    longer = parse_args(["--manifest", "m.json", "--annotations", "a.json", "--out", str(tmp_path), "--steps", "9"])
    with pytest.raises(SystemExit, match="other .*settings.*--replace-stale"):
        check_settings(tmp_path, ablation_settings(longer), replace_stale=False)
    assert (tmp_path / "clip" / "export").is_dir()
    check_settings(tmp_path, ablation_settings(longer), replace_stale=True)
    assert not (tmp_path / "clip").exists() and (tmp_path / SETTINGS_FILE).is_file()


def test_an_edited_base_config_makes_runs_stale(tmp_path) -> None:
    """The training config counts with its base chain: editing only the base changes the settings."""
    from launch.ablation import ablation_settings

    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.001\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nschedule:\n  warmup_steps: 3\n")
    argv = ["--manifest", "m.json", "--annotations", "a.json", "--out", str(tmp_path / "out"), "--steps", "7",
            "--train-config", str(tmp_path / "child.yaml")]
    before = ablation_settings(parse_args(argv))
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.002\n")
    assert ablation_settings(parse_args(argv)) != before


def test_transfer_switch_adds_segmentation_and_detection_at_1_and_100_percent(tmp_path) -> None:
    from launch.ablation import ablation_settings

    base = ["--manifest", "m.json", "--annotations", str(tmp_path / "tree" / "a.json"), "--out", str(tmp_path),
            "--steps", "7"]
    on, off = parse_args(base), parse_args([*base, "--no-transfer"])
    assert on.transfer and not off.transfer and ablation_settings(on) != ablation_settings(off)
    command = eval_command(on, "sista")
    assert "dense.fractions=[0.01, 1.0]" in command and f"dense.split_dir={tmp_path / 'splits'}" in command
    assert f"data.siim.root={tmp_path / 'tree' / 'downstream' / 'siim'}" in command
    assert any(c.startswith("tasks=") and "segmentation" in c and "detection" in c for c in command)
    assert not any(c.startswith(("tasks=", "dense.")) for c in eval_command(off, "sista"))

    tasks = {"segmentation": {"datasets": {"siim": {"fractions": {"1pct": {"dice": 0.25}, "100pct": {"dice": 0.5}}}}},
             "detection": {"datasets": {"rsna": {"fractions": {"100pct": {"map": 0.125}}}}}}
    table = ablation_table({"sista": {"tasks": tasks}}, steps=7, transfer=True).splitlines()
    cells = dict(zip(*([c.strip() for c in line.strip("|").split("|")] for line in (table[0], table[2]))))
    assert cells["Dice SIIM @ 1 %"] == "25.0" and cells["Dice SIIM @ 100 %"] == "50.0"
    assert cells["mAP RSNA @ 100 %"] == "12.5" and cells["mAP Object-CXR @ 1 %"] == "n/a"
    assert "Dice SIIM @ 1 %" not in ablation_table({"sista": {"tasks": tasks}}, steps=7)


def test_demo_arguments_leave_out_what_does_not_fit(tmp_path) -> None:
    from launch.ablation import ablation_args

    fast = ablation_args(tmp_path, 5, 2, ["model.embed_dim=16"], untrained=False, transfer=False)
    assert fast.presets == list(PRESETS) and not fast.transfer and fast.overrides == ["model.embed_dim=16"]
    full = ablation_args(tmp_path, 5, 2, [], untrained=True, transfer=True)
    assert full.presets == list(ROWS) and full.transfer
