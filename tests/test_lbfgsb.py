"""LBFGSB: the compact form, the generalized Cauchy point and the subspace step against dense
references; whole solves against scipy's L-BFGS-B and NNLS; jaxopt's LBFGSB bug reports
(#439, #492, #590) as regression tests; the front-door contract (jit, vmap, pytrees, dtypes,
implicit derivatives)."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import jaxopt2
from jaxopt2._base import evaluate
from jaxopt2._results import RESULTS
from jaxopt2._solver.lbfgsb import LBFGSB, cauchy_point, compact_form, subspace_point
from jaxopt2._solver.projected_newton_cg import ProjectedNewtonCG


class Box(eqx.Module):
    """A stand-in for the front door's `Composite`: the solvers only read `lower`/`upper`."""

    lower: object
    upper: object


def projected_gradient(x, g, lo, hi):
    return x - jnp.clip(x - g, lo, hi)


def drive(solver, fun, x0, args, lo, hi, max_steps=500, tol=1e-9):
    """Run `solver.init`/`step` directly (no front door) until ‖x − P(x − g)‖∞ ≤ tol, a
    failed step, or the budget: `(iterate, steps, ok, pg_norm)`."""
    solver = eqx.tree_at(lambda s: s.constraint, solver, Box(lo, hi),
                         is_leaf=lambda x: x is None)
    fn = lambda p, a: (fun(p, a), None)  # noqa: E731
    it = evaluate(fn, jnp.clip(x0, lo, hi), args)
    state = solver.init(fn, it, args)

    def pg(it):
        return jnp.max(jnp.abs(projected_gradient(it.params, it.grad, lo, hi)))

    def cond(c):
        it, _, k, ok = c
        return (k < max_steps) & (pg(it) > tol) & ok

    def body(c):
        it, state, k, _ = c
        it, state, _, result = solver.step(fn, it, args, state)
        return it, state, k + 1, result == RESULTS.successful

    it, _, k, ok = jax.lax.while_loop(cond, body, (it, state, 0, jnp.array(True)))
    return it, k, ok, pg(it)


def model_reference(x, g, lo, hi, b_dense):
    """The first local minimizer of m(z) = gᵀ(z − x) + ½(z − x)ᵀB(z − x) along
    z(t) = P(x − t g), segment by segment with the dense B."""
    with np.errstate(divide="ignore", invalid="ignore"):
        tb = np.where(g < 0, (x - hi) / g, np.where(g > 0, (x - lo) / g, np.inf))
    knots = np.unique(np.concatenate([[0.0], tb[np.isfinite(tb) & (tb > 0)], [np.inf]]))
    for t0, t1 in zip(knots[:-1], knots[1:], strict=True):
        z0 = np.clip(x - t0 * g, lo, hi)
        d = np.where(tb > t0, -g, 0.0)
        slope = g @ d + (z0 - x) @ b_dense @ d
        curv = d @ b_dense @ d
        if slope >= 0:
            return z0
        dt = -slope / curv
        if dt < t1 - t0:
            return z0 + dt * d
    raise AssertionError("unbounded model")


def dense_bfgs(s_list, y_list, theta):
    b = theta * np.eye(s_list.shape[1])
    for s, y in zip(s_list, y_list, strict=True):
        bs = b @ s
        b = b - np.outer(bs, bs) / (s @ bs) + np.outer(y, y) / (y @ s)
    return b


def _memory(rng, n, m, pairs):
    a = rng.standard_normal((n, n))
    h = a @ a.T + np.eye(n)
    s = rng.standard_normal((pairs, n))
    y = s @ h
    theta = y[-1] @ y[-1] / (s[-1] @ y[-1])
    s_pad, y_pad = np.zeros((m, n)), np.zeros((m, n))
    s_pad[m - pairs:], y_pad[m - pairs:] = s, y
    valid = np.arange(m) >= m - pairs
    w, mat = compact_form(jnp.array(s_pad), jnp.array(y_pad), jnp.array(valid), theta)
    return np.asarray(w), np.asarray(mat), theta, dense_bfgs(s, y, theta)


@pytest.mark.float64
@pytest.mark.parametrize("pairs", [0, 1, 3, 5])
def test_compact_form_is_the_bfgs_matrix(pairs):
    rng = np.random.default_rng(pairs)
    w, mat, theta, b = _memory(rng, 8, 5, pairs) if pairs else (None, None, 1.0, np.eye(8))
    if pairs:
        np.testing.assert_allclose(theta * np.eye(8) - w @ mat @ w.T, b, rtol=1e-10, atol=1e-10)


