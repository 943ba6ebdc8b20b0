"""ProximalNewton(inner="cd"): coordinate descent on the Newton model inside a working set
(issue 15). Lasso, elastic net and NNLS against scikit-learn / scipy and the KKT conditions,
the coefficients read off the known proxes, the working set growing from a too small start,
the implicit derivative with respect to λ against the closed form on the support, and the
contract (jit, vmap with a bad problem, float32, pytree params, clear errors).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2 as J
from jaxopt2 import prox as P
from jaxopt2._composite import Composite
from jaxopt2._coordinate import Separable, capacities

from .test_proximal import lsq, regression


def data_block(X):
    """H[index][:, index] of f = ‖Xw − y‖²/2: X_Wᵀ X_W, without forming XᵀX."""
    X = jnp.asarray(X)
    return lambda w, y, index: X[:, index].T @ X[:, index]


def lasso_kkt(X, y, w, lam, rtol=1e-6):
    corr = X.T @ (y - X @ w)
    on = np.abs(w) > 0
    np.testing.assert_allclose(corr[on], lam * np.sign(w[on]), rtol=rtol)
    assert np.all(np.abs(corr[~on]) <= lam * (1 + rtol))


@pytest.mark.float64
@pytest.mark.parametrize("block", [pytest.param("hvp", marks=pytest.mark.slow), "user"])
def test_lasso_matches_sklearn_and_kkt(block):
    from sklearn.linear_model import Lasso

    X, y = regression(n=80, d=40, seed=2, rho=0.8)
    n = X.shape[0]
    lam = 0.02 * np.max(np.abs(X.T @ y))
    solver = J.ProximalNewton(rtol=0.0, atol=1e-11, inner="cd", ws_start=8,
                              hessian_block=data_block(X) if block == "user" else None)
    sol = J.minimize(lsq(X), jnp.zeros(40), jnp.asarray(y), solver=solver, prox=P.l1,
                     prox_args=lam, max_steps=100)
    assert J.status_name(sol.status) == "successful"
    ref = Lasso(alpha=lam / n, fit_intercept=False, tol=1e-15, max_iter=10**6).fit(X, y).coef_
    w = np.asarray(sol.params)
    np.testing.assert_allclose(w, ref, atol=1e-9 * np.max(np.abs(ref)))
    lasso_kkt(X, y, w, lam, rtol=1e-8)
    # f is quadratic: the model is f itself, so a few outer steps (working-set growth) do it.
    assert int(sol.stats["num_steps"]) <= 8
    if block == "user":
        assert int(sol.stats["num_hvp"]) == 0
    # each accepted unit step is evaluated once, with its gradient (no f-only trial before it):
    # one value-and-gradient per step plus the start's (less one where the last, certifying
    # step is not taken; `initial_step`'s secant gradient is counted where it is made)
    assert int(sol.stats["num_fun"]) == 0
    steps = int(sol.stats["num_steps"])
    extra = 0 if block == "user" else 1
    assert steps + extra <= int(sol.stats["num_grad"]) <= steps + 1 + extra


@pytest.mark.float64
def test_elastic_net_pytree_with_unpenalised_intercept():
    """{"w", "b"} with h = elastic net on w only ("b": None): the coefficients come from the
    prox itself, the intercept is free, and the answer is scikit-learn's."""
    from sklearn.linear_model import ElasticNet

    X, y = regression(n=70, d=20, seed=4)
    y = y + 3.0
    n = X.shape[0]
    alpha, ratio = 0.05, 0.6
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def f(p, data):
        A, b = data
        return 0.5 * jnp.sum((A @ p["w"] + p["b"] - b) ** 2)

    strengths = ({"w": n * alpha * ratio, "b": None}, {"w": n * alpha * (1 - ratio), "b": None})
    sol = J.minimize(f, {"w": jnp.zeros(20), "b": jnp.zeros(())}, (Xj, yj),
                     solver=J.ProximalNewton(rtol=0.0, atol=1e-10, inner="cd"),
                     prox=P.elastic_net, prox_args=strengths, max_steps=100)
    assert J.status_name(sol.status) == "successful"
    ref = ElasticNet(alpha=alpha, l1_ratio=ratio, tol=1e-15, max_iter=10**6).fit(X, y)
    np.testing.assert_allclose(sol.params["w"], ref.coef_, atol=1e-8)
    np.testing.assert_allclose(sol.params["b"], ref.intercept_, atol=1e-8)


