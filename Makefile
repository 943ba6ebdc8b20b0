# The README's two commands (`make run`, `make test`) do all the set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml

.PHONY: run test bench lint clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q -e '.[examples]'
	touch $@

$(VENV)/.test: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q -e '.[test,examples]'
	touch $@

$(VENV)/.bench: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q -e '.[bench,examples]'
	touch $@

$(VENV)/.lint: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(VENV)/.run
	$(BIN)/python examples/demo.py --config $(CONFIG)

test: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 -q

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/least_squares.py
	$(BIN)/python benchmarks/root_find.py
	$(BIN)/python benchmarks/fixed_point.py
	$(BIN)/python benchmarks/hypergradient.py
	$(BIN)/python benchmarks/sketch.py
	$(BIN)/python benchmarks/logistic.py
	$(BIN)/python benchmarks/optimizers.py

lint: $(VENV)/.lint
	$(BIN)/ruff check jaxopt2 tests examples benchmarks

clean:
	rm -rf $(VENV) outputs
