"""Front doors called outside any transformation run as one compiled, cached program
(`jaxopt2._compiled`), with the eager call's errors and messages kept."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

import jaxopt2
import jaxopt2.ot
from jaxopt2.qp import solve_qp

_COMPILES = []


def _listener(event, duration, **kwargs):
    if event.endswith("backend_compile_duration"):
        _COMPILES.append(duration)


monitoring.register_event_duration_secs_listener(_listener)


@contextlib.contextmanager
def count_compiles():
    start = len(_COMPILES)
    counter = [0]
    yield counter
    counter[0] = len(_COMPILES) - start


def rosenbrock(x, a):
    return jnp.sum(a * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def test_eager_minimize_compiles_once_and_matches_jit():
    a = jnp.asarray(100.0)
    x0 = jnp.zeros(4)
    solver = jaxopt2.NewtonCG()
    with count_compiles() as first:
        sol = jaxopt2.minimize(rosenbrock, x0, a, solver=solver)
    # One program for the solve (plus the input checks' few tiny ones), not one per
    # operation of the solver's set-up (about 60 before) and its loops.
    assert first[0] <= 8, first[0]
    x1, a1 = x0 + 0.1, jnp.asarray(90.0)
    with count_compiles() as again:
        sol2 = jaxopt2.minimize(rosenbrock, x1, a1, solver=solver)
    assert again[0] == 0  # new values, same shapes: the cached program
    ref = jax.jit(lambda x, a: jaxopt2.minimize(rosenbrock, x, a, solver=solver))(x0, a)
    np.testing.assert_array_equal(sol.params, ref.params)
    assert sol.success and sol2.success
    np.testing.assert_allclose(sol.params, jnp.ones(4), atol=1e-5)
    assert int(sol.stats["num_steps"]) == int(ref.stats["num_steps"])


def test_failure_raises_the_eager_message(monkeypatch):
    x0 = jnp.full(4, -1.5)
    solver = jaxopt2.LBFGS()
    with pytest.raises(RuntimeError) as compiled:
        jaxopt2.minimize(rosenbrock, x0, jnp.asarray(100.0), solver=solver, max_steps=3)
    monkeypatch.setenv("JAXOPT2_EAGER", "1")
    with pytest.raises(RuntimeError) as eager:
        jaxopt2.minimize(rosenbrock, x0, jnp.asarray(100.0), solver=solver, max_steps=3)
    assert "max_steps_reached" in str(compiled.value)
    assert "After 3 steps" in str(compiled.value)  # the detail came out of the program
    assert str(compiled.value) == str(eager.value)
    assert type(compiled.value) is RuntimeError  # not XLA's wrapper of a callback error
    sol = jaxopt2.minimize(rosenbrock, x0, jnp.asarray(100.0), solver=solver, max_steps=3,
                           throw=False)
    assert sol.status == jaxopt2.RESULTS.max_steps_reached


@pytest.mark.parametrize("door", ["solve_qp", "sinkhorn"])
def test_qp_and_transport_failures_raise_the_eager_message(door, monkeypatch):
    def call():
        if door == "solve_qp":  # infeasible: x ≤ −1 and x ≥ 1
            return solve_qp(jnp.eye(1), jnp.zeros(1), G=jnp.array([[1.0], [-1.0]]),
                            h=jnp.array([-1.0, -1.0]))
        cost = jnp.abs(jnp.arange(3.0)[:, None] - jnp.arange(4.0)[None, :]) / 3
        return jaxopt2.ot.sinkhorn(cost, jnp.array([0.2, 0.3, 0.5]),
                                   jnp.array([0.1, 0.2, 0.3, 0.4]), epsilon=0.01, max_steps=1)

    with pytest.raises(RuntimeError) as compiled:
        call()
    monkeypatch.setenv("JAXOPT2_EAGER", "1")
    with pytest.raises(RuntimeError) as eager:
        call()
    assert str(compiled.value) == str(eager.value)
    assert "solve failed" in str(compiled.value)


@pytest.mark.parametrize("where", ["params0", "args", "bounds"])
def test_concrete_checks_raise_before_compiling(where):
    x0, a, bounds = jnp.zeros(3), jnp.ones(3), None
    if where == "params0":
        x0 = x0.at[1].set(jnp.nan)
    elif where == "args":
        a = a.at[2].set(jnp.inf)
    else:
        bounds = (jnp.array([0.0, 2.0, 0.0]), jnp.array([1.0, 1.0, 1.0]))
    fun = lambda x, a: jnp.sum((x - a) ** 2)  # noqa: E731
    solver = jaxopt2.LBFGSB() if where == "bounds" else jaxopt2.LBFGS()
    with count_compiles() as n, pytest.raises(ValueError,
                                              match="NaN or infinity|lower.*> upper"):
        jaxopt2.minimize(fun, x0, a, solver=solver, bounds=bounds)
    assert n[0] <= 4  # raised by the eager checks, before the solve is compiled


def test_finiteness_checks_of_host_data_compile_nothing(monkeypatch):
    """The eager NaN/inf checks read host-memory data with NumPy: no device program per
    shape (two per shape op by op, 0.1–0.2 s each at a first call); data on an accelerator
    goes through one cached program (exercised here by pretending the data is not on the
    host)."""
    import jaxopt2._checks as C

    x0 = jnp.zeros((3, 11))
    data = (jnp.ones((7, 13)), np.ones(13), jnp.ones((5, 2)).at[1, 1].set(jnp.nan))
    with count_compiles() as n:
        C.check_params(x0)
        C.check_args(data[:2])
        with pytest.raises(ValueError, match=r"args\[2\]` contains NaN"):
            C.check_args(data)
    assert n[0] == 0
    monkeypatch.setattr(C, "_in_host_memory", lambda x: False)
    assert C._has_nonfinite(data[2]) and not C._has_nonfinite(data[0])


def test_python_scalars_are_constants_of_the_program():
    fun = lambda x, a: jnp.sum((x - a) ** 2)  # noqa: E731
    solver = jaxopt2.Newton()
    for a in (1.0, 2.5):
        sol = jaxopt2.minimize(fun, jnp.zeros(2), a, solver=solver)
        np.testing.assert_allclose(sol.params, jnp.full(2, a), rtol=1e-6)


class _Printer:
    """A callback object that defines equality and so, in Python, no hash."""

    def __init__(self):
        self.steps = []

    def __call__(self, step, params, value, grad_norm):
        self.steps.append(int(step))

    def __eq__(self, other):
        return self is other

    __hash__ = None


def test_unhashable_inputs_run_the_door_as_before():
    fun = lambda x, a: jnp.sum((x - a) ** 2)  # noqa: E731
    printer = _Printer()
    sol = jaxopt2.minimize(fun, jnp.zeros(2), jnp.ones(2), solver=jaxopt2.Newton(),
                           callback=printer)
    np.testing.assert_allclose(sol.params, jnp.ones(2), rtol=1e-6)
    assert printer.steps == list(range(1, int(sol.stats["num_steps"]) + 1))


def test_inside_transformations_the_door_is_traced_as_before():
    fun = lambda x, a: jnp.sum((x - a) ** 2) + 0.5 * jnp.sum(x ** 2)  # noqa: E731
    solve = lambda a: jaxopt2.minimize(fun, jnp.zeros(3), a,  # noqa: E731
                                       solver=jaxopt2.NewtonCG()).params
    a = jnp.arange(3.0)
    np.testing.assert_allclose(jax.jacobian(solve)(a), np.eye(3) / 1.5, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(solve)(jnp.stack([a, 2 * a])),
                               jnp.stack([a, 2 * a]) / 1.5, rtol=1e-5)


def _a():
    return jnp.array([1.0, 2.0, 3.0])


_SQUARE = lambda y, a: y ** 2 - a  # noqa: E731
_CUBE = lambda y, a: y ** 3 - a  # noqa: E731
_HERON = lambda y, a: 0.5 * (y + a / y)  # noqa: E731
_DISTANCE = lambda x, a: jnp.sum((x - a) ** 2)  # noqa: E731
_PLANE = lambda x, a: jnp.sum(x) - 1.0  # noqa: E731
_DOORS = {  # arrays are made inside the calls: JAX's dtype settings are a test's own
    "least_squares": (lambda: jaxopt2.least_squares(
        _SQUARE, jnp.ones(3), _a(), solver=jaxopt2.LevenbergMarquardt()), jnp.sqrt(_a())),
    "root_find": (lambda: jaxopt2.root_find(
        _CUBE, jnp.ones(3), _a(), solver=jaxopt2.NewtonKrylov()), jnp.cbrt(_a())),
    "fixed_point": (lambda: jaxopt2.fixed_point(
        _HERON, jnp.ones(3), _a(), solver=jaxopt2.Anderson()), jnp.sqrt(_a())),
    "minimize_constrained": (lambda: jaxopt2.minimize_constrained(
        _DISTANCE, jnp.zeros(3), _a(), eq=_PLANE), _a() - (jnp.sum(_a()) - 1.0) / 3),
    # min ½‖x‖² − aᵀx subject to Σx = 1: the same projection onto the plane
    "solve_qp": (lambda: solve_qp(jnp.eye(3), -_a(), jnp.ones((1, 3)), jnp.ones(1)),
                 _a() - (jnp.sum(_a()) - 1.0) / 3),
    # a 2 × 2 transport with a cost that favours the diagonal: the plan's row sums are a
    "sinkhorn": (lambda: jaxopt2.ot.sinkhorn(jnp.array([[0.0, 1.0], [1.0, 0.0]]),
                                             epsilon=0.1), None),
}


def _output(solution):
    for field in ("params", "x", "f"):
        if hasattr(solution, field):
            return getattr(solution, field)
    raise AssertionError(type(solution))


@pytest.mark.parametrize("door", sorted(_DOORS))
def test_every_door_caches_its_program(door):
    call, expected = _DOORS[door]
    first = call()
    with count_compiles() as again:
        second = call()  # the same functions, solver and shapes: no compile at all
    if expected is not None:
        np.testing.assert_allclose(_output(first), expected, atol=2e-4)  # float32 tolerances
    assert first.status == jaxopt2.RESULTS.successful
    np.testing.assert_array_equal(_output(first), _output(second))
    assert again[0] == 0


_SCRIPT = """
import jax.numpy as jnp, jaxopt2
fun = lambda x, a: jnp.sum((x - a) ** 2) + jnp.sum(x ** 4)
sol = jaxopt2.minimize(fun, jnp.zeros(3), jnp.ones(3), solver=jaxopt2.NewtonCG())
print("solved", bool(sol.success))
"""


def makefile_cache_settings(cache_dir):
    """The environment `make run` sets for JAX's persistent cache, read from the Makefile,
    with the cache directory moved to `cache_dir`."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "Makefile").read_text()
    line = re.search(r"^JAX_CACHE := (.*)$", text, re.M).group(1)
    env = dict(item.split("=", 1) for item in line.split())
    assert env.pop("JAX_COMPILATION_CACHE_DIR")  # make run names a cache directory
    return {**env, "JAX_COMPILATION_CACHE_DIR": str(cache_dir)}