@pytest.mark.float64
def test_separable_coefficients_reproduce_the_prox():
    """The per-coordinate prox of `Separable` equals each known operator entrywise, for
    strengths given as scalars, arrays and None leaves, and scales other than 1."""
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=5)), "b": jnp.asarray(rng.normal(size=(2, 3)))}
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v = jnp.asarray(3 * rng.normal(size=flat.size))
    strength = {"a": jnp.asarray(rng.uniform(0.1, 2, size=5)), "b": None}
    cases = [(P.l1, strength), (P.non_negative_l1, strength), (P.ridge, 0.7),
             (P.elastic_net, (strength, {"a": 0.3, "b": 1.2}))]
    for prox, args in cases:
        h = Separable.of(Composite(prox, args), params)
        for s in (0.5, 2.0):
            want = jax.flatten_util.ravel_pytree(prox(unravel(v), args, s))[0]
            # argmin_y h(y) + (y − v)²/(2s): the coordinate step with Hⱼⱼ = 1/s, q = −v/s
            # at z = 0.
            u = v / s - h.b
            got = jnp.clip(jnp.sign(u) * jnp.maximum(jnp.abs(u) - h.a, 0) / (1 / s + h.c),
                           h.lo, h.hi)
            np.testing.assert_allclose(got, want, atol=1e-12, err_msg=prox.__name__)


@pytest.mark.float64
@pytest.mark.parametrize("how", ["bounds", pytest.param("prox", marks=pytest.mark.slow)])
def test_nnls_by_bounds_and_by_non_negative_l1(how):
    from scipy.optimize import nnls

    rng = np.random.default_rng(5)
    A = rng.normal(size=(60, 25))
    b = A @ rng.normal(size=25) + 0.1 * rng.normal(size=60)
    ref = nnls(A, b)[0]
    kw = (dict(bounds=(0.0, None)) if how == "bounds"
          else dict(prox=P.non_negative_l1, prox_args=0.0))
    sol = J.minimize(lsq(A), jnp.zeros(25), jnp.asarray(b), max_steps=100,
                     solver=J.ProximalNewton(rtol=0.0, atol=1e-10, inner="cd"), **kw)
    assert J.status_name(sol.status) == "successful"
    np.testing.assert_allclose(sol.params, ref, atol=1e-9)


@pytest.mark.float64
@pytest.mark.parametrize("start", ["empty", pytest.param("dense", marks=pytest.mark.slow)])
def test_working_set_grows_from_a_small_start(start):
    """ws_start = 2 with 25 nonzeros at the solution (d = 60): from x = 0 the working set has
    to grow several times, and it must always hold the current support; from a dense start
    (every coordinate in the support) it starts at d. The blocks requested are recorded."""
    X, y = regression(n=120, d=60, seed=6, rho=0.5)
    lam = 0.002 * np.max(np.abs(X.T @ y))
    blocks = []

    def block(w, data, index):
        # a working set of every coordinate asks for the whole matrix by a slice (no gather)
        whole = isinstance(index, slice)
        jax.debug.callback(lambda i, w: blocks.append((np.asarray(i), np.asarray(w), whole)),
                           jnp.arange(60) if whole else index, w)
        return data_block(X)(w, data, index)

    x0 = jnp.zeros(60) if start == "empty" else jnp.ones(60)
    sol = J.minimize(lsq(X), x0, jnp.asarray(y), max_steps=100, prox=P.l1, prox_args=lam,
                     solver=J.ProximalNewton(rtol=0.0, atol=1e-10, inner="cd", ws_start=2,
                                             hessian_block=block))
    jax.effects_barrier()
    assert J.status_name(sol.status) == "successful"
    w = np.asarray(sol.params)
    lasso_kkt(X, y, w, lam)
    assert 20 <= np.sum(w != 0) < 60
    # the first block is `init`'s curvature scale (the ws_start largest |∇f|); the working
    # sets follow
    assert len(blocks[0][0]) == 2
    blocks = blocks[1:]
    sizes = [len(i) for i, _, _ in blocks]
    assert sizes == sorted(sizes)  # never shrinks
    assert set(sizes) <= set(capacities(60, 2)) == {2, 8, 32, 60}
    assert all(whole == (len(i) == 60) for i, _, whole in blocks)
    if start == "empty":
        assert sizes[0] == 2 and len(set(sizes)) >= 3
    else:
        assert sizes[0] == 60
    for index, at, _ in blocks:  # the support of the point is always inside its working set
        assert set(np.flatnonzero(at)) <= set(index.tolist())


