"""LBFGS and BFGS: convergence to dense-Newton solutions, closed forms and scipy's L-BFGS-B;
BFGS's quadratic termination and exact inverse Hessian; float32 and mixed dtypes; the
steepest-descent fallback and the failure status; evaluation counts; jit + vmap; implicit
gradients against finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxopt2
from jaxopt2 import RESULTS
from jaxopt2._base import evaluate
from jaxopt2._iterate import run_minimizer

pytestmark = pytest.mark.float64  # written for float64 tolerances

SOLVERS = {"LBFGS": jaxopt2.LBFGS, "BFGS": jaxopt2.BFGS}
NAMES = list(SOLVERS)


@eqx.filter_jit
def solve(fun, params0, args, solver, max_steps=500):
    return jaxopt2.minimize(fun, params0, args, solver=solver, max_steps=max_steps, throw=False)


# ----------------------------------------------------------------------------- problems


def logreg_data(seed=0, n=80, d=5, dtype=jnp.float64):
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    X = jax.random.normal(kx, (n, d), dtype) * jnp.linspace(0.5, 3.0, d, dtype=dtype)
    y = jnp.where(X @ jax.random.normal(kw, (d,), dtype) + 0.3 > 0, 1.0, -1.0).astype(dtype)
    return X, y, jnp.asarray(0.05, dtype)


def logreg(params, args):
    X, y, lam = args
    z = X @ params["w"] + params["b"]
    return jnp.mean(jnp.logaddexp(0.0, -y * z)) + 0.5 * lam * jnp.sum(params["w"] ** 2)


def logreg_params0(d=5, dtype=jnp.float64):
    return {"w": jnp.zeros(d, dtype), "b": jnp.zeros((), dtype)}


def _logreg_numpy(theta, args):
    """Value, gradient and Hessian of `logreg` at theta = [w, b], in closed form (numpy)."""
    X, y, lam = (np.asarray(a, np.float64) for a in args)
    Z = np.hstack([X, np.ones((len(X), 1))])
    m = y * (Z @ theta)
    sig = 1.0 / (1.0 + np.exp(m))  # σ(−m)
    reg = np.r_[np.full(X.shape[1], lam), 0.0]
    value = np.mean(np.logaddexp(0.0, -m)) + 0.5 * np.sum(reg * theta**2)
    grad = -Z.T @ (y * sig) / len(X) + reg * theta
    hess = (Z.T * (sig * (1 - sig))) @ Z / len(X) + np.diag(reg)
    return value, grad, hess


def dense_newton(args):
    """The reference: plain Newton with np.linalg.solve on the closed-form Hessian."""
    theta = np.zeros(args[0].shape[1] + 1)
    for _ in range(30):
        _, g, H = _logreg_numpy(theta, args)
        theta = theta - np.linalg.solve(H, g)
    return {"w": theta[:-1], "b": theta[-1]}


def quadratic_data(n=20, cond=1e4, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = Q @ np.diag(np.logspace(0, np.log10(cond), n)) @ Q.T
    return jnp.asarray((A + A.T) / 2), jnp.asarray(rng.normal(size=n))


def quadratic(x, args):
    A, b = args
    return 0.5 * x @ A @ x - b @ x


def rosenbrock(x, args):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


# ----------------------------------------------------------------------------- convergence


@pytest.mark.parametrize("name", NAMES)
def test_logistic_regression_matches_dense_newton_and_scipy(name):
    args = logreg_data()
    sol = solve(logreg, logreg_params0(), args, SOLVERS[name](rtol=1e-10))
    assert sol.status == RESULTS.successful
    ref = dense_newton(args)
    for k in ("w", "b"):
        np.testing.assert_allclose(sol.params[k], ref[k], rtol=1e-7, atol=1e-9)

    res = scipy.optimize.minimize(lambda x: _logreg_numpy(x, args)[:2], np.zeros(6),
                                  jac=True, method="L-BFGS-B",
                                  options=dict(gtol=1e-12, ftol=0.0, maxiter=1000))
    theta = np.r_[sol.params["w"], sol.params["b"]]
    np.testing.assert_allclose(theta, res.x, rtol=1e-6, atol=1e-7)
    # About as many evaluations as scipy: the line search does not waste trials.
    assert int(sol.stats["num_grad"]) <= 2 * res.nfev


@pytest.mark.parametrize("name", NAMES)
def test_ill_conditioned_quadratic(name):
    # Condition number 1e4; LBFGS's ring buffer wraps around many times.
    args = quadratic_data()
    sol = solve(quadratic, jnp.zeros(20), args, SOLVERS[name](rtol=1e-9), max_steps=2000)
    assert sol.status == RESULTS.successful
    x_star = jnp.linalg.solve(*args)
    np.testing.assert_allclose(sol.params, x_star, rtol=0, atol=1e-6 * float(jnp.abs(x_star).max()))


@pytest.mark.parametrize("name", NAMES)
def test_rosenbrock(name):
    for dtype, rtol, tol in [(jnp.float64, 1e-10, 1e-6), (jnp.float32, 1e-5, 1e-3)]:
        x0 = jnp.array([-1.2, 1.0], dtype)
        sol = solve(rosenbrock, x0, None, SOLVERS[name](rtol=rtol), max_steps=200)
        assert sol.status == RESULTS.successful
        assert sol.params.dtype == dtype
        np.testing.assert_allclose(sol.params, [1.0, 1.0], atol=tol)
        # Matches scipy's L-BFGS-B, with a comparable number of steps.
        res = scipy.optimize.minimize(lambda x: rosenbrock(x, None), np.array([-1.2, 1.0]),
                                      jac=scipy.optimize.rosen_der, method="L-BFGS-B",
                                      options=dict(gtol=1e-10, ftol=0.0))
        np.testing.assert_allclose(sol.params, res.x, atol=tol)
        assert int(sol.stats["num_steps"]) <= 2 * res.nit


def test_lbfgs_fewer_evaluations_than_gradient_descent():
    # The ill-conditioned quadratic and solver of the test above (so the compilation is shared).
    args = quadratic_data()
    sol = solve(quadratic, jnp.zeros(20), args, jaxopt2.LBFGS(rtol=1e-9), max_steps=2000)
    assert sol.status == RESULTS.successful
    evals = int(sol.stats["num_grad"] + sol.stats["num_fun"])
    # Given as many steps as LBFGS used evaluations (each GD step costs at least one),
    # gradient descent is still far from the tolerance.
    gd = solve(quadratic, jnp.zeros(20), args, jaxopt2.GradientDescent(), max_steps=evals)
    assert gd.status == RESULTS.max_steps_reached
    x_star = jnp.linalg.solve(*args)
    assert jnp.abs(sol.params - x_star).max() < 1e-3 * jnp.abs(gd.params - x_star).max()


# ----------------------------------------------------------------- quadratic termination


def test_bfgs_quadratic_termination_and_exact_inverse_hessian():
    # With (near-)exact line searches BFGS minimizes an n-dim quadratic in n steps and its
    # inverse-Hessian approximation is then exactly A⁻¹ (N&W Thm. 6.4 / Fletcher).
    n = 8
    A, b = quadratic_data(n=n, cond=1e2, seed=1)
    solver = jaxopt2.BFGS(rtol=1e-10, c2=1e-6)
    sol = solve(quadratic, jnp.zeros(n), (A, b), solver, max_steps=n)
    A_inv = jnp.linalg.inv(A)
    np.testing.assert_allclose(sol.state.memory, A_inv, atol=1e-9 * float(jnp.abs(A_inv).max()))
    np.testing.assert_allclose(sol.params, jnp.linalg.solve(A, b), atol=1e-9)
    np.testing.assert_allclose(sol.state.memory, sol.state.memory.T, rtol=0, atol=1e-15)


def test_lbfgs_quadratic_termination():
    n = 8
    A, b = quadratic_data(n=n, cond=1e2, seed=1)
    sol = solve(quadratic, jnp.zeros(n), (A, b), jaxopt2.LBFGS(rtol=1e-10, c2=1e-6))
    assert sol.status == RESULTS.successful
    assert int(sol.stats["num_steps"]) <= n + 1


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("name", NAMES)
def test_float32_logistic_regression(name):
    args = logreg_data(dtype=jnp.float32)
    sol = solve(logreg, logreg_params0(dtype=jnp.float32), args, SOLVERS[name](rtol=1e-5))
    assert sol.status == RESULTS.successful
    assert sol.params["w"].dtype == jnp.float32 and sol.params["b"].dtype == jnp.float32
    assert sol.value.dtype == jnp.float32
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(sol.params))
    ref = dense_newton(args)
    for k in ("w", "b"):
        np.testing.assert_allclose(sol.params[k], ref[k], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_dtype_params_keep_dtypes(name):
    # BFGS flattens with promotion and casts back; LBFGS never flattens.
    args = logreg_data()
    p0 = {"w": jnp.zeros(5, jnp.float32), "b": jnp.zeros((), jnp.float64)}
    sol = solve(logreg, p0, args, SOLVERS[name](rtol=1e-5))
    assert sol.status == RESULTS.successful
    assert sol.params["w"].dtype == jnp.float32 and sol.params["b"].dtype == jnp.float64
    ref = dense_newton(args)
    np.testing.assert_allclose(sol.params["w"], ref["w"], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- fallback and failure


@jax.custom_jvp
def lying_square(x):
    return jnp.sum(x**2)


@lying_square.defjvp
def _lying_square_jvp(primals, tangents):
    # Gradient of the wrong sign: every "descent" direction goes uphill.
    (x,), (dx,) = primals, tangents
    return lying_square(x), -2.0 * jnp.sum(x * dx)


def _lying(x, args):
    return lying_square(x), None


def test_line_search_failure_from_steepest_descent_fails():
    # The first step has no memory, so its search is from steepest descent: no retry.
    x0 = jnp.array([1.0, -2.0])
    sol = solve(lambda x, a: lying_square(x), x0, None, jaxopt2.LBFGS())
    assert sol.status == RESULTS.line_search_failed
    assert int(sol.stats["num_steps"]) == 1
    np.testing.assert_array_equal(sol.params, x0)


def _positive_definite_memory(name, solver, x):
    """A non-empty memory whose H is positive definite (so its direction claims descent)."""
    state = solver.init(_lying, evaluate(_lying, x, None), None)
    if name == "BFGS":
        return eqx.tree_at(lambda s: s.empty, state, jnp.array(False))
    mem = state.memory
    e1 = jnp.zeros_like(x).at[0].set(1.0)
    mem = eqx.tree_at(lambda m: (m.s, m.y, m.rho, m.count, m.head), mem,
                      (mem.s.at[0].set(e1), mem.y.at[0].set(e1), mem.rho.at[0].set(1.0),
                       jnp.array(1, jnp.int32), jnp.array(1, jnp.int32)))
    return eqx.tree_at(lambda s: (s.memory, s.empty), state, (mem, jnp.array(False)))


@pytest.mark.parametrize("name", NAMES)
def test_failed_quasi_newton_search_retries_from_steepest_descent(name):
    solver = SOLVERS[name]()
    x = jnp.array([1.0, -2.0])
    it = evaluate(_lying, x, None)
    state = _positive_definite_memory(name, solver, x)
    step = eqx.filter_jit(solver.step)
    # First failure (from the quasi-Newton direction): memory dropped, keep going.
    it1, state1, counts1, result1 = step(_lying, it, None, state)
    assert result1 == RESULTS.successful and bool(state1.empty)
    np.testing.assert_array_equal(it1.params, x)
    assert int(counts1.grad) >= 1
    # Second failure, now from steepest descent: report it.
    _, _, _, result2 = step(_lying, it1, None, state1)
    assert result2 == RESULTS.line_search_failed


@pytest.mark.parametrize("name", NAMES)
def test_non_descent_direction_falls_back_to_steepest_descent(name):
    solver = SOLVERS[name]()
    x = jnp.array([1.0, -2.0, 0.5])
    args = quadratic_data(n=3, cond=10.0)
    fn = lambda p, a: (quadratic(p, a), None)
    it = evaluate(fn, x, args)
    state = solver.init(fn, it, args)
    # Corrupt the memory so that −H g points uphill (H = −I).
    if name == "BFGS":
        memory = -jnp.eye(3)
    else:
        memory = eqx.tree_at(lambda m: (m.gamma, m.count), state.memory,
                             (jnp.array(-1.0), jnp.array(1, jnp.int32)))
    state = eqx.tree_at(lambda s: (s.memory, s.empty), state, (memory, jnp.array(False)))
    new, new_state, _, result = eqx.filter_jit(solver.step)(fn, it, args, state)
    assert result == RESULTS.successful
    assert new.value < it.value
    # The memory restarted from the steepest-descent pair: H is positive definite again.
    g = jax.random.normal(jax.random.PRNGKey(0), (3,))
    assert not bool(new_state.empty)
    assert float(g @ solver._apply(new_state.memory, g)) < 0


# ----------------------------------------------------------------------------- counts


@pytest.mark.parametrize("name", NAMES)
def test_counts_equal_objective_evaluations(name):
    calls = []

    def fn(x, args):
        jax.debug.callback(lambda: calls.append(1))
        return rosenbrock(x, args), None

    run = jax.jit(lambda x0: run_minimizer(SOLVERS[name](), fn, x0, None, max_steps=50))
    out = jax.block_until_ready(run(jnp.array([-1.2, 1.0])))
    # one Hessian-vector product for the first step's Cauchy length; the final curvature
    # check's run in batched pairs, one traced evaluation of fn per pair
    c = out.counts
    assert int(c.grad + c.fun + 1 + (c.hvp - 1) // 2) == len(calls)
    assert int(out.counts.grad) > int(out.num_steps)


def test_history_must_be_positive():
    with pytest.raises(ValueError, match="history"):
        jaxopt2.LBFGS(history=0)


# ----------------------------------------------------------------------------- transformations


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_over_problems(name):
    batch = [logreg_data(seed=s) for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *batch)
    solver = SOLVERS[name](rtol=1e-9)
    run = lambda a: jaxopt2.minimize(logreg, logreg_params0(), a, solver=solver, max_steps=200)
    sols = jax.jit(jax.vmap(run))(stacked)
    assert bool(jnp.all(sols.status._value == RESULTS.successful._value))
    for i, args in enumerate(batch):
        ref = dense_newton(args)
        np.testing.assert_allclose(sols.params["w"][i], ref["w"], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(sols.params["b"][i], ref["b"], rtol=1e-6, atol=1e-8)


def test_implicit_gradient_matches_finite_differences():
    args = logreg_data(n=40, d=3)
    solver = jaxopt2.LBFGS(rtol=1e-12)
    weights = jnp.array([1.0, -2.0, 0.5])

    def outer(args):
        sol = jaxopt2.minimize(logreg, logreg_params0(3), args, solver=solver, max_steps=500)
        return sol.params["w"] @ weights + 3.0 * sol.params["b"]

    value_and_grad = jax.jit(jax.value_and_grad(outer))
    _, grads = value_and_grad(args)
    # Directional derivative along a random direction in (X, y, lam) against central
    # differences of the (tightly converged) solution map.
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    direction = tuple(jax.random.normal(k, jnp.shape(a)) for k, a in zip(keys, args,
                                                                         strict=True))
    h = 1e-5
    plus, _ = value_and_grad(jax.tree_util.tree_map(lambda a, v: a + h * v, args, direction))
    minus, _ = value_and_grad(jax.tree_util.tree_map(lambda a, v: a - h * v, args, direction))
    fd = (plus - minus) / (2 * h)
    ad = sum(jnp.vdot(g, v) for g, v in zip(grads, direction, strict=True))
    np.testing.assert_allclose(ad, fd, rtol=1e-5)