def run_twice(command, cache_dir, timeout):
    """Run `command` twice with `make run`'s cache settings; per run, the number of
    programs compiled and the number loaded from the persistent cache."""
    import os
    import subprocess

    env = {**os.environ, **makefile_cache_settings(cache_dir), "JAX_LOG_COMPILES": "1"}
    counts = []
    for _ in range(2):
        out = subprocess.run(command, env=env, capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == 0, out.stderr[-3000:]
        log = out.stdout + out.stderr
        counts.append((log.count("Compiling "), log.count("Persistent compilation cache hit")))
    return counts


def test_a_second_process_loads_the_solve_from_the_persistent_cache(tmp_path):
    # throw=True (the default) at top level: the compiled solve holds no host callback, so
    # JAX can persist it (a program with one is never written to the cache).
    import sys

    (first, first_hits), (second, second_hits) = run_twice(
        [sys.executable, "-c", _SCRIPT], tmp_path / "cache", timeout=300)
    assert first >= 1 and first_hits == 0
    assert second == first and second_hits == second  # every program loaded, none compiled


@pytest.mark.slow
def test_a_second_make_run_compiles_nothing(tmp_path):
    """`make run`'s promise (issue 20): the demo run again loads every program it compiled,
    except the one per solver that records its convergence history through a host callback
    (wall-clock times per step), which JAX never writes to its persistent cache."""
    import pathlib
    import sys

    root = pathlib.Path(__file__).parents[1]
    command = [sys.executable, str(root / "examples" / "demo.py"), "--config",
               str(root / "configs" / "smoke.yaml"), "--output-dir", str(tmp_path / "out")]
    (first, first_hits), (second, second_hits) = run_twice(command, tmp_path / "cache",
                                                           timeout=900)
    import yaml

    with_callbacks = len(yaml.safe_load((root / "configs" / "smoke.yaml").read_text())["solvers"])
    assert first >= 1 and first_hits == 0
    assert second == first and second_hits == second - with_callbacks


_DATA = None  # set by the test (arrays made at import would carry another test's dtypes)


def _distance_to_global_data(x, args):
    return jnp.sum((x - _DATA) ** 2)


def test_arrays_a_function_reaches_are_part_of_the_cache_key(monkeypatch):
    """A cached program holds the arrays `fun` reads from its closure or module globals as
    constants: rebinding them must compile anew, not silently reuse the old values."""
    solver = jaxopt2.Newton()
    x0 = jnp.zeros(2)
    monkeypatch.setitem(globals(), "_DATA", jnp.array([1.0, 2.0]))
    first = jaxopt2.minimize(_distance_to_global_data, x0, solver=solver)
    np.testing.assert_allclose(first.params, [1.0, 2.0], rtol=1e-6)
    monkeypatch.setitem(globals(), "_DATA", jnp.array([-3.0, 5.0]))
    second = jaxopt2.minimize(_distance_to_global_data, x0, solver=solver)
    np.testing.assert_allclose(second.params, [-3.0, 5.0], rtol=1e-6)

    def make(data):
        inner = lambda x: jnp.sum((x - data) ** 2)  # noqa: E731
        return lambda x, a: inner(x)  # the array two closures down

    for data in (jnp.array([4.0, 4.0]), jnp.array([-1.0, 0.5])):
        sol = jaxopt2.minimize(make(data), x0, solver=solver)
        np.testing.assert_allclose(sol.params, data, rtol=1e-6)