@pytest.mark.float64
@pytest.mark.parametrize("mode", ["rev", pytest.param("fwd", marks=pytest.mark.slow)])
def test_derivative_wrt_lambda_matches_the_closed_form(mode):
    """On the support S, w_S = (X_SᵀX_S)⁻¹(X_Sᵀy − λ sign w_S), so dw_S/dλ = −(X_SᵀX_S)⁻¹ sign."""
    X, y = regression(n=60, d=12, seed=3)
    lam = 0.05 * np.max(np.abs(X.T @ y))

    def solve(lam):
        return J.minimize(lsq(X), jnp.zeros(12), jnp.asarray(y), prox=P.l1, prox_args=lam,
                          solver=J.ProximalNewton(rtol=0.0, atol=1e-11, inner="cd"),
                          max_steps=100).params

    w = np.asarray(solve(lam))
    S = np.abs(w) > 0
    want = np.zeros(12)
    want[S] = -np.linalg.solve(X[:, S].T @ X[:, S], np.sign(w[S]))
    jac = jax.jacfwd if mode == "fwd" else jax.jacrev
    np.testing.assert_allclose(jac(solve)(lam), want, atol=1e-8)


def test_vmap_with_a_bad_problem_and_float32():
    """float32 (x64 off): a batch of three lassos under jit(vmap), the middle one with a NaN
    in y. The good ones equal their single solves and scikit-learn's; the bad one reports
    a failure, not success."""
    from sklearn.linear_model import Lasso

    X, y = regression(n=60, d=16, seed=7)
    X32 = jnp.asarray(X, jnp.float32)
    ys = np.stack([y, y, 1.5 * y])
    ys[1, 3] = np.nan
    lam = 0.05 * np.max(np.abs(X.T @ y))
    solver = J.ProximalNewton(inner="cd", hessian_block=data_block(X32))

    def solve(y):
        return J.minimize(lsq(X32), jnp.zeros(16, jnp.float32), y, solver=solver, prox=P.l1,
                          prox_args=lam, max_steps=100, throw=False)

    batch = jax.jit(jax.vmap(solve))(jnp.asarray(ys, jnp.float32))
    names = J.status_name(batch.status)
    assert names[0] == names[2] == "successful" and names[1] != "successful"
    assert batch.params.dtype == jnp.float32
    for i in (0, 2):
        single = solve(jnp.asarray(ys[i], jnp.float32))
        np.testing.assert_allclose(batch.params[i], single.params, atol=1e-5)
        ref = Lasso(alpha=lam / 60, fit_intercept=False, tol=1e-12,
                    max_iter=10**6).fit(X, ys[i]).coef_
        np.testing.assert_allclose(batch.params[i], ref, atol=2e-4 * np.max(np.abs(ref)))


def test_clear_errors():
    with pytest.raises(ValueError, match="inner"):
        J.ProximalNewton(inner="newton")
    with pytest.raises(ValueError, match="ws_start"):
        J.ProximalNewton(ws_start=0)
    with pytest.raises(TypeError, match="hessian_block"):
        J.ProximalNewton(hessian_block=3)
    X, y = regression(n=20, d=6)
    with pytest.raises(ValueError, match="inner='fista'"):
        J.minimize(lsq(X), jnp.zeros(6), jnp.asarray(y), prox=P.group_lasso, prox_args=1.0,
                   solver=J.ProximalNewton(inner="cd"))
    # a block of the wrong shape is named at trace time, not left to broadcast
    with pytest.raises(ValueError, match=r"hessian_block.*returned shape \(6,\)"):
        J.minimize(lsq(X), jnp.zeros(6), jnp.asarray(y), prox=P.l1, prox_args=0.1,
                   solver=J.ProximalNewton(inner="cd", hessian_block=lambda w, a, i: w),
                   throw=False)