@pytest.mark.float64
@pytest.mark.parametrize("seed", range(4))
def test_cauchy_point_and_subspace_step_match_dense(seed):
    rng = np.random.default_rng(seed)
    n = 12
    w, mat, theta, b = _memory(rng, n, 4, 1 + seed % 4)
    x = rng.uniform(-1, 1, n)
    g = 3 * rng.standard_normal(n)
    lo, hi = -np.ones(n), np.ones(n)
    lo[0], hi[1] = x[0], x[1]  # two variables start at a bound
    lo[2], hi[2] = -np.inf, np.inf
    args = [jnp.array(v) for v in (x, g, lo, hi)]
    xc, c = cauchy_point(*args, jnp.array(w), jnp.array(mat), theta)
    np.testing.assert_allclose(xc, model_reference(x, g, lo, hi, b), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(c, w.T @ (np.asarray(xc) - x), rtol=1e-9, atol=1e-12)
    # the subspace step: the model's minimizer over the free variables, then projected
    x_bar = subspace_point(*args, xc, c, jnp.array(w), jnp.array(mat), theta)
    xc = np.asarray(xc)
    free = np.flatnonzero((xc > lo) & (xc < hi))
    z = xc.copy()
    z[free] += np.linalg.solve(b[np.ix_(free, free)], -(g + b @ (xc - x))[free])
    z = np.clip(z, lo, hi)
    if g @ (z - x) < 0:  # otherwise the solver backtracks instead (checked by descent below)
        np.testing.assert_allclose(x_bar, z, rtol=1e-9, atol=1e-12)
    assert g @ (np.asarray(x_bar) - x) < 0
    assert np.all((np.asarray(x_bar) >= lo) & (np.asarray(x_bar) <= hi))


@functools.lru_cache(maxsize=1)
def _breast_cancer_reference():
    """Data, bounds and scipy's L-BFGS-B solution, all in numpy float64 (whatever JAX's
    precision in the calling test)."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)

    def scipy_fg(w):
        z = x @ w
        value = np.mean(np.logaddexp(0.0, z) - y * z) + 5e-4 * w @ w
        return value, x.T @ (1 / (1 + np.exp(-z)) - y) / len(y) + 1e-3 * w

    opts = dict(maxiter=100000, maxfun=100000, ftol=0.0, gtol=1e-13)
    free_w = so.minimize(scipy_fg, np.zeros(30), jac=True, method="L-BFGS-B", options=opts).x
    lo, hi = np.full(30, -10.0), np.full(30, 10.0)
    for i in np.argsort(-np.abs(free_w))[:10]:
        (hi if free_w[i] > 0 else lo)[i] = 0.5 * free_w[i]
    ref = so.minimize(scipy_fg, np.zeros(30), jac=True, method="L-BFGS-B",
                      bounds=list(zip(lo, hi, strict=True)), options=opts)
    return x, y, lo, hi, ref.x, scipy_fg


def breast_cancer_problem():
    """Standardised breast-cancer logistic regression (n=569, d=30) with bounds chosen so that
    a third of them (10) are active at the solution: the 10 largest unconstrained weights are
    bounded at half their value, the other bounds are loose. Returns
    `(loss, args, lower, upper, scipy's solution, scipy's value-and-gradient)`."""
    x, y, lo, hi, x_ref, scipy_fg = _breast_cancer_reference()
    args = (jnp.asarray(x), jnp.asarray(y))

    def loss(w, a):
        z = a[0] @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - a[1] * z) + 5e-4 * jnp.sum(w**2)

    return loss, args, lo, hi, x_ref, scipy_fg


@pytest.mark.float64
def test_logistic_regression_matches_scipy():
    loss, args, lo, hi, x_ref, scipy_fg = breast_cancer_problem()
    active = (x_ref == lo) | (x_ref == hi)
    assert active.sum() == 10
    pg_ref = np.max(np.abs(projected_gradient(x_ref, scipy_fg(x_ref)[1], lo, hi)))
    it, steps, ok, pg = jax.jit(lambda: drive(LBFGSB(), loss, jnp.zeros(30), args,
                                              jnp.asarray(lo), jnp.asarray(hi), 1000, 1e-9))()
    assert ok and pg <= 1e-9, (steps, pg)
    assert pg_ref < 1e-8
    x = np.asarray(it.params)
    np.testing.assert_array_equal(x[active], x_ref[active])  # bounds hit exactly
    # the problem's conditioning (κ ≈ 1e4) turns pg ≤ 1e-9 into about 1e-6 in x
    np.testing.assert_allclose(x, x_ref, atol=2e-6)


def nnls_problem(seed=0, m=60, n=20, decay=2.0):
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    a = rng.standard_normal((m, n)) @ np.diag(np.logspace(0, -decay, n)) @ q
    b = rng.standard_normal(m)
    x_ref, _ = so.nnls(a, b, maxiter=100 * n)
    return a, b, x_ref


def nnls_loss(x, a):
    return 0.5 * jnp.sum((a[0] @ x - a[1]) ** 2)


@pytest.mark.float64
def test_nnls_matches_scipy():
    a, b, x_ref = nnls_problem()
    assert 0 < np.sum(x_ref == 0) < 20  # some bounds active, some not
    it, _, ok, pg = jax.jit(lambda: drive(LBFGSB(), nnls_loss, jnp.ones(20),
                                          (jnp.asarray(a), jnp.asarray(b)), jnp.zeros(20),
                                          jnp.full(20, jnp.inf), 3000, 1e-11))()
    assert ok and pg <= 1e-11
    np.testing.assert_allclose(it.params, x_ref, atol=1e-8)


def test_jaxopt_439_iterates_never_leave_the_box():
    # jaxopt #439: 41 params in [0, 1] from 0.01, returned outside the box (its line search
    # had no maximum step). A steep objective pulls every coordinate far past the bounds.
    n = 41
    target = jnp.linspace(-30.0, 30.0, n)
    fun = lambda x, a: jnp.sum((x - a) ** 2) + 0.1 * jnp.sum(x**4)  # noqa: E731
    it, _, ok, pg = jax.jit(lambda: drive(LBFGSB(), fun, jnp.full(n, 0.01), target,
                                          jnp.zeros(n), jnp.ones(n), 200, 1e-4))()
    x = np.asarray(it.params)
    assert ok and pg <= 1e-4
    assert np.all((x >= 0) & (x <= 1))
    np.testing.assert_array_equal(x[np.asarray(target) < 0], 0.0)
    np.testing.assert_array_equal(x[np.asarray(target) >= 2], 1.0)


def test_jaxopt_492_linear_objective_at_a_bound_gives_no_nan():
    # jaxopt #492: f(a, b) = −a from (1, 0) in [−1, 1]², a already at its bound, b with zero
    # gradient: jaxopt returned b = NaN.
    fun = lambda x, _: -x[0]  # noqa: E731
    solver = eqx.tree_at(lambda s: s.constraint, LBFGSB(),
                         Box(-jnp.ones(2), jnp.ones(2)), is_leaf=lambda x: x is None)
    fn = lambda p, a: (fun(p, a), None)  # noqa: E731
    it = evaluate(fn, jnp.array([1.0, 0.0]), None)
    # the start is already stationary: the projected gradient is zero
    assert jnp.all(projected_gradient(it.params, it.grad, -1.0, 1.0) == 0)
    # and a step from there (what jaxopt took) stays finite and at the solution
    new, _, _, _ = jax.jit(lambda: solver.step(fn, it, None, solver.init(fn, it, None)))()
    assert np.all(np.isfinite(new.params))
    np.testing.assert_array_equal(new.params, [1.0, 0.0])
    # from an interior start it reaches a = 1 and leaves b alone
    it, _, ok, pg = jax.jit(lambda: drive(LBFGSB(), fun, jnp.array([0.0, 0.5]), None,
                                          -jnp.ones(2), jnp.ones(2), 50, 0.0))()
    np.testing.assert_array_equal(it.params, [1.0, 0.5])
    assert pg == 0


def test_jaxopt_590_objective_undefined_outside_the_box():
    # jaxopt #590: the line search evaluated the objective outside the bounds, where it is NaN
    # (log, sqrt of a parameter), and the solve failed. Ours evaluates only inside the box.
    def fun(x, a):
        inside = jnp.all((x >= 0.1) & (x <= 5.0))
        value = jnp.sum(a * jnp.log(x) ** 2 + jnp.sqrt(x - 0.1) - 2 * x)
        return jnp.where(inside, value, jnp.nan)

    a = jnp.array([0.5, 1.0, 2.0, 4.0])
    it, _, ok, pg = jax.jit(lambda: drive(LBFGSB(), fun, jnp.full(4, 3.0), a,
                                          jnp.full(4, 0.1), jnp.full(4, 5.0), 200, 1e-4))()
    assert ok and np.isfinite(it.value) and pg <= 1e-4


# ------------------------------------------------------------------------------------------
# Through the front door: minimize(..., bounds=).

SOLVERS = [LBFGSB, ProjectedNewtonCG]
_TARGET = {"w": jnp.array([-2.0, 0.3, 4.0]), "b": jnp.array(-5.0)}


def _quartic(p, a):
    """Separable, so the bounded minimizer is the clipped unconstrained one per coordinate."""
    return sum(jnp.sum((p[k] - a[k]) ** 2 + 0.1 * p[k] ** 4) for k in ("w", "b"))


def _unconstrained_root(a):
    # 2(x − a) + 0.4x³ = 0, by Newton in numpy (monotone, so one root)
    x = np.array(a, float)
    for _ in range(60):
        x = x - (2 * (x - a) + 0.4 * x**3) / (2 + 1.2 * x**2)
    return x


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.__name__)
@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.float64)])
def test_pytree_bounds_start_outside_dtype_kept(solver, dtype):
    target = jax.tree.map(lambda a: a.astype(dtype), _TARGET)
    params0 = {"w": jnp.array([5.0, -5.0, 0.5], dtype), "b": jnp.array(3.0, dtype)}  # outside
    bounds = ({"w": jnp.array([0.0, -1.0, -1.0]), "b": -1.0}, {"w": 1.0, "b": None})
    sol = jax.jit(lambda a: jaxopt2.minimize(_quartic, params0, a, solver=solver(),
                                             bounds=bounds))(target)
    assert sol.status == RESULTS.successful
    assert jax.tree.map(lambda x: x.dtype, sol.params) == {"w": jnp.dtype(dtype),
                                                           "b": jnp.dtype(dtype)}
    expect_w = np.clip(_unconstrained_root(np.asarray(_TARGET["w"])), [0, -1, -1], 1)
    tol = 1e-3 if dtype == "float32" else 1e-6
    np.testing.assert_allclose(sol.params["w"], expect_w, atol=tol)
    # exactly at the bounds
    np.testing.assert_array_equal(np.asarray(sol.params["w"])[[0, 2]], [0.0, 1.0])
    assert sol.params["b"] == -1.0


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.__name__)
def test_vmap_isolates_a_bad_problem(solver):
    targets = jnp.array([[-1.0, 0.5, 2.0], [jnp.nan, 0.5, 2.0], [3.0, -3.0, 0.2]])
    fun = lambda x, a: jnp.sum((x - a) ** 2 + 0.1 * x**4)  # noqa: E731

    def solve(a):
        return jaxopt2.minimize(fun, jnp.zeros(3), a, solver=solver(), bounds=(-1.0, 1.0))

    batch = jax.jit(jax.vmap(solve))(targets)
    one_solve = jax.jit(solve)
    codes = np.asarray(batch.status._value)
    ok = RESULTS.successful._value
    assert codes[1] != ok
    for i in (0, 2):
        assert codes[i] == ok
        one = one_solve(targets[i])
        np.testing.assert_allclose(batch.params[i], one.params, atol=1e-6)
        expect = np.clip(_unconstrained_root(np.asarray(targets[i])), -1, 1)
        np.testing.assert_allclose(batch.params[i], expect, atol=1e-3)


def _small_logistic():
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return jnp.asarray(x[:200, :6]), jnp.asarray(y[:200], float)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.__name__)
def test_implicit_derivative_closed_form(solver):
    # x*(a) = clip(r(a), −1, 1) with 2(r − a) + 0.4r³ = 0: dx*/da = 2/(2 + 1.2x²) on the free
    # coordinates, 0 on the clipped ones; reverse and forward mode.
    a = jnp.array([-3.0, 0.5, 2.0, -0.2])
    fun = lambda x, a: jnp.sum((x - a) ** 2 + 0.1 * x**4)  # noqa: E731

    @jax.jit
    def solve(a):
        return jaxopt2.minimize(fun, jnp.zeros(4), a, solver=solver(), bounds=(-1.0, 1.0)).params

    x = np.clip(_unconstrained_root(np.asarray(a)), -1, 1)
    expect = np.where(np.abs(x) < 1, 2 / (2 + 1.2 * x**2), 0.0)
    np.testing.assert_allclose(jax.jacrev(solve)(a), np.diag(expect), atol=2e-3)
    np.testing.assert_allclose(jax.jvp(solve, (a,), (jnp.ones(4),))[1], expect, atol=2e-3)


@pytest.mark.float64
@pytest.mark.slow
@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.__name__)
def test_implicit_derivative_matches_finite_differences(solver):
    # d/dλ and d/d(upper bound) of a bounded logistic regression's solution, reverse and
    # forward mode, against central differences of tight solves.
    x, y = _small_logistic()

    def loss(w, a):
        z = x @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * a * jnp.sum(w**2)

    @jax.jit
    def solve(lam, cap):
        # unconstrained, every weight is in (−0.9, −0.45): w₁ and w₃ end at their bounds
        lower = jnp.array([-1.0, -1.0, -1.0, -0.5, -jnp.inf, -jnp.inf]).at[:3].multiply(cap)
        return jaxopt2.minimize(loss, jnp.zeros(6), lam, solver=solver(rtol=1e-12),
                                bounds=(lower, 1.0), max_steps=1000).params

    lam, cap = 0.05, 0.8
    w = solve(lam, cap)
    active = np.asarray(w) == np.array([-cap, -cap, -cap, -0.5, -np.inf, -np.inf])
    np.testing.assert_array_equal(active, [False, True, False, True, False, False])
    probe = jnp.linspace(1.0, 2.0, 6)
    h = 1e-5
    fd_lam = (probe @ solve(lam + h, cap) - probe @ solve(lam - h, cap)) / (2 * h)
    fd_cap = (probe @ solve(lam, cap + h) - probe @ solve(lam, cap - h)) / (2 * h)
    rev = jax.grad(lambda lam, cap: probe @ solve(lam, cap), argnums=(0, 1))(lam, cap)
    dw = jax.jvp(lambda t: solve(t, cap), (lam,), (1.0,))[1]
    np.testing.assert_allclose(rev, (fd_lam, fd_cap), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(probe @ dw, fd_lam, rtol=1e-5, atol=1e-8)
    # the derivative lives on the free variables: zero on the active ones
    np.testing.assert_allclose(np.asarray(dw)[active], 0.0, atol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.__name__)
@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.float64)])
def test_successful_only_where_the_projected_gradient_test_passes(solver, dtype):
    # Box-constrained breast-cancer logistic regression with the default tolerances: a
    # "successful" status must come with ‖x − P(x − ∇f)‖∞ ≤ rtol·‖x₀ − P(x₀ − ∇f₀)‖∞, and
    # the point must agree with scipy's L-BFGS-B to what that tolerance implies.
    loss, args, lo, hi, x_ref, _ = breast_cancer_problem()
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    args, lo, hi = jax.tree.map(cast, args), cast(lo), cast(hi)
    x0 = jnp.zeros(30, dtype)
    sol = jax.jit(lambda a: jaxopt2.minimize(loss, x0, a, solver=solver(), bounds=(lo, hi),
                                             max_steps=1000, throw=False))(args)
    pg = jnp.max(jnp.abs(projected_gradient(sol.params, jax.grad(loss)(sol.params, args),
                                            lo, hi)))
    pg0 = jnp.max(jnp.abs(projected_gradient(x0, jax.grad(loss)(x0, args), lo, hi)))
    rtol = jaxopt2._base.default_rtol(jnp.dtype(dtype))
    assert sol.status == RESULTS.successful
    assert pg <= rtol * pg0, (pg, pg0)
    # κ ≈ 1e4 turns the gradient tolerance into about 1e4·rtol·‖pg0‖ in x
    np.testing.assert_allclose(sol.params, x_ref, atol=1e4 * rtol * float(pg0))


def test_other_solvers_refuse_bounds_naming_these():
    with pytest.raises(ValueError, match="LBFGSB"):
        jaxopt2.minimize(lambda x, a: jnp.sum(x**2), jnp.ones(2), solver=jaxopt2.LBFGS(),
                         bounds=(0.0, 1.0))
