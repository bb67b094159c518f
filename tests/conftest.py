"""Session-wide fixtures built on the fly: one small phantom MIMIC-CXR tree and its shards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
# AVX2 kernels in the test process and every process it starts (before torch loads): the same floats on every
# x86 CPU, so in-process references equal what subprocess runs compute, and the parity fixture holds anywhere.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("MKL_CBWR", "AVX2,STRICT")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom MIMIC-CXR tree (DICOM + JPG mirror + downstream layouts), made once per session."""
    from data_prep.make_phantoms import make_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    make_phantoms(
        out,
        studies=48,
        seed=0,
        jpg=True,
        workers=1,
        image_size_range=(256, 320),
        split_fractions=(0.7, 0.15, 0.15),
        downstream=True,
        downstream_images=60,
    )
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under ``CI=true`` a skipped ``slurm`` test fails: CI must run them against the local cluster."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and item.get_closest_marker("slurm") is not None:
        report.outcome = "failed"
        report.longrepr = f"CI=true but the slurm test was skipped: {report.longrepr}"
