import gc
import os

# Tests are dominated by XLA compile time, not run time: skip the expensive LLVM passes
# (semantics-preserving; --xla_backend_optimization_level=0 is not: it changes rounding).
_XLA_FLAGS = ["--xla_llvm_disable_expensive_passes=true"]
# XLA:CPU's newer fusion emitters (the default since jaxlib ~0.7) compile the solvers' loop
# bodies more slowly than its classic elemental emitters: 30-40% of the backend compile time
# of a constrained solve (10.3 s -> 7.1 s for HS 71's main program, 2026-12-04). Older
# jaxlibs (`make test-min` pins 0.4.33) do not know the flag, and XLA aborts on an unknown one.
try:
    from importlib.metadata import version as _version

    if tuple(int(p) for p in _version("jaxlib").split(".")[:2]) >= (0, 9):
        _XLA_FLAGS.append("--xla_cpu_use_fusion_emitters=false")
except Exception:  # noqa: BLE001 - no metadata: keep the flags every version knows
    pass
os.environ.setdefault("XLA_FLAGS", " ".join(_XLA_FLAGS))

# Two pytest workers share two cores: LAPACK (QR, SVD, Cholesky in the sketches) must not
# spawn threads of its own, or contention makes small factorisations 1000x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

# float32 is what accelerators run by default, and where dishonest statuses hide: every test
# runs with JAX's default dtypes (x64 off) unless it asks for float64 with
# `@pytest.mark.float64` (or a module-level `pytestmark = pytest.mark.float64`). x64 stays on
# while modules are imported, so module-level float64 data keeps its dtype for the tests that
# ask for it.
jax.config.update("jax_enable_x64", True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "float64: run this test with jax_enable_x64 (float64 available and default)")
    config.addinivalue_line(
        "markers", "slow: minutes of compiling (every solver on rescaled problems, every README "
        "and docs block in a fresh process); `make test` skips them, `make test-slow` and "
        ".ci/run run them")


_SLOW_IDS = os.path.join(os.path.dirname(__file__), "slow_tests.txt")


@pytest.hookimpl(tryfirst=True)  # before `-m 'not slow'` deselects
def pytest_collection_modifyitems(config, items):
    """Mark `slow` the tests listed in `slow_tests.txt` (the slowest of the default run, by
    measurement), so that `make test` stays quick to use while working and `make test-slow`
    (run by .ci/run) still runs them."""
    with open(_SLOW_IDS, encoding="utf-8") as f:
        slow = {line.split("#")[0].strip() for line in f} - {""}
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)
    # The longest tests (whole examples and multi-device runs in processes of their own, up to
    # two minutes each) first: xdist hands tests out in this order, and one of them started
    # last would leave the other worker idle while it finishes. The order is the same in
    # every worker, as xdist requires.
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in _LONG_FIRST)


_LONG_FIRST = {
    "tests/test_distributed.py", "tests/test_distributed_params.py",
    "tests/test_sharding_solvers.py", "tests/test_examples.py", "tests/test_bilevel_examples.py",
    "tests/test_optimal_transport_example.py", "tests/test_sparse_regression_example.py",
    "tests/test_gpu_logistic_smoke.py",
}


@pytest.fixture(autouse=True)
def _precision(request):
    x64 = request.node.get_closest_marker("float64") is not None
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", x64)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module. XLA:CPU maps every executable
    into memory with a few mmap regions that stay while JAX's caches hold it; a pytest worker
    that runs a thousand tests collects tens of thousands of them (52,576 maps, 5.4 GB
    resident, measured two-thirds through `make test-slow`) and then crosses the kernel's
    limit of 65,530 maps per process (vm.max_map_count), after which LLVM's next
    allocation fails: the worker dies with SIGSEGV or SIGABRT in whatever test is compiling
    at that moment. That was the intermittent "node down" of earlier runs and of CI."""
    yield
    jax.clear_caches()
    gc.collect()
