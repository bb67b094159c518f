"""The Dockerfile cannot be built here: check what it copies exists and that it pins our torch."""

from __future__ import annotations

import re
from pathlib import Path


def _pinned(constraints: Path, package: str) -> str:
    """The version that constraints.txt pins for ``package``."""
    for line in constraints.read_text().splitlines():
        match = re.fullmatch(rf"{package}==(\S+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{constraints} does not pin {package}")


def test_every_copied_path_exists(repo_root: Path) -> None:
    text = (repo_root / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+)$", text, flags=re.M)
    assert copies, "Dockerfile copies nothing"
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            assert (repo_root / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_base_image_pins_the_constraints_torch(repo_root: Path) -> None:
    text = (repo_root / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, flags=re.M)
    assert base, "Dockerfile has no FROM"
    image = base.group(1)
    assert image.startswith("pytorch/pytorch:"), f"not an official PyTorch image: {image}"
    torch_version = _pinned(repo_root / "constraints.txt", "torch")
    assert image.split(":", 1)[1].startswith(f"{torch_version}-cuda"), (image, torch_version)
    assert "-devel" in image, "deepspeed ops need nvcc: use the devel image"
    assert 'TORCH_CUDA_ARCH_LIST="8.0;9.0"' in text
    assert "-c constraints.txt" in text


def test_setup_cfg_pins_the_same_torch(repo_root: Path) -> None:
    setup = (repo_root / "setup.cfg").read_text()
    for package in ("torch", "torchvision"):
        version = _pinned(repo_root / "constraints.txt", package)
        assert f"{package}=={version}" in setup
