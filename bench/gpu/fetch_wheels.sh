#!/usr/bin/env bash
# Download (here, with internet) the wheels bench/gpu/run.sh installs on a GPU machine that has PyTorch,
# timm and transformers but not deepspeed / webdataset (and their few missing dependencies), for Python 3.12.
# deepspeed ships only an sdist: a pure-Python wheel of it is built here (no CUDA ops compiled).
# Output: .whl/ in the repository root (ignored by git). Versions = the ones this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl webdataset==1.0.2 braceexpand==0.1.7 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
ls -la .whl
du -sh .whl
