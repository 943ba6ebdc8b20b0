"""RegularizedNewton (gradient-regularized Newton) and DampedNewton (AICN)."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
import pytest

import jaxopt2
from jaxopt2 import RESULTS

pytestmark = pytest.mark.float64  # written for float64 tolerances

# ---------------------------------------------------------------- problems and references


def make_logreg(seed, n=60, d=5, dtype=jnp.float64):
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    X = jax.random.normal(kx, (n, d), dtype)
    w = 2 * jax.random.normal(kw, (d,), dtype)
    y = (X @ w + 0.5 > 0).astype(dtype)
    return X, y


def logreg(p, a):
    X, y = a
    z = X @ p["w"] + p["b"]
    reg = 0.5 * 1e-2 * (jnp.sum(p["w"] ** 2) + p["b"] ** 2)
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + reg


def logreg_p0(d=5, dtype=jnp.float64):
    return {"w": jnp.zeros(d, dtype), "b": jnp.zeros((), dtype)}


def make_softmax(seed, n=80, d=4, k=3):
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    X = jax.random.normal(kx, (n, d))
    y = jnp.argmax(X @ jax.random.normal(kw, (d, k)), axis=1)
    return X, jax.nn.one_hot(y, k)


def softmax(p, a):
    X, Y = a
    z = X @ p["W"] + p["b"]
    nll = jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.sum(Y * z, axis=1))
    return nll + 0.5 * 1e-2 * (jnp.sum(p["W"] ** 2) + jnp.sum(p["b"] ** 2))


def dense_newton(fun, params0, args):
    """Undamped Newton with jnp.linalg.solve in float64: the ground truth."""
    to64 = lambda t: jtu.tree_map(lambda x: jnp.asarray(x, jnp.float64), t)
    return _dense_newton(fun, to64(params0), to64(args))


@functools.partial(jax.jit, static_argnums=0)  # compiled once per problem, reused across seeds
def _dense_newton(fun, params0, args, steps=30):
    x0, unravel = jax.flatten_util.ravel_pytree(params0)
    f = lambda v: fun(unravel(v), args)
    step = lambda _, x: x - jnp.linalg.solve(jax.hessian(f)(x), jax.grad(f)(x))
    return unravel(jax.lax.fori_loop(0, steps, step, x0))


def assert_tree_close(a, b, **kw):
    jtu.tree_map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


def trace_values(fun, params0, args, solver, **kw):
    """Solve, recording f after every step through the front door's callback."""
    values = []
    sol = jaxopt2.minimize(fun, params0, args, solver=solver,
                           callback=lambda k, p, v, g: values.append(float(v)), **kw)
    return sol, np.array([float(fun(params0, args))] + values)


