"""`jaxopt2.Stepper`: a user's loop of `step` calls takes the front door's iterates and ends
with its step count, status and counts; a `done` state is a fixed point of `step`; `step`
compiles once and batches under `vmap`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2 import RESULTS


def _rosenbrock(p, a):
    x = jnp.concatenate([p["x"], p["y"][None]])
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (a - x[:-1]) ** 2)


def _cubic(y, a):  # F(y) = y³ + 2y − a, one root per entry
    return y**3 + 2.0 * y - a


def _layer(y, a):  # a contraction: g(y) = tanh(Wy/2 + a)
    w = jnp.array([[0.5, -0.3, 0.1], [0.2, 0.4, -0.2], [-0.1, 0.3, 0.6]], y.dtype)
    return jnp.tanh(0.5 * w @ y + a)


def _decay(p, data):  # residuals of an exponential fit
    t, y = data
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def _problem(name):
    """(front door, fun, x0, args, solver, kind)."""
    if name in ("LBFGS", "Newton", "NewtonCG"):
        x0 = {"x": jnp.array([-1.2, 1.0, -0.5]), "y": jnp.array(0.8)}
        if name == "NewtonCG":
            # In float32 NewtonCG's gradient test passes on the 4-D valley ~0.05 short of its
            # minimum, and the final curvature check (rightly) reports `ill_conditioned`; the
            # 2-D problem it solves.
            x0 = {"x": jnp.array([-1.2]), "y": jnp.array(1.0)}
        return jaxopt2.minimize, _rosenbrock, x0, jnp.array(1.0), getattr(jaxopt2, name)(), \
            "minimize"
    if name == "NewtonRaphson":
        return jaxopt2.root_find, _cubic, jnp.array([3.0, -2.0, 0.5]), \
            jnp.array([1.0, 2.0, -4.0]), jaxopt2.NewtonRaphson(), "root_find"
    if name == "Anderson":
        return jaxopt2.fixed_point, _layer, jnp.zeros(3), jnp.array([0.3, -0.5, 1.0]), \
            jaxopt2.Anderson(), "fixed_point"
    t = jnp.linspace(0.0, 3.0, 30)
    data = (t, 2.0 * jnp.exp(-1.3 * t) + 0.5 + 0.01 * jnp.sin(7.0 * t))
    return jaxopt2.least_squares, _decay, jnp.array([1.0, 1.0, 0.0]), data, \
        jaxopt2.LevenbergMarquardt(), "least_squares"


def _run(stepper, x0, args):
    """A user's Python loop: the state after every step."""
    step = jax.jit(stepper.step)
    state = stepper.init(x0, args)
    states = [state]
    while not state.done:
        state = step(state, args)
        states.append(state)
    return states, step


SOLVERS = ["LBFGS", "Newton", "NewtonCG", "NewtonRaphson", "Anderson", "LevenbergMarquardt"]


# L-BFGS on the 4-D valley is compared in float64: in float32 the front door's one compiled
# program and the Stepper's per-step programs round differently enough that L-BFGS's stopping
# test, met right at its tolerance, passes one step apart (47 against 48 steps, both
# successful), and this test compares step counts and statistics exactly.
@pytest.mark.parametrize("name", [pytest.param(s, marks=pytest.mark.float64) if s == "LBFGS"
                                  else s for s in SOLVERS])
