# The README's two commands (`make run`, `make test`) do all the set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml

.PHONY: run test test-slow test-min bench bench-scale bench-gpu distributed lint docs clean examples-gpu

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

$(VENV)/.docs: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q -e '.[docs]'
	touch $@

# JAX's persistent compilation cache: a second `make run` loads the compiled solvers from
# .cache/jax instead of compiling them again (tests/test_compiled_doors.py checks it).
JAX_CACHE := JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.cache/jax JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

run: $(VENV)/.run
	$(JAX_CACHE) $(BIN)/python examples/demo.py --config $(CONFIG)

test: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 -q

# The tests marked slow (every README/docs block in a fresh float32 process, every solver on
# rescaled and hostile problems, the examples at smoke size, SketchedNewton's own suite, the
# longest adjoint tests): minutes of compiling, so not in `make test`; .ci/run runs them.
test-slow: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 -q -m slow

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/least_squares.py
	$(BIN)/python benchmarks/root_find.py
	$(BIN)/python benchmarks/fixed_point.py
	$(BIN)/python benchmarks/hypergradient.py
	$(BIN)/python benchmarks/sketch.py
	$(BIN)/python benchmarks/logistic.py
	$(BIN)/python benchmarks/dense_newton.py
	$(BIN)/python benchmarks/optimizers.py
	$(BIN)/python benchmarks/composite.py
	$(BIN)/python benchmarks/constrained.py
	$(BIN)/python benchmarks/qp.py
	$(BIN)/python benchmarks/optimal_transport.py
	$(BIN)/python benchmarks/compile_time.py
	$(BIN)/python benchmarks/first_call.py
	$(BIN)/python benchmarks/training.py

# Two processes x four CPU devices with jax.distributed, against one process.
distributed: $(VENV)/.run
	$(BIN)/python examples/distributed.py --config configs/distributed.yaml

# Time per HVP and per Newton step over 1-8 host devices, two processes against one (minutes).
bench-scale: $(VENV)/.bench
	$(BIN)/python benchmarks/scale.py

# The GPU section of benchmarks/RESULTS.md (n = 1e6, d = 1e3 logistic regression); under 5
# minutes on a GPU (`--small` runs it at a tiny size on a CPU).
bench-gpu: $(VENV)/.bench
	$(BIN)/python benchmarks/gpu_logistic.py

# Every example's full config on a GPU (installs JAX's CUDA wheels); the table goes to
# outputs/run_all/results.md.
examples-gpu: $(VENV)/.run
	$(BIN)/pip install -q -e '.[examples,gpu]'
	$(BIN)/python examples/run_all.py --device gpu

lint: $(VENV)/.lint
	$(BIN)/ruff check jaxopt2 tests examples benchmarks

# The API pages are generated from the docstrings; --strict turns every warning (a broken
# link or cross-reference, a missing page) into a failure. The site goes to site/.
docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The lower bounds: the exact minimum versions of the dependencies (constraints-min.txt, the
# same numbers as pyproject.toml's `>=`) in a venv of their own, over the fast part of the
# suite: every front door with its implicit derivatives, the adjoints, the optimizers and
# the sketches.
VENV_MIN := .venv-min
MIN_TESTS := tests/test_adjoint_partial.py tests/test_contract.py \
	tests/test_equations_contract.py tests/test_implicit.py tests/test_optimizers.py \
	tests/test_sketch.py

$(VENV_MIN)/.test: pyproject.toml constraints-min.txt
	$(PY) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/pip install -q --upgrade pip
	$(VENV_MIN)/bin/pip install -q -c constraints-min.txt -e '.[test]'
	touch $@

test-min: $(VENV_MIN)/.test
	@$(VENV_MIN)/bin/python -c "import jax, jaxlib, optax, equinox, lineax; print('test-min:', \
	  *(f'{m.__name__} {m.__version__}' for m in (jax, jaxlib, optax, equinox, lineax)))"
	$(VENV_MIN)/bin/python -m pytest -n 2 -q -p no:cacheprovider $(MIN_TESTS)

clean:
	rm -rf $(VENV) $(VENV_MIN) outputs site