def hessian_diagonal(fun, params, args):
    """The exact diagonal of the Hessian (small problems), as a pytree."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return unravel(jnp.diag(jax.hessian(lambda v: fun(unravel(v), args))(flat)))


def diagonal_operator(fun, params, args):
    return lx.DiagonalLinearOperator(hessian_diagonal(fun, params, args))


def diagonal_as_function(fun, params, args):
    # Same matrix, but opaque to the solver: goes through truncated CG.
    diag = hessian_diagonal(fun, params, args)
    mv = lambda v: jtu.tree_map(jnp.multiply, diag, v)
    return lx.FunctionLinearOperator(mv, jax.eval_shape(lambda: params))


# A sum of ½u² + c·log cosh(u) over the coordinates of u = A x − t. Per coordinate the second
# derivative is 1 + c·sech² u ≥ 1 and the third is bounded by 2c·max|sech² u tanh u| =
# 4c/(3√3), so the semi-strong self-concordance constant is at most 4c/(3√3); it is affine
# invariant, so the invertible A does not change it.
C_LOGCOSH = 2.0
L_LOGCOSH = 4 * C_LOGCOSH / (3 * np.sqrt(3))


def logcosh_problem(p, a):
    A, t = a
    u = A @ p - t
    return jnp.sum(0.5 * u**2 + C_LOGCOSH * (jnp.logaddexp(u, -u) - jnp.log(2.0)))


def logcosh_args():
    ka, kt = jax.random.split(jax.random.PRNGKey(5))
    return jnp.eye(4) + 0.3 * jax.random.normal(ka, (4, 4)), 3 * jax.random.normal(kt, (4,))


def rosenbrock(p, a):
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


# Comparisons with the dense-Newton reference solve to a tight gradient tolerance, so that
# the parameter error (≈ tolerance / strong convexity) is far below the asserted one.
TIGHT = 1e-10

SOLVERS = {
    "regularized": lambda **kw: jaxopt2.RegularizedNewton(**{"rtol": TIGHT, **kw}),
    "damped": lambda **kw: jaxopt2.DampedNewton(**{"rtol": TIGHT, **kw}),
}

# ---------------------------------------------------------------- convergence to references


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_logistic_regression_matches_dense_newton_monotonically(name):
    args = make_logreg(0)
    sol, values = trace_values(logreg, logreg_p0(), args, SOLVERS[name]())
    assert_tree_close(sol.params, dense_newton(logreg, logreg_p0(), args), rtol=1e-6, atol=1e-7)
    assert int(sol.stats["num_hvp"]) > 0 and int(sol.stats["num_hessian"]) == 0
    # Both acceptance tests only take steps that decrease f (up to rounding).
    assert len(values) > 3
    assert np.all(np.diff(values) <= 1e-12 * np.abs(values[:-1]))


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_softmax_regression_matches_dense_newton(name):
    args = make_softmax(1)
    p0 = {"W": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    sol = jaxopt2.minimize(softmax, p0, args, solver=SOLVERS[name]())
    assert sol.params["W"].shape == (4, 3) and sol.params["b"].shape == (3,)
    assert_tree_close(sol.params, dense_newton(softmax, p0, args), rtol=1e-6, atol=1e-7)


def test_quadratic_known_minimizer():
    k = jax.random.normal(jax.random.PRNGKey(2), (6, 6))
    A, b = k @ k.T + 0.5 * jnp.eye(6), jnp.arange(6.0)
    quad = lambda x, a: 0.5 * x @ a[0] @ x - a[1] @ x
    x_star = jnp.linalg.solve(A, b)
    for solver in (jaxopt2.RegularizedNewton(),
                   jaxopt2.RegularizedNewton(variant="fixed", lipschitz=1e-3)):
        sol = jaxopt2.minimize(quad, jnp.zeros(6), (A, b), solver=solver)
        np.testing.assert_allclose(sol.params, x_star, rtol=1e-6, atol=1e-8)
    # A quadratic has L = 0 (constant Hessian): AICN's α = 1, one exact Newton step.
    sol = jaxopt2.minimize(quad, jnp.zeros(6), (A, b),
                           solver=jaxopt2.DampedNewton(lipschitz=0.0, cg_rtol=1e-12))
    assert int(sol.stats["num_steps"]) == 1
    np.testing.assert_allclose(sol.params, x_star, rtol=1e-9)
    np.testing.assert_allclose(sol.state.step_size, 1.0)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_rosenbrock(name):
    sol = jaxopt2.minimize(rosenbrock, jnp.array([-1.2, 1.0]), solver=SOLVERS[name](),
                           max_steps=200)
    np.testing.assert_allclose(sol.params, [1.0, 1.0], atol=1e-5)


def test_dense_linear_solver_matches_and_counts():
    args = make_logreg(3)
    sol = jaxopt2.minimize(logreg, logreg_p0(), args,
                           solver=jaxopt2.RegularizedNewton(rtol=TIGHT, linear_solver="dense"))
    assert_tree_close(sol.params, dense_newton(logreg, logreg_p0(), args), rtol=1e-6, atol=1e-7)
    assert int(sol.stats["num_hessian"]) == int(sol.stats["num_steps"])
    assert int(sol.stats["num_hvp"]) == _saddle_check_products(sol)  # none in the steps


# ---------------------------------------------------------------- approximate curvature


@pytest.mark.parametrize("curvature", [diagonal_operator, diagonal_as_function])
def test_regularized_newton_with_diagonal_curvature(curvature):
    # The diagonal drops all coupling between weights and intercept: a poor Hessian, yet the
    # method still converges globally (at a linear rate, the paper's claim).
    args = make_logreg(4)
    sol = jaxopt2.minimize(logreg, logreg_p0(), args, max_steps=200,
                           solver=jaxopt2.RegularizedNewton(rtol=TIGHT, curvature=curvature))
    assert_tree_close(sol.params, dense_newton(logreg, logreg_p0(), args), rtol=1e-5, atol=1e-6)
    if curvature is diagonal_operator:
        assert int(sol.stats["num_hvp"]) == _saddle_check_products(sol)  # elementwise, no CG


def test_damped_newton_with_diagonal_curvature():
    args = make_logreg(4)
    sol = jaxopt2.minimize(logreg, logreg_p0(), args, max_steps=200,
                           solver=jaxopt2.DampedNewton(rtol=TIGHT, curvature=diagonal_operator))
    assert_tree_close(sol.params, dense_newton(logreg, logreg_p0(), args), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the acceptance test and γ


def pseudo_huber(x, a):
    # Newton overshoots from |x| > 1: the pure step maps x to −x³.
    return jnp.sum(jnp.sqrt(1 + x**2))


def test_acceptance_test_rejects_overshooting_newton_steps():
    x0 = jnp.full(3, 2.0)
    # γ₀ huge: λ ≈ 0, the first trial is the pure Newton step to −8, f rises, so it must be
    # rejected and retried with smaller γ.
    solver = jaxopt2.RegularizedNewton(gamma0=1e8)
    sol, values = trace_values(pseudo_huber, x0, None, solver)
    np.testing.assert_allclose(sol.params, jnp.zeros(3), atol=1e-6)
    assert np.all(np.diff(values) <= 1e-12 * np.abs(values[:-1]))
    assert int(sol.stats["num_grad"]) > int(sol.stats["num_steps"]) + 1  # retries happened
    # With no retries allowed the first trial is the only one: failure, iterate unchanged.
    sol = jaxopt2.minimize(pseudo_huber, x0, solver=jaxopt2.RegularizedNewton(
        gamma0=1e8, max_retries=1), throw=False)
    assert sol.status == RESULTS.line_search_failed
    assert int(sol.stats["num_steps"]) == 1
    np.testing.assert_array_equal(sol.params, x0)


def test_tiny_gamma_recovers():
    args = make_logreg(7)
    gamma0 = 1e-8
    sol = jaxopt2.minimize(logreg, logreg_p0(), args, max_steps=80,
                           solver=jaxopt2.RegularizedNewton(rtol=TIGHT, gamma0=gamma0))
    assert_tree_close(sol.params, dense_newton(logreg, logreg_p0(), args), rtol=1e-6, atol=1e-7)
    # γ grew its way up to where the steps are Newton-like: the last λ = ‖g‖/γ is far below
    # the Hessian's smallest eigenvalue.
    flat, unravel = jax.flatten_util.ravel_pytree(sol.params)
    low = float(jnp.linalg.eigvalsh(jax.hessian(lambda v: logreg(unravel(v), args))(flat))[0])
    assert float(sol.state.lam) < 1e-3 * low


def test_damped_newton_backtracking_on_overshoot():
    sol, values = trace_values(pseudo_huber, jnp.full(3, 2.0), None, jaxopt2.DampedNewton())
    np.testing.assert_allclose(sol.params, jnp.zeros(3), atol=1e-6)
    assert np.all(np.diff(values) <= 1e-12 * np.abs(values[:-1]))
    assert int(sol.stats["num_fun"]) > int(sol.stats["num_steps"])  # L was doubled


# ---------------------------------------------------------------- AICN with known L


def test_aicn_known_lipschitz_is_monotone_and_converges():
    args = logcosh_args()
    x0 = jnp.full(4, 5.0)
    solver = jaxopt2.DampedNewton(rtol=TIGHT, lipschitz=L_LOGCOSH)
    sol, values = trace_values(logcosh_problem, x0, args, solver)
    np.testing.assert_allclose(sol.params, dense_newton(logcosh_problem, x0, args),
                               rtol=1e-8, atol=1e-10)
    assert np.all(np.diff(values) <= 1e-12 * np.abs(values[:-1]))
    assert int(sol.stats["num_fun"]) == 0  # no backtracking with a given L
    # The Newton decrement only shrinks and the step size approaches 1 (local Newton phase).
    assert 0.9 < float(sol.state.step_size) <= 1.0


def test_aicn_step_size_formula():
    from jaxopt2._solver.damped_newton import aicn_step_size

    L, G = 3.0, jnp.array([0.0, 1e-3, 0.5, 10.0, 1e6])
    expected = np.where(G == 0, 1.0, (-1 + np.sqrt(1 + 2 * L * G)) / (L * np.where(G == 0, 1, G)))
    np.testing.assert_allclose(aicn_step_size(L, G), expected, rtol=1e-6)
    # It minimizes the cubic bound m(α) = −αG² + ½α²G² + (L/6)α³G³.
    g = 0.7
    alphas = np.linspace(0.01, 1.0, 10001)
    m = -alphas * g**2 + 0.5 * alphas**2 * g**2 + L / 6 * alphas**3 * g**3
    np.testing.assert_allclose(aicn_step_size(L, g), alphas[np.argmin(m)], atol=2e-4)


# ---------------------------------------------------------------- inner CG tolerance


def test_eisenstat_walker_formula():
    from jaxopt2._linalg import eisenstat_walker

    f64 = jnp.float64
    # ηₖ = 0.9 (‖gₖ‖/‖gₖ₋₁‖)² when the safeguard 0.9 ηₖ₋₁² ≤ 0.1 ...
    np.testing.assert_allclose(eisenstat_walker(0.3, 1.0, 0.2, f64), 0.9 * 0.3**2)
    # ... else at least that safeguard (0.9 · 0.4² = 0.144 > 0.1) ...
    np.testing.assert_allclose(eisenstat_walker(0.1, 1.0, 0.4, f64), 0.9 * 0.4**2)
    np.testing.assert_allclose(eisenstat_walker(0.5, 1.0, 0.4, f64), 0.9 * 0.5**2)
    # ... capped at 0.5 (the first step, from η₋₁ = 0.5 and an unchanged gradient, is 0.5),
    np.testing.assert_allclose(eisenstat_walker(2.0, 2.0, 0.5, f64), 0.5)
    np.testing.assert_allclose(eisenstat_walker(3.0, 1.0, 0.5, f64), 0.5)
    # floored at eps, a zero previous norm read as 1, and the dtype kept.
    np.testing.assert_allclose(eisenstat_walker(1e-20, 1.0, 1e-3, f64), np.finfo(np.float64).eps)
    np.testing.assert_allclose(eisenstat_walker(0.1, 0.0, 1e-3, f64), 0.9 * 0.1**2)
    eta = eisenstat_walker(jnp.float32(1e-4), jnp.float32(1.0), jnp.float32(0.01), jnp.float32)
    assert eta.dtype == jnp.float32
    np.testing.assert_allclose(eta, np.finfo(np.float32).eps)


def ill_conditioned_logreg(n=400, d=40, cond=1e4, seed=0):
    # H ≈ ¼ XᵀX/n + 1e-3·I with column scales s: eigenvalues from ≈ 1e-3 to ≈ 1e-3·cond.
    rng = np.random.default_rng(seed)
    s = np.logspace(np.log10(np.sqrt(4e-3 * cond)), -2, d)
    X = rng.standard_normal((n, d)) * s
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ (0.3 * rng.standard_normal(d) / s)))).astype(float)
    return jnp.asarray(X), jnp.asarray(y)


def logreg_weak(p, a):
    X, y = a
    z = X @ p["w"] + p["b"]
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5e-3 * (p["w"] @ p["w"] + p["b"] ** 2)


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_adaptive_inner_tolerance_saves_hvps(name):
    args = ill_conditioned_logreg()
    p0 = logreg_p0(40)
    ref = dense_newton(logreg_weak, p0, args)
    sols = {}
    for key, kw in (("adaptive", {}), ("fixed", {"cg_rtol": 1e-8})):
        sols[key] = jaxopt2.minimize(logreg_weak, p0, args, solver=SOLVERS[name](**kw))
        assert sols[key].status == RESULTS.successful
        assert_tree_close(sols[key].params, ref, rtol=1e-6, atol=1e-7)
    assert SOLVERS[name]().cg_rtol is None  # adaptive is the default
    assert int(sols["adaptive"].stats["num_hvp"]) < int(sols["fixed"].stats["num_hvp"])
    # the forcing terms used tighten towards the end
    assert float(sols["adaptive"].state.eta) < 1e-2


# ---------------------------------------------------------------- dtypes, jit, vmap


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_float32(name):
    args = make_logreg(8, dtype=jnp.float32)
    p0 = logreg_p0(dtype=jnp.float32)
    # The loop's float32 default is looser; ask for about 100 eps and check it is reached.
    sol = jaxopt2.minimize(logreg, p0, args, solver=SOLVERS[name](rtol=1.2e-5))
    assert sol.status == RESULTS.successful
    assert sol.params["w"].dtype == jnp.float32 and sol.params["b"].dtype == jnp.float32
    assert sol.value.dtype == jnp.float32
    assert all(leaf.dtype in (jnp.float32, jnp.int32) for leaf in jtu.tree_leaves(sol.state))
    assert np.all(np.isfinite(sol.params["w"]))
    assert_tree_close(sol.params, dense_newton(logreg, p0, args), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_jit_vmap_over_batch(name):
    batch = [make_logreg(s) for s in range(3)]
    stacked = jtu.tree_map(lambda *xs: jnp.stack(xs), *batch)
    solve = lambda a: jaxopt2.minimize(logreg, logreg_p0(), a, solver=SOLVERS[name]())
    vsol = jax.jit(jax.vmap(solve))(stacked)
    assert np.all(np.asarray(vsol.status._value) == RESULTS.successful._value)
    for i, args in enumerate(batch):
        ref = dense_newton(logreg, logreg_p0(), args)
        params_i = jtu.tree_map(lambda x, i=i: x[i], vsol.params)
        assert_tree_close(params_i, ref, rtol=1e-6, atol=1e-7)


def test_invalid_configuration():
    with pytest.raises(ValueError, match="lipschitz"):
        jaxopt2.RegularizedNewton(variant="fixed")
    with pytest.raises(ValueError, match="variant"):
        jaxopt2.RegularizedNewton(variant="cubic")
    with pytest.raises(ValueError, match="linear_solver"):
        jaxopt2.RegularizedNewton(linear_solver="qr")
    with pytest.raises(ValueError, match="cg_rtol"):
        jaxopt2.RegularizedNewton(cg_rtol=1.5)
    with pytest.raises(ValueError, match="cg_rtol"):
        jaxopt2.DampedNewton(cg_rtol=-1e-4)


def _saddle_check_products(sol):
    """The Hessian-vector products of the curvature check at the end (jaxopt2/_stopping.py):
    two batched Lanczos runs, from a fixed vector and from g."""
    from jaxopt2._stopping import CURVATURE_STEPS
    n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(sol.params))
    return 2 * min(n, CURVATURE_STEPS)


def test_damped_newton_from_far_in_float32():
    """(x − 1)⁴ from x₀ = 10⁶ in float32: the gradient (4e18) is scaled before CG (unscaled,
    pᵀHp overflowed and no step was formed), and the first, heavily damped step (α ≈ 1e-6,
    moving x by 4e-7·s(x)) is not read as a start at the solution."""
    sol = jaxopt2.minimize(lambda x, _: jnp.sum((x - 1.0) ** 4), jnp.full(2, 1e6, jnp.float32),
                           None, solver=jaxopt2.DampedNewton(), max_steps=512, throw=False)
    assert sol.status == RESULTS.successful
    assert sol.params.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(sol.params), 1.0, atol=2e-2)
