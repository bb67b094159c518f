"""A non-editable install (a built wheel in a fresh venv) finds its default configs through pipeline.resources."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest


@pytest.mark.slow
def test_wheel_install_finds_the_default_configs(repo_root: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(repo_root)], check=True, cwd=tmp_path, timeout=300)
    wheel = next(wheels.glob("sista_pipeline-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # the dependencies come from this interpreter's site-packages, listed after the new venv's own (a .pth
    # line adds a folder without running the .pth files in it, so this checkout's editable hook stays out)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)],
                   check=True, timeout=300)
    code = (
        "import pipeline, pipeline.resources as r; from pipeline.config import load_config, presets;"
        "from pipeline.train.config import PretrainConfig;"
        "cfg = load_config(PretrainConfig, 'configs/pretrain/tiny.yaml', ['loss.preset=clip']);"
        "print(pipeline.__file__); print(r.config_root()); print(r.default_config('data/mimic.yaml'));"
        "print(sorted(presets('loss'))); print(cfg.engine.deepspeed_config)"
    )
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path), "DS_ACCELERATOR": "cpu"}  # no PYTHONPATH: the wheel only
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    package, root, mimic, loss_presets, _ = out.stdout.strip().splitlines()
    assert str(venv) in package and str(venv) in root and Path(mimic).is_file()
    assert not Path(root).is_symlink()  # the wheel carries the files themselves
    assert loss_presets == str(sorted(p.stem for p in (repo_root / "configs" / "loss").glob("*.yaml")))
    shard = subprocess.run([venv / "bin" / "sista-shard-mimic", "--print-config"], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=300)
    assert shard.returncode == 0 and "percentile_low: 0.5" in shard.stdout, shard.stderr[-3000:]
