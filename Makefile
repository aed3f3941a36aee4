# Two entry points, each sets itself up on a fresh machine:
#   make experiment   run the default experiment end to end (DVC pipeline driven by Prefect)
#   make test-all     run the whole test suite (what CI runs)
#   make test         the fast suite: no Prefect server, DVC pipeline or signals (the `slow` tests)
#   make calibration  the default experiment plus its phone-target topline (profile calibration)
VENV ?= .venv
PY := $(VENV)/bin/python
# what the experiment needs; and what the tests need too: pytest, ruff, the optional extras' libraries
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# Tests and stages call `dvc`, `labelbudget` and `prefect` as commands: the venv's come first.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Offline by default: no telemetry, W&B run files written locally (sync later with `wandb sync`).
export WANDB_MODE ?= offline
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: experiment calibration test test-all lint install

install: $(DEV_STAMP)

# torch first, from the pinned CPU wheel, so that no dependency pulls a multi-GB CUDA build. The bytecode is
# compiled once afterwards on every core (pip compiles file by file: ~25 s more of the set-up on 2 cores).
# The experiment installs no dev extras: with `transformers` installed, every `import lightning` imports it too
# (through torchmetrics), ~0.8 s in each of dozens of stage processes.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile torch==2.13.0
	$(PY) -m pip install -q --no-compile -e .
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true  # a file that does not compile runs from source
	$(VENV)/bin/dvc config --local core.analytics false
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

experiment: $(STAMP)
	$(VENV)/bin/labelbudget run --profile default

calibration: $(STAMP)
	$(VENV)/bin/labelbudget run --profile calibration

test: $(DEV_STAMP)
	$(PY) -m pytest

# -m "" lifts pyproject's `-m 'not slow'`; the slowest tests are listed at the end (CI's time goes there)
test-all: $(DEV_STAMP)
	$(PY) -m pytest -m "" --durations=12

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
