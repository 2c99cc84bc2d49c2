# Set-up is idempotent: .venv is (re)built only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
PYTEST_WORKERS ?= 2

.PHONY: setup test demo lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -q

# The demo isoFLOP sweep on the default corpus, then its fit and plots (docs/sweeps.md).
# Preparing skips an existing corpus and tokenizer and the sweep skips finished runs, so re-running
# `make demo` resumes an interrupted sweep.
demo: setup
	$(BIN)/scalelab data prepare
	$(BIN)/scalelab tokenizer train
	$(BIN)/scalelab sweep run demo --sweep-dir sweeps/demo
	$(BIN)/scalelab fit sweeps/demo --budget 1e12 --out sweeps/demo/fit
	$(BIN)/scalelab plot sweeps/demo/fit --out sweeps/demo/fit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The PyTorch baseline needs the optional bench extra (torch, CPU build); tests do not.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/scalelab bench

clean:
	rm -rf $(VENV) runs .pytest_cache
