"""The config system: inheritance, overrides, typed loading and every error path."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from pipeline.config import (
    ConfigError,
    add_config_arguments,
    config_from_args,
    config_from_dict,
    flatten,
    load_config,
    save_config,
    to_yaml,
)


@dataclasses.dataclass
class OptimSection:
    lr: float
    betas: tuple[float, float]
    name: Literal["adamw", "sgd"]


@dataclasses.dataclass
class DataSection:
    views: list[str]
    root: Path
    limit: Optional[int] = None


@dataclasses.dataclass
class JobConfig:
    seed: int
    use_amp: bool
    optim: OptimSection
    data: DataSection
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def base_and_child(tmp_path: Path) -> tuple[Path, Path]:
    base = write(
        tmp_path / "base.yaml",
        "seed: 1\nuse_amp: false\noptim:\n  lr: 1.0e-3\n  betas: [0.9, 0.999]\n  name: adamw\n"
        "data:\n  views: [PA, AP]\n  root: /data/mimic\n",
    )
    child = write(tmp_path / "sub" / "child.yaml", "base: ../base.yaml\nseed: 7\noptim:\n  lr: 2.0e-5\n")
    return base, child


def test_inheritance_merges_deeply(base_and_child: tuple[Path, Path]) -> None:
    _, child = base_and_child
    cfg = load_config(JobConfig, child)
    assert cfg.seed == 7
    assert cfg.optim.lr == pytest.approx(2e-5)
    assert cfg.optim.betas == (0.9, 0.999)  # kept from the base
    assert cfg.data.views == ["PA", "AP"]
    assert cfg.data.root == Path("/data/mimic")
    assert cfg.data.limit is None and cfg.tags == {}


def test_list_of_bases_merges_left_to_right(tmp_path: Path, base_and_child: tuple[Path, Path]) -> None:
    write(tmp_path / "amp.yaml", "use_amp: true\nseed: 3\n")
    multi = write(tmp_path / "multi.yaml", "base: [base.yaml, amp.yaml]\n")
    cfg = load_config(JobConfig, multi)
    assert cfg.use_amp is True and cfg.seed == 3


def test_overrides_are_yaml_scalars(base_and_child: tuple[Path, Path]) -> None:
    _, child = base_and_child
    cfg = load_config(
        JobConfig, child, ["optim.lr=3e-4", "use_amp=true", "data.views=[PA]", "data.limit=10", "tags.site=bos"]
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.use_amp is True
    assert cfg.data.views == ["PA"]
    assert cfg.data.limit == 10
    assert cfg.tags == {"site": "bos"}


def test_mapping_override_merges_like_a_file(base_and_child: tuple[Path, Path]) -> None:
    _, child = base_and_child
    cfg = load_config(JobConfig, child, ["optim={lr: 1.0, name: sgd}"])
    assert (cfg.optim.lr, cfg.optim.name, cfg.optim.betas) == (1.0, "sgd", (0.9, 0.999))


def test_int_is_accepted_for_float_but_not_the_reverse(base_and_child: tuple[Path, Path]) -> None:
    _, child = base_and_child
    assert load_config(JobConfig, child, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"command line: key 'seed': expected an integer, got 1.5"):
        load_config(JobConfig, child, ["seed=1.5"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("optim.momentum=0.9", r"command line: unknown key 'optim.momentum'"),
        ("use_amp=yes please", r"command line: key 'use_amp': expected true/false"),
        ("optim.name=lamb", r"command line: key 'optim.name': 'lamb' is not one of \['adamw', 'sgd'\]"),
        ("optim.betas=[0.9]", r"command line: key 'optim.betas': expected 2 items, got 1"),
        ("data.views=PA", r"command line: key 'data.views': expected a list"),
        ("data.views=[1]", r"command line: key 'data.views\[0\]': expected a string"),
        ("data.limit=many", r"command line: key 'data.limit': 'many' is not a"),
        ("tags=[a]", r"command line: key 'tags': expected a mapping"),
        ("seed", r"not of the form key.sub=value"),
        ("=3", r"empty key"),
        ("seed=[1", r"command line: override seed: value '\[1' is not valid YAML"),
    ],
)
def test_override_errors_name_the_key_and_the_command_line(
    base_and_child: tuple[Path, Path], override: str, pattern: str
) -> None:
    _, child = base_and_child
    with pytest.raises(ConfigError, match=pattern):
        load_config(JobConfig, child, [override])


def test_file_errors_name_the_file_that_set_the_key(tmp_path: Path, base_and_child: tuple[Path, Path]) -> None:
    base, child = base_and_child
    bad_type = write(tmp_path / "bad_type.yaml", "base: sub/child.yaml\noptim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=rf"{bad_type}: key 'optim.lr': expected a number"):
        load_config(JobConfig, bad_type)
    unknown = write(tmp_path / "unknown.yaml", "base: base.yaml\ndata:\n  rooot: /x\n")
    with pytest.raises(ConfigError, match=rf"{unknown}: unknown key 'data.rooot'"):
        load_config(JobConfig, unknown)
    # A wrong value inherited from a base is reported against the base file.
    write(base, base.read_text().replace("seed: 1", "seed: one"))
    plain = write(tmp_path / "plain.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=rf"{base}: key 'seed': expected an integer"):
        load_config(JobConfig, plain)


def test_missing_required_value_names_key_and_file(tmp_path: Path) -> None:
    partial = write(tmp_path / "partial.yaml", "seed: 1\nuse_amp: false\noptim:\n  lr: 1.0\n  name: sgd\n")
    with pytest.raises(ConfigError, match=rf"{partial}: missing required key 'optim.betas'"):
        load_config(JobConfig, partial)
    no_data = write(
        tmp_path / "no_data.yaml", "seed: 1\nuse_amp: false\noptim:\n  lr: 1.0\n  name: sgd\n  betas: [0.9, 0.9]\n"
    )
    with pytest.raises(ConfigError, match=r"missing required key 'data.views'"):
        load_config(JobConfig, no_data)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.yaml"):
        load_config(JobConfig, tmp_path / "nope.yaml")
    broken = write(tmp_path / "broken.yaml", "seed: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{broken}: not valid YAML"):
        load_config(JobConfig, broken)
    scalar = write(tmp_path / "scalar.yaml", "42\n")
    with pytest.raises(ConfigError, match=rf"{scalar}: top level must be a mapping"):
        load_config(JobConfig, scalar)
    loop_a = write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"circular 'base' chain"):
        load_config(JobConfig, loop_a)
    bad_base = write(tmp_path / "bad_base.yaml", "base: {x: 1}\n")
    with pytest.raises(ConfigError, match=rf"{bad_base}: key 'base' must be a path"):
        load_config(JobConfig, bad_base)
    missing_base = write(tmp_path / "missing_base.yaml", "base: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*gone.yaml"):
        load_config(JobConfig, missing_base)


def test_safe_load_only(tmp_path: Path) -> None:
    evil = write(tmp_path / "evil.yaml", "seed: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(JobConfig, evil)


def test_resolved_config_round_trips(tmp_path: Path, base_and_child: tuple[Path, Path]) -> None:
    _, child = base_and_child
    cfg = load_config(JobConfig, child, ["tags.a=b"])
    saved = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(JobConfig, saved) == cfg
    assert config_from_dict(JobConfig, yaml.safe_load(to_yaml(cfg))) == cfg
    flat = flatten(cfg)
    assert flat["optim.lr"] == pytest.approx(2e-5) and flat["data.root"] == "/data/mimic" and flat["tags.a"] == "b"


def test_command_line_helpers_print_config(base_and_child: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    _, child = base_and_child
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", str(child), "seed=11"])
    assert config_from_args(JobConfig, args).seed == 11
    args = parser.parse_args(["--config", str(child), "--print-config", "seed=12"])
    with pytest.raises(SystemExit) as exit_info:
        config_from_args(JobConfig, args)
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed"] == 12
    args = parser.parse_args(["--config", str(child), "bogus=1"])
    with pytest.raises(SystemExit) as exit_info:
        config_from_args(JobConfig, args)
    assert exit_info.value.code == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err


def test_rank_aware_logging_prefix() -> None:
    code = (
        "import logging, os\n"
        "from pipeline.logging_setup import setup_logging\n"
        "setup_logging()\n"
        "logging.getLogger('sista.x').info('hello-info')\n"
        "logging.getLogger('sista.x').warning('hello-warn')\n"
    )
    for rank, expect_info in (("0", True), ("3", False)):
        env = {"RANK": rank, "WORLD_SIZE": "16", "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert f"[rank {rank}/16] WARNING sista.x: hello-warn" in out.stderr
        assert ("hello-info" in out.stderr) is expect_info


# --------------------------------------------------------------------------- presets (loss.preset)

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "configs" / "pretrain" / "base.yaml"


def _loss(*overrides: str):
    from pipeline.train.config import PretrainConfig

    return load_config(PretrainConfig, BASE, ["data.manifest=m.json", *overrides]).loss


def _terms(loss) -> list[str]:
    from pipeline.losses.config import walk

    return [spec.name for spec in walk(loss.terms)]


def test_preset_names_are_the_files_of_configs_loss() -> None:
    from pipeline.config import presets

    assert presets("loss") == ["clip", "sia_only", "sista", "sta_only"]
    assert presets("loss") == sorted(p.stem for p in (REPO / "configs" / "loss").glob("*.yaml"))


def test_preset_on_the_command_line_selects_its_file() -> None:
    assert _terms(_loss()) == ["sia", "sta", "sta_token", "sta_image"]  # base.yaml: sista
    assert _terms(_loss("loss.preset=clip")) == ["infonce"]
    assert _terms(_loss("loss.preset=sta_only")) == ["infonce", "sta", "sta_token", "sta_image"]
    assert _terms(_loss("loss.preset=sia_only")) == ["sia"]


def test_preset_may_be_a_yaml_path_and_the_section_keys_win(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text("terms:\n  - {term: sia, weight: 2.0}\nweights: {sia: 3.0}\noptions: {sia: {threshold: 0.5}}\n")
    loss = _loss(f"loss.preset={own}")
    assert _terms(loss) == ["sia"] and loss.terms[0].weight == 2.0
    assert loss.options["sia"]["threshold"] == 0.9  # base.yaml's own value wins over the preset file's
    assert loss.weights == {"sia": 3.0} and loss.weight(loss.terms[0]) == 3.0  # mappings merge deeply
    listed = _loss("loss.terms=[{term: infonce, weight: 0.5}]")  # explicit terms win over the preset's
    assert _terms(listed) == ["infonce"] and listed.terms[0].weight == 0.5


def test_unknown_preset_names_the_known_ones_and_where_it_was_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"command line: key 'loss.preset': 'sistaa' is not a preset \(known: clip"):
        _loss("loss.preset=sistaa")
    bad = tmp_path / "bad.yaml"
    bad.write_text("terms:\n  - {term: sia, weight: 1.0, mode: soft}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'loss.terms\[0\].mode'"):
        _loss(f"loss.preset={bad}")


def test_no_preset_needs_a_terms_list() -> None:
    with pytest.raises(ConfigError, match="missing required key 'loss.terms'"):
        _loss("loss.preset=null")
    assert _terms(_loss("loss.preset=null", "loss.terms=[{term: sia, weight: 1.0}]")) == ["sia"]


def test_saved_config_reloads_to_the_same_loss(tmp_path: Path) -> None:
    from pipeline.train.config import PretrainConfig

    cfg = load_config(PretrainConfig, BASE, ["data.manifest=m.json", "loss.preset=sta_only",
                                             "loss.options.sta_image.negatives=3"])
    again = config_from_dict(PretrainConfig, yaml.safe_load(to_yaml(cfg)), "config.yaml")
    assert again.loss == cfg.loss