def test_loop_matches_front_door(name):
    door, fun, x0, args, solver, kind = _problem(name)
    seen = []
    sol = door(fun, x0, args, solver=solver, throw=False,
               callback=lambda step, params, *_: seen.append(params))
    stepper = jaxopt2.Stepper(fun, solver)
    assert stepper.kind == kind
    states, step = _run(stepper, x0, args)
    final = states[-1]
    assert sol.status == RESULTS.successful  # the probes are solvable
    assert int(final.num_steps) == int(sol.stats["num_steps"]) == len(seen) == len(states) - 1
    assert final.status == sol.status and bool(final.success)
    # The same iterates, up to the round-off of two differently compiled float32 programs (one
    # whole loop against one step at a time: XLA fuses and orders the arithmetic differently,
    # and the CPU's instruction set changes which), amplified along Rosenbrock's curved valley
    # by its Hessian's condition number (~1e3): measured 3e-5 relative and 1.3e-5 absolute
    # (iterates of size ~1) mid-path.
    for state, params in zip(states[1:], seen, strict=True):
        for a, b in zip(jax.tree_util.tree_leaves(state.params),
                        jax.tree_util.tree_leaves(params), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves((final.params, final.value)),
                    jax.tree_util.tree_leaves((sol.params, sol.value)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert {k: int(v) for k, v in final.stats.items()} == \
        {k: int(v) for k, v in sol.stats.items()}
    assert step._cache_size() == 1  # every step reused one compilation


def test_norm_is_what_the_solve_drives_to_zero():
    for name in ("LBFGS", "NewtonRaphson", "Anderson", "LevenbergMarquardt"):
        _, fun, x0, args, solver, kind = _problem(name)
        state = jaxopt2.Stepper(fun, solver).init(x0, args)
        if kind == "minimize":
            expected = jax.grad(fun)(x0, args)
        elif kind == "fixed_point":
            expected = fun(x0, args) - x0
        else:
            expected = fun(x0, args)
        flat = jnp.concatenate([jnp.ravel(v) for v in jax.tree_util.tree_leaves(expected)])
        np.testing.assert_allclose(state.norm, jnp.max(jnp.abs(flat)), rtol=1e-6)
        if kind == "fixed_point":
            np.testing.assert_allclose(state.value, fun(x0, args), rtol=1e-6)


def test_root_finder_on_a_fixed_point_reports_g():
    _, fun, x0, args, _, _ = _problem("Anderson")
    sol = jaxopt2.fixed_point(fun, x0, args, solver=jaxopt2.NewtonRaphson())
    stepper = jaxopt2.Stepper(fun, jaxopt2.NewtonRaphson(), kind="fixed_point")
    final = _run(stepper, x0, args)[0][-1]
    assert int(final.num_steps) == int(sol.stats["num_steps"])
    np.testing.assert_allclose(final.params, sol.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final.value, fun(final.params, args), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final.value, final.params, atol=1e-5)  # g(y) = y


def _same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["Newton", "NewtonRaphson"])
def test_step_past_done_is_a_no_op(name):
    _, fun, x0, args, solver, _ = _problem(name)
    states, step = _run(jaxopt2.Stepper(fun, solver), x0, args)
    final = states[-1]
    _same(step(final, args), final)
    _same(step(step(final, args), args), final)


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
def test_failures_end_as_the_front_door_does():
    # Out of steps.
    _, fun, x0, args, solver, _ = _problem("LBFGS")
    sol = jaxopt2.minimize(fun, x0, args, solver=solver, max_steps=3, throw=False)
    final = _run(jaxopt2.Stepper(fun, solver, max_steps=3), x0, args)[0][-1]
    assert sol.status == RESULTS.max_steps_reached == final.status
    assert int(final.num_steps) == 3 and bool(final.done) and not bool(final.success)
    # A NaN at the start: done before any step.
    log = lambda x, a: jnp.sum(jnp.log(x - a) ** 2)  # noqa: E731
    state = jaxopt2.Stepper(log, jaxopt2.LBFGS()).init(jnp.array([1.0, 3.0]), jnp.array(2.0))
    assert state.status == RESULTS.nonfinite and bool(state.done)
    assert int(state.num_steps) == 0
    # A saddle: Newton on x² − y² + y⁴ from (1, 0) goes to (0, 0) in one step.
    saddle = lambda p, a: p[0] ** 2 - p[1] ** 2 + p[1] ** 4  # noqa: E731
    p0 = jnp.array([1.0, 0.0])
    sol = jaxopt2.minimize(saddle, p0, solver=jaxopt2.Newton(), throw=False)
    final = _run(jaxopt2.Stepper(saddle, jaxopt2.Newton()), p0, None)[0][-1]
    assert sol.status == RESULTS.saddle_point == final.status
    assert int(final.stats["num_hvp"]) == int(sol.stats["num_hvp"]) > 0


def test_start_at_the_solution_is_done():
    fun = lambda x, a: jnp.sum((x - a) ** 2)  # noqa: E731
    a = jnp.array([1.0, 2.0])
    state = jaxopt2.Stepper(fun, jaxopt2.Newton()).init(a, a)  # gradient exactly zero
    sol = jaxopt2.minimize(fun, a, a, solver=jaxopt2.Newton())
    assert bool(state.done) and state.status == RESULTS.successful == sol.status
    assert int(state.stats["num_hvp"]) == int(sol.stats["num_hvp"])  # the curvature check
    state0 = jaxopt2.Stepper(fun, jaxopt2.Newton(), max_steps=0).init(jnp.zeros(2), a)
    assert bool(state0.done) and state0.status == RESULTS.max_steps_reached


def test_vmap_and_fori_loop():
    """A batch stepped by jit(vmap(step)) inside lax.fori_loop: each problem ends where its
    own front-door solve ends, at its own step count; finished problems stay put."""
    _, fun, _, _, solver, _ = _problem("NewtonRaphson")
    y0 = jnp.array([[3.0, -2.0, 0.5], [0.1, 0.1, 0.1], [30.0, 1.0, -8.0]])
    a = jnp.array([[1.0, 2.0, -4.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    stepper = jaxopt2.Stepper(fun, solver, max_steps=64)

    @jax.jit
    def solve(y0, a):
        state = jax.vmap(stepper.init)(y0, a)
        return jax.lax.fori_loop(0, 64, lambda _, s: jax.vmap(stepper.step)(s, a), state)

    state = solve(y0, a)
    steps = []
    for i in range(3):
        sol = jaxopt2.root_find(fun, y0[i], a[i], solver=solver, max_steps=64)
        steps.append(int(sol.stats["num_steps"]))
        np.testing.assert_allclose(state.params[i], sol.params, rtol=1e-5, atol=1e-6)
        assert int(state.num_steps[i]) == steps[-1]
    assert len(set(steps)) > 1  # the problems stopped at different steps
    assert bool(jnp.all(state.done)) and bool(jnp.all(state.status == RESULTS.successful))
    np.testing.assert_allclose(_cubic(state.params, a), 0.0, atol=1e-4)


def test_scan_over_a_minimization():
    _, fun, x0, args, solver, _ = _problem("Newton")
    stepper = jaxopt2.Stepper(fun, solver)

    def body(state, _):
        state = stepper.step(state, args)
        return state, state.value

    final, values = jax.jit(lambda s: jax.lax.scan(body, s, length=40))(stepper.init(x0, args))
    sol = jaxopt2.minimize(fun, x0, args, solver=solver)
    n = int(final.num_steps)
    assert n == int(sol.stats["num_steps"]) < 40
    # Newton's line search descends (up to float32 round-off of f near the minimum).
    assert bool(jnp.all(jnp.diff(values[:n]) <= 1e-6 * jnp.abs(values[1:n])))
    assert bool(jnp.all(values[n:] == values[n - 1]))  # and then nothing moves
    np.testing.assert_allclose(final.params["x"], sol.params["x"], rtol=1e-5, atol=1e-6)


def test_has_aux_and_half_precision():
    fun = lambda x, a: (jnp.sum((x - a) ** 2), {"r": x - a})  # noqa: E731
    a = jnp.array([1.0, -2.0])
    stepper = jaxopt2.Stepper(fun, jaxopt2.Newton(), has_aux=True)
    final = _run(stepper, jnp.zeros(2, jnp.float16), a)[0][-1]
    assert final.params.dtype == jnp.float32  # solved in float32, as by the front door
    np.testing.assert_allclose(final.params, a, atol=1e-6)
    np.testing.assert_allclose(final.aux["r"], final.params - a)


@pytest.mark.float64
def test_float64_is_kept():
    _, fun, x0, args, solver, _ = _problem("NewtonRaphson")
    x0, args = x0.astype(jnp.float64), args.astype(jnp.float64)
    final = _run(jaxopt2.Stepper(fun, solver), x0, args)[0][-1]
    assert final.params.dtype == jnp.float64 and final.value.dtype == jnp.float64
    np.testing.assert_allclose(_cubic(final.params, args), 0.0, atol=1e-10)


def test_bad_input_is_rejected():
    fun = lambda x, a: jnp.sum(x**2)  # noqa: E731
    with pytest.raises(TypeError, match="kind='minimize'"):
        jaxopt2.Stepper(fun, jaxopt2.NewtonRaphson(), kind="minimize")
    with pytest.raises(ValueError, match="`kind` must be one of"):
        jaxopt2.Stepper(fun, jaxopt2.LBFGS(), kind="minimise")
    with pytest.raises(TypeError, match="jaxopt2 solver"):
        jaxopt2.Stepper(fun, "lbfgs")
    with pytest.raises(ValueError, match="max_steps"):
        jaxopt2.Stepper(fun, jaxopt2.LBFGS(), max_steps=-1)
    with pytest.raises(ValueError, match="scalar objective"):
        jaxopt2.Stepper(lambda x, a: x, jaxopt2.LBFGS()).init(jnp.zeros(2))
    root_state = jaxopt2.Stepper(_cubic, jaxopt2.NewtonRaphson()).init(jnp.zeros(2), 1.0)
    with pytest.raises(TypeError, match="StepState of a kind='minimize'"):
        jaxopt2.Stepper(fun, jaxopt2.LBFGS()).step(root_state)


def test_vmap_curvature_check_is_per_problem():
    """Under vmap the curvature check runs where a problem is accepted, and only its own
    status changes: from (1, 0) Newton lands on the saddle of x² − y² + y⁴, from (1, 0.5)
    on a minimum (0, ±1/√2)."""
    saddle = lambda p, a: p[0] ** 2 - p[1] ** 2 + a * p[1] ** 4  # noqa: E731
    p0 = jnp.array([[1.0, 0.0], [1.0, 0.5]])
    stepper = jaxopt2.Stepper(saddle, jaxopt2.Newton(), max_steps=30)
    state = jax.jit(lambda p0: jax.lax.fori_loop(
        0, 30, lambda _, s: jax.vmap(stepper.step, (0, None))(s, 1.0),
        jax.vmap(stepper.init, (0, None))(p0, 1.0)))(p0)
    for i in range(2):
        sol = jaxopt2.minimize(saddle, p0[i], 1.0, solver=jaxopt2.Newton(), throw=False)
        assert int(state.status.code[i]) == int(sol.status)
        assert int(state.num_steps[i]) == int(sol.stats["num_steps"])
        assert int(state.stats["num_hvp"][i]) == int(sol.stats["num_hvp"])
    assert list(jaxopt2.status_name(state.status.code)) == ["saddle_point", "successful"]
    np.testing.assert_allclose(jnp.abs(state.params[1]), jnp.array([0.0, 0.5**0.5]),
                               atol=1e-5)


def test_default_budget_is_the_solvers_own_as_in_the_front_door():
    """The Stepper's default `max_steps` is the solver's (`default_max_steps`), the budget
    `minimize(max_steps=None)` uses; a first-order solver gets more steps than Newton."""
    fun = lambda x, _: jnp.sum(x**2)  # noqa: E731
    for solver in (jaxopt2.Newton(), jaxopt2.LBFGS(), jaxopt2.GradientDescent()):
        assert jaxopt2.Stepper(fun, solver).max_steps == solver.default_max_steps
    assert jaxopt2.LBFGS().default_max_steps > jaxopt2.Newton().default_max_steps
    assert jaxopt2.Stepper(fun, jaxopt2.NewtonRaphson()).max_steps == 256
