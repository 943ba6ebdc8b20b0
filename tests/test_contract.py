"""The contract every public minimizer keeps (solvers register in tests/solvers.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2 import RESULTS
from jaxopt2._front import raise_if_failed

from .solvers import MINIMIZERS, contract_params

pytestmark = pytest.mark.float64  # written for float64 tolerances

NAMES = sorted(MINIMIZERS)


def make_problem(seed, n=40, d=4, dtype=jnp.float64):
    """A strongly convex L2-regularised logistic regression with pytree params."""
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    X = jax.random.normal(kx, (n, d), dtype)
    w_true = jax.random.normal(kw, (d,), dtype)
    y = (X @ w_true > 0).astype(dtype)
    return X, y, jnp.asarray(0.1, dtype)


def objective(params, args):
    X, y, lam = args
    z = X @ params["w"] + params["b"]
    loss = jnp.mean(jnp.logaddexp(0.0, z) - y * z)
    return loss + 0.5 * lam * (jnp.sum(params["w"] ** 2) + params["b"] ** 2)


def params0(d=4, dtype=jnp.float64):
    return {"w": jnp.zeros(d, dtype), "b": jnp.zeros((), dtype)}


@jax.jit
def reference_solution(args):
    """Dense Newton with jnp.linalg.solve, 30 steps: the ground truth."""
    flat0, unravel = jax.flatten_util.ravel_pytree(params0(args[0].shape[-1], args[0].dtype))
    f = lambda x: objective(unravel(x), args)
    newton = lambda x, _: (x - jnp.linalg.solve(jax.hessian(f)(x), jax.grad(f)(x)), None)
    return unravel(jax.lax.scan(newton, flat0, None, length=30)[0])


def solve(name, args, dtype=jnp.float64, throw=True, fun=objective, **kw):
    factory, budget = MINIMIZERS[name]
    d = args[0].shape[-1]
    return jaxopt2.minimize(fun, params0(d, dtype), args, solver=factory(),
                            max_steps=kw.pop("max_steps", budget), throw=throw, **kw)


@pytest.mark.parametrize("name", contract_params(NAMES))
def test_float32_kept(name):
    args = make_problem(1, dtype=jnp.float32)
    sol = jax.jit(lambda a: solve(name, a, dtype=jnp.float32))(args)
    assert sol.params["w"].dtype == jnp.float32 and sol.params["b"].dtype == jnp.float32
    assert sol.value.dtype == jnp.float32
    assert sol.status == RESULTS.successful
    # Success must mean what the float32 stopping test promises, checked in float64.
    args64 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), args)
    params64 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), sol.params)
    inf_norm = lambda g: max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(g))
    g0 = inf_norm(jax.grad(objective)(params0(), args64))
    rtol32 = jaxopt2._base.default_rtol(jnp.float32)
    assert inf_norm(jax.grad(objective)(params64, args64)) <= 1.5 * rtol32 * g0
    # ... and so, with strong convexity lam = 0.1, parameters within |g| / lam of the optimum.
    ref = reference_solution(args64)
    np.testing.assert_allclose(sol.params["w"], ref["w"], atol=1.5 * rtol32 * g0 / 0.1)


@pytest.mark.parametrize("name", contract_params(NAMES))
def test_max_steps_status(name):
    args = make_problem(0)
    sol = solve(name, args, throw=False, max_steps=1)
    assert sol.status == RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 1
    # what throw=True does with that status (its wiring is tested in test_checks.py)
    with pytest.raises(RuntimeError, match="max_steps"):
        raise_if_failed(sol.params, sol.status)


@pytest.mark.parametrize("name", contract_params(NAMES))
def test_jit_vmap_equals_loop_and_isolates_failures(name):
    """vmap gives each problem its own status and the loop's answer; the compiled solve is
    reused for new data without tracing the objective again."""
    batch = [make_problem(s) for s in range(3)]
    X, y, lam = batch[1]
    batch[1] = (X.at[0, 0].set(jnp.nan), y, lam)  # one poisoned problem
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batch)
    # throw=True must not raise under vmap: statuses are per problem.
    vsol = jax.jit(jax.vmap(lambda a: solve(name, a, throw=True)))(stacked)
    codes = np.asarray(vsol.status._value)
    assert codes[1] == RESULTS.nonfinite._value
    assert codes[0] == codes[2] == RESULTS.successful._value
    traces = []

    def counted(params, args):
        traces.append(1)
        return objective(params, args)

    single = jax.jit(lambda a: solve(name, a, throw=False, fun=counted))
    for i, args in enumerate(batch):
        sol = single(args)  # unbatched and traced, so the input check cannot see the NaN
        if i == 0:
            num_traces = len(traces)
        assert len(traces) == num_traces, "new data of the same shapes traced the solve again"
        assert sol.status._value == codes[i]
        if i == 1:
            continue
        np.testing.assert_allclose(vsol.params["w"][i], sol.params["w"], rtol=1e-6, atol=1e-8)
        ref = reference_solution(args)
        np.testing.assert_allclose(sol.params["w"], ref["w"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sol.params["b"], ref["b"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sol.value, objective(ref, args), rtol=1e-8)
        assert int(sol.stats["num_steps"]) >= 1 and int(sol.stats["num_grad"]) >= 1
    with pytest.raises(Exception, match="NaN or infinity"):
        jax.block_until_ready(jax.jit(lambda a: solve(name, a).params)(batch[1]))


@pytest.mark.parametrize("name", contract_params(NAMES))
def test_implicit_gradient_matches_finite_differences(name):
    X, y, _ = make_problem(2)

    def outer(lam):
        sol = solve(name, (X, y, lam))
        return jnp.sum(sol.params["w"] ** 2) + sol.value

    h = 1e-4
    # one compiled program: the value (for finite differences), reverse and forward mode
    run = jax.jit(lambda x: (outer(x), jax.grad(outer)(x), jax.jacfwd(outer)(x)))
    fd = (run(0.3 + h)[0] - run(0.3 - h)[0]) / (2 * h)
    _, g_rev, g_fwd = run(0.3)
    np.testing.assert_allclose(g_rev, fd, rtol=1e-4)
    np.testing.assert_allclose(g_fwd, g_rev, rtol=1e-6)


@pytest.mark.parametrize("name", contract_params(NAMES))
def test_tuple_pytree_params(name):
    X, y, lam = make_problem(3)
    factory, budget = MINIMIZERS[name]
    fun = lambda p, a: objective({"w": p[0], "b": p[1][0]}, a)
    sol = jaxopt2.minimize(fun, (jnp.zeros(4), [jnp.zeros(())]), (X, y, lam),
                           solver=factory(), max_steps=budget)
    ref = reference_solution((X, y, lam))
    assert isinstance(sol.params, tuple) and isinstance(sol.params[1], list)
    np.testing.assert_allclose(sol.params[0], ref["w"], rtol=1e-4, atol=1e-5)