def test_capacities():
    assert capacities(60, 2) == (2, 8, 32, 60)
    assert capacities(40, 64) == (40,)
    assert capacities(64, 16) == (16, 64)


# --------------------------------------------------- Anderson-accelerated coordinate descent


def test_anderson_extrapolation_is_exact_on_a_two_dimensional_linear_iteration():
    """AA(2) on a linear iteration in R² (Gauss–Seidel on Hz = −g, no h) lands on the fixed
    point from three iterates: the affine combination whose differences cancel."""
    from jaxopt2._coordinate import _anderson

    H = jnp.array([[2.0, 0.9], [0.9, 1.0]])
    g = jnp.array([1.0, -2.0])
    x = jnp.zeros(2)
    zero = jnp.zeros(2)
    h = Separable(zero, zero, zero, jnp.full(2, -jnp.inf), jnp.full(2, jnp.inf))

    def sweep(z):
        z = z.at[0].set(-(g[0] + H[0, 1] * z[1]) / H[0, 0])
        return z.at[1].set(-(g[1] + H[1, 0] * z[0]) / H[1, 1])

    # From a sweep's output on: Gauss–Seidel's iteration matrix in R² has rank one, so the
    # errors are collinear and two differences determine the fixed point.
    z0 = sweep(jnp.array([3.0, 3.0]))
    z1 = sweep(z0)
    z2 = sweep(z1)
    ze, qe, ok = _anderson(z0, z1, g + H @ z1, z2, g + H @ z2, x, g, h)
    star = jnp.linalg.solve(H, -g)
    assert bool(ok)
    np.testing.assert_allclose(ze, star, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(qe, g + H @ ze, atol=1e-5)  # q follows z affinely
    assert float(jnp.max(jnp.abs(z2 - star))) > 1e-2  # the sweeps alone were far from it
    # Outside the bounds, the extrapolation is refused and the last iterate kept.
    boxed = Separable(zero, zero, zero, jnp.full(2, -jnp.inf), jnp.full(2, 0.5 * star[0]))
    if star[0] < 0:
        boxed = Separable(zero, zero, zero, jnp.full(2, 0.5 * star[0]), jnp.full(2, jnp.inf))
    ze, qe, ok = _anderson(z0, z1, g + H @ z1, z2, g + H @ z2, x, g, boxed)
    assert not bool(ok)
    np.testing.assert_array_equal(ze, z2)


@pytest.mark.parametrize("bound", [0.7, 1.3, 3.1])
def test_anderson_keeps_a_coordinate_at_its_bound_exactly(bound):
    """A coordinate held at a bound through the three iterates stays exactly there: the
    extrapolation is z₂ + c₁(z₁ − z₂), not c₁z₁ + c₂z₂, whose c₁ + c₂ = 1 only up to
    round-off would step an ulp outside the bound and refuse every extrapolation."""
    from jaxopt2._coordinate import _anderson

    H = jnp.array([[2.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    g = jnp.array([1.0, -2.0, -5.0])  # pushes the third coordinate up against `bound`
    x = jnp.zeros(3)
    zero = jnp.zeros(3)
    h = Separable(zero, zero, zero, jnp.full(3, -jnp.inf),
                  jnp.array([jnp.inf, jnp.inf, bound]))

    def sweep(z):
        z = z.at[0].set(-(g[0] + H[0, 1] * z[1]) / H[0, 0])
        return z.at[1].set(-(g[1] + H[1, 0] * z[0]) / H[1, 1])

    z0 = sweep(jnp.array([3.0, 3.0, bound]))
    z1, z2 = sweep(z0), sweep(sweep(z0))
    ze, qe, ok = _anderson(z0, z1, g + H @ z1, z2, g + H @ z2, x, g, h)
    assert bool(ok)
    assert float(ze[2]) == float(jnp.asarray(bound, ze.dtype))
    np.testing.assert_allclose(ze[:2], jnp.linalg.solve(H[:2, :2], -g[:2]), rtol=1e-5)


def lasso_block(d, seed, rho, frac, rel_tol):
    """The lasso's quadratic at 0 as a coordinate-descent block: H = XᵀX, g = −Xᵀy, h = λ|·|
    with λ = frac·‖g‖∞, and a tolerance rel_tol·‖g‖∞."""
    X, y = regression(n=400, d=d, seed=seed, rho=rho)
    H, g = jnp.asarray(X.T @ X), -jnp.asarray(X.T @ y)
    lam = frac * float(jnp.max(jnp.abs(g)))
    h = Separable(jnp.full(d, lam), jnp.zeros(d), jnp.zeros(d), jnp.full(d, -jnp.inf),
                  jnp.full(d, jnp.inf))
    return X, y, H, g, h, lam, rel_tol * float(jnp.max(jnp.abs(g)))


@pytest.mark.float64
def test_anderson_cuts_coordinate_descent_epochs_and_keeps_the_solution(monkeypatch):
    """On a correlated lasso block, Anderson extrapolation reaches the same minimizer in
    fewer epochs than plain cyclic coordinate descent (`ANDERSON_MAX_WEIGHT = 0` refuses
    every extrapolation)."""
    import jaxopt2._coordinate as C

    X, y, H, g, h, lam, tol = lasso_block(d=60, seed=4, rho=0.9, frac=0.01, rel_tol=1e-10)
    d = H.shape[0]

    def run():
        z, v, k, ok, _, _, _, _ = C._cd_block(H, jnp.zeros(d), g, h, jnp.asarray(tol), 5000,
                                           jnp.float64)
        assert bool(ok)
        return np.asarray(z), int(k)

    z_aa, k_aa = run()
    monkeypatch.setattr(C, "ANDERSON_MAX_WEIGHT", 0.0)
    z_cd, k_cd = run()
    lasso_kkt(X, y, z_aa, lam, rtol=1e-7)
    np.testing.assert_allclose(z_aa, z_cd, atol=1e-8 * np.max(np.abs(z_cd)))
    assert k_aa < 0.7 * k_cd, (k_aa, k_cd)


@pytest.mark.float64
def test_a_quadratic_is_solved_in_one_tight_inner_solve_after_the_first_step(monkeypatch):
    """Eisenstat–Walker's choice 1 as coordinate descent measures it: once a unit step found f
    equal to its quadratic model (f quadratic here), the next inner solve goes to the floor
    instead of the loose choice-2 forcing term, which saves outer steps (compared with the
    choice-2 term alone)."""
    import jaxopt2._solver.proximal_newton as PN

    X, y = regression(n=200, d=40, seed=5, rho=0.8)
    lam = 0.01 * np.max(np.abs(X.T @ y))

    def solve():
        solver = J.ProximalNewton(rtol=1e-8, inner="cd", ws_start=64,
                                  hessian_block=data_block(X))
        sol = J.minimize(lsq(X), jnp.zeros(40), jnp.asarray(y), solver=solver, prox=P.l1,
                         prox_args=lam, max_steps=100)
        assert J.status_name(sol.status) == "successful"
        lasso_kkt(X, y, np.asarray(sol.params), lam, rtol=1e-6)
        return int(sol.stats["num_steps"])

    with_rule = solve()
    choice2 = PN.forcing_term
    monkeypatch.setattr(PN, "forcing_term", lambda ratio, model_error: choice2(ratio, jnp.inf))
    without = solve()
    assert with_rule < without, (with_rule, without)


@pytest.mark.float64
@pytest.mark.parametrize("rtol", [1e-6, 1e-8])
def test_a_gram_form_lasso_takes_every_unit_step_with_its_gradient(rtol):
    """f = ½wᵀGw − bᵀw + c (scikit-learn's precomputed-Gram form), whose terms are large next
    to f: the last, certified step's decrease is below f's round-off, so a line search on f
    cannot judge it. It is not taken (within the stopping tolerance, it certifies the point
    it starts from, whose gradient is known), and a first step on a working set that holds
    every violation is solved tightly once f matched its model, so the solve costs one
    gradient per step taken and no function-only trials. (Before: 2–15 function-only
    trials, a fallback gradient, and one more outer step at λ = 0.05.)"""
    rng = np.random.default_rng(0)
    n, d = 2000, 300
    X = rng.standard_normal((n, d))
    for j in range(1, d):
        X[:, j] = 0.5 * X[:, j - 1] + np.sqrt(0.75) * X[:, j]
    w = np.zeros(d)
    w[rng.choice(d, 15, replace=False)] = rng.standard_normal(15)
    y = X @ w + 0.3 * rng.standard_normal(n)
    data = {"G": jnp.asarray(X.T @ X / n), "b": jnp.asarray(X.T @ y / n),
            "c": jnp.asarray(0.5 * y @ y / n)}

    def f(w, a):
        return 0.5 * (w @ (a["G"] @ w)) - a["b"] @ w + a["c"]

    for frac, steps in ((0.05, 3), (0.005, 4)):
        lam = frac * np.max(np.abs(X.T @ y / n))
        solver = J.ProximalNewton(rtol=rtol, inner="cd", ws_start=32,
                                  hessian_block=lambda w, a, idx: a["G"][:, idx][idx])
        sol = J.minimize(f, jnp.zeros(d), data, solver=solver, prox=P.l1, prox_args=lam)
        stats = {k: int(v) for k, v in sol.stats.items()}
        assert stats["num_fun"] == 0, stats
        # the start's gradient and one per step, but none for the last, certifying step
        # (and none for `initial_step`'s secant: the first block's diagonal sets the scale)
        assert stats["num_grad"] == stats["num_steps"], stats
        assert stats["num_steps"] <= steps, stats
        lasso_kkt(X / np.sqrt(n), y / np.sqrt(n), np.asarray(sol.params), lam,
                  rtol=max(1e3 * rtol, 1e-6))


@pytest.mark.float64
def test_a_full_sweep_that_keeps_the_support_lets_support_sweeps_converge():
    """glmnet's rule: once a full sweep leaves the support as it was, the sweeps over the
    support run to the tolerance and the next full sweep only confirms. Here 3 full sweeps
    (find, settle, confirm); with the support sweeps always stopped at a tenth of the last
    full sweep's change, as before, 8 (a full sweep at every decade of the change)."""
    import jaxopt2._coordinate as C

    X, y, H, g, h, lam, tol = lasso_block(d=30, seed=3, rho=0.5, frac=0.1, rel_tol=1e-12)
    z, _, k, ok, _, _, fulls, _ = C._cd_block(H, jnp.zeros(30), g, h, jnp.asarray(tol), 5000,
                                           jnp.float64)
    assert bool(ok)
    lasso_kkt(X, y, np.asarray(z), lam, rtol=1e-9)
    assert int(fulls) <= 3, (int(fulls), int(k))


@pytest.mark.float64
def test_the_residual_is_the_models_stationarity_and_can_end_the_solve():
    """`_cd_block`'s residual is max|q + v| with q = g + H(z − x) recomputed here, and where
    `residual_tol` is given the solve ends as soon as it is met (fewer epochs than the sweep
    test at the same tolerance, and the residual then within it); the sweep test alone
    (residual_tol = 0) leaves a residual that this test can compare."""
    import jaxopt2._coordinate as C

    X, y, H, g, h, lam, tol = lasso_block(d=60, seed=4, rho=0.9, frac=0.01, rel_tol=1e-6)
    d = H.shape[0]
    x = jnp.zeros(d)
    z, v, k, ok, _, _, _, res = C._cd_block(H, x, g, h, jnp.asarray(tol), 5000, jnp.float64)
    q = g + H @ (z - x)
    assert bool(ok)
    np.testing.assert_allclose(float(res), float(jnp.max(jnp.abs(q + v))), rtol=1e-9)
    # v is the point of ∂h(z) nearest −q: λ·sign(z) on the support, |v| ≤ λ off it
    on = np.abs(np.asarray(z)) > 0
    np.testing.assert_allclose(np.asarray(v)[on], lam * np.sign(np.asarray(z)[on]))
    assert np.all(np.abs(np.asarray(v)) <= lam * (1 + 1e-12))
    loose = 10 * float(res)
    z2, v2, k2, ok2, _, _, _, res2 = C._cd_block(H, x, g, h, jnp.asarray(tol), 5000,
                                                 jnp.float64, residual_tol=loose)
    assert bool(ok2) and float(res2) <= loose and int(k2) < int(k), (int(k2), int(k))
    np.testing.assert_allclose(float(res2),
                               float(jnp.max(jnp.abs(g + H @ (z2 - x) + v2))), rtol=1e-9)
