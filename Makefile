# pyrotrain: `make run` installs everything (Horovod included) and runs the default job;
# `make test` runs `make lint` (ruff, mypy), then the tests. Everything lives in .venv inside
# the repository.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch by default; `make install TORCH=torch` takes your platform's default build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.pyrotrain-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install run test lint bench clean

install: $(STAMP)
	@scripts/install_horovod.sh $(PY)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev,mlflow]"
	@touch $(STAMP)

run: install
	$(VENV)/bin/pyrotrain

test: install lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install  ## ruff (lint and format check), then mypy (its settings: [tool.mypy] in pyproject.toml)
	$(VENV)/bin/ruff check pyrotrain models tests scripts hydra_plugins
	$(VENV)/bin/ruff format --check pyrotrain models tests scripts hydra_plugins
	$(VENV)/bin/mypy

bench: install  ## every benchmark, then bench/results.json and bench/results.md (BENCH_ARGS=--quick: < 5 min)
	$(PY) scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache .mypy_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
