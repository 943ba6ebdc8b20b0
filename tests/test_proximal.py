"""ProximalGradient and ProximalNewton (issue 15): lasso and elastic net against scikit-learn's
coordinate descent and the KKT conditions, NNLS against scipy, l1-logistic against liblinear,
implicit derivatives with respect to the prox's hyperparameters and the bounds against closed
forms and finite differences, and the contract (jit, vmap with a bad problem, float32, pytrees).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2 as J
from jaxopt2 import prox as P
from jaxopt2._base import default_rtol

SOLVERS = {"ProximalGradient": J.ProximalGradient, "ProximalNewton": J.ProximalNewton}


def soft(v, lam, scale):  # a user's own prox, jaxopt's signature
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - lam * scale, 0.0)


def regression(n=60, d=12, seed=0, rho=0.7):
    """Correlated Gaussian features, a sparse truth, noise."""
    rng = np.random.default_rng(seed)
    C = rho ** np.abs(np.subtract.outer(np.arange(d), np.arange(d)))
    X = rng.normal(size=(n, d)) @ np.linalg.cholesky(C).T
    w = np.zeros(d)
    w[:4] = [2.0, -1.5, 1.0, 0.5]
    return X, X @ w + 0.3 * rng.normal(size=n)


def lsq(X):
    X = jnp.asarray(X)
    return lambda w, y: 0.5 * jnp.sum((X @ w - y) ** 2)


def lasso(solver, X, y, lam, **kw):
    d = X.shape[1]
    return J.minimize(lsq(X), jnp.zeros(d, X.dtype), jnp.asarray(y), solver=solver,
                      prox=P.l1, prox_args=lam, max_steps=3000, **kw)


@pytest.mark.float64
@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("frac", [0.1, 0.01])
def test_lasso_matches_sklearn_and_kkt(name, frac):
    from sklearn.linear_model import Lasso

    X, y = regression()
    n = X.shape[0]
    lam = frac * np.max(np.abs(X.T @ y))
    sol = lasso(SOLVERS[name](rtol=1e-10), jnp.asarray(X), y, lam)
    assert J.status_name(sol.status) == "successful"
    # sklearn minimizes ‖y − Xw‖²/(2n) + α‖w‖₁: our f is n times that, so α = λ/n.
    ref = Lasso(alpha=lam / n, fit_intercept=False, tol=1e-15, max_iter=10**6).fit(X, y).coef_
    w = np.asarray(sol.params)
    np.testing.assert_allclose(w, ref, atol=1e-7 * np.max(np.abs(ref)))
    # KKT: Xᵀ(y − Xw) = λ sign(w) on the support, |Xᵀ(y − Xw)| ≤ λ off it.
    corr = X.T @ (y - X @ w)
    support = np.abs(w) > 0
    np.testing.assert_allclose(corr[support], lam * np.sign(w[support]), rtol=1e-6)
    assert np.all(np.abs(corr[~support]) <= lam * (1 + 1e-6))
    np.testing.assert_allclose(sol.value, 0.5 * np.sum((X @ w - y) ** 2), rtol=1e-12)  # f only


@pytest.mark.float64
@pytest.mark.parametrize("name", SOLVERS)
def test_elastic_net_matches_sklearn(name):
    from sklearn.linear_model import ElasticNet

    X, y = regression(seed=1)
    n = X.shape[0]
    alpha, ratio = 0.05, 0.6
    # ‖y − Xw‖²/(2n) + α·r‖w‖₁ + α(1 − r)‖w‖²/2, times n.
    strengths = (n * alpha * ratio, n * alpha * (1 - ratio))
    sol = J.minimize(lsq(X), jnp.zeros(X.shape[1]), jnp.asarray(y),
                     solver=SOLVERS[name](rtol=1e-10), prox=P.elastic_net,
                     prox_args=strengths, max_steps=3000)
    ref = ElasticNet(alpha=alpha, l1_ratio=ratio, fit_intercept=False, tol=1e-15,
                     max_iter=10**6).fit(X, y).coef_
    np.testing.assert_allclose(sol.params, ref, atol=1e-7 * np.max(np.abs(ref)))


@pytest.mark.float64
@pytest.mark.parametrize("name", SOLVERS)
def test_nnls_matches_scipy(name):
    from scipy.optimize import nnls

    X, y = regression(seed=2)
    y = y - 1.0  # some coefficients want to be negative
    sol = J.minimize(lsq(X), jnp.ones(X.shape[1]), jnp.asarray(y),
                     solver=SOLVERS[name](rtol=1e-10), bounds=(0.0, None), max_steps=3000)
    ref, _ = nnls(X, y)
    assert np.sum(ref == 0) >= 2  # the test means something: active bounds
    np.testing.assert_allclose(sol.params, ref, atol=1e-8 * np.max(ref))
    assert float(jnp.min(sol.params)) >= 0.0


@pytest.mark.float64
def test_l1_logistic_matches_liblinear():
    from sklearn.linear_model import LogisticRegression

    X, y = regression(seed=3)
    labels = (y > 0).astype(float)
    Xj = jnp.asarray(X)

    def logistic(w, a):
        z = Xj @ w
        return jnp.sum(jnp.logaddexp(0.0, z) - a * z)

    C = 0.5  # liblinear: ‖w‖₁ + C·Σ logistic loss, i.e. λ = 1/C on our scale
    ref = LogisticRegression(penalty="l1", C=C, solver="liblinear", fit_intercept=False,
                             tol=1e-12, max_iter=10**5).fit(X, labels).coef_[0]
    for name, solver in SOLVERS.items():
        sol = J.minimize(logistic, jnp.zeros(X.shape[1]), jnp.asarray(labels),
                         solver=solver(rtol=1e-9), prox=soft, prox_args=1 / C, max_steps=3000)
        np.testing.assert_allclose(sol.params, ref, atol=1e-5 * np.max(np.abs(ref)),
                                   err_msg=name)


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.float64
@pytest.mark.parametrize("name", SOLVERS)
def test_lasso_derivative_in_lambda_is_the_closed_form(name):
    X, y = regression(seed=4)
    Xj = jnp.asarray(X)
    lam = 0.05 * np.max(np.abs(X.T @ y))
    solve = lambda lam: lasso(SOLVERS[name](rtol=1e-10), Xj, y, lam).params  # noqa: E731
    w = np.asarray(solve(lam))
    S = np.abs(w) > 0
    # x_S = (X_SᵀX_S)⁻¹(X_Sᵀy − λ sign(x_S))  ⇒  dx_S/dλ = −(X_SᵀX_S)⁻¹ sign(x_S), 0 off S.
    expected = np.zeros_like(w)
    expected[S] = -np.linalg.solve(X[:, S].T @ X[:, S], np.sign(w[S]))
    # each transformation compiled once (eagerly it would trace and compile op by op)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(solve))(lam), expected, atol=1e-8)
    np.testing.assert_allclose(jax.jit(jax.jacrev(solve))(lam), expected, atol=1e-8)
    # reverse mode of a scalar loss, under vmap over two λ
    lams = jnp.array([lam, 1.5 * lam])
    grads = jax.jit(jax.vmap(jax.grad(lambda l: jnp.sum(solve(l) ** 2))))(lams)
    np.testing.assert_allclose(grads[0], 2 * w @ expected, rtol=1e-7)


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.float64
def test_bounds_derivative_matches_finite_differences():
    """dx*/d(args) and dx*/d(lower) through the projected-gradient fixed point: on the free
    variables the reduced Newton system, on the active ones the bound itself."""
    X, y = regression(seed=5)
    y = y - 1.0
    Xj = jnp.asarray(X)
    d = X.shape[1]

    def solve(y, lower):
        return J.minimize(lsq(Xj), jnp.ones(d), y, solver=J.ProximalGradient(rtol=1e-11),
                          bounds=(lower, None), max_steps=5000).params

    y, lower = jnp.asarray(y), jnp.full(d, 0.05)
    w = solve(y, lower)
    active = np.asarray(w) == np.asarray(lower)
    assert 0 < active.sum() < d
    rng = np.random.default_rng(0)
    ty, tl = jnp.asarray(rng.normal(size=y.shape)), jnp.linspace(0.0, 0.01, d)
    jvp = jax.jvp(solve, (y, lower), (ty, tl))[1]
    h = 1e-6
    fd = (solve(y + h * ty, lower + h * tl) - solve(y - h * ty, lower - h * tl)) / (2 * h)
    np.testing.assert_allclose(jvp, fd, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jvp)[active], np.asarray(tl)[active], atol=1e-12)
    # reverse mode is the transpose: ⟨c, J·t⟩ = ⟨Jᵀc, t⟩
    c = jnp.asarray(rng.normal(size=d))
    gy, gl = jax.grad(lambda y, lo: jnp.vdot(solve(y, lo), c), argnums=(0, 1))(y, lower)
    np.testing.assert_allclose(jnp.vdot(gy, ty) + jnp.vdot(gl, tl), jnp.vdot(c, jvp),
                               rtol=1e-8)


@pytest.mark.parametrize("name", SOLVERS)
def test_contract_float32_jit_vmap_pytree(name):
    """float32 kept; jit; a vmapped batch where one problem has NaN data reports its own status
    and leaves the others solved; dict params with a prox acting leaf by leaf."""
    X, y = regression(seed=6)
    X, y = jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)

    def f(p, y):
        return 0.5 * jnp.sum((X[:, :6] @ p["a"] + X[:, 6:] @ p["b"] - y) ** 2)

    p0 = {"a": jnp.zeros(6, jnp.float32), "b": jnp.zeros(6, jnp.float32)}
    lam = jnp.asarray(5.0, jnp.float32)
    solve = jax.jit(lambda y: J.minimize(f, p0, y, solver=SOLVERS[name](), prox=P.l1,
                                         prox_args=lam, throw=False, max_steps=500))
    sol = solve(y)
    assert J.status_name(sol.status) == "successful"
    assert sol.params["a"].dtype == jnp.float32 and sol.value.dtype == jnp.float32
    ref = lasso(SOLVERS[name](), X, y, lam).params
    np.testing.assert_allclose(jnp.concatenate([sol.params["a"], sol.params["b"]]), ref,
                               atol=2e-3 * float(jnp.max(jnp.abs(ref))))
    batch = jnp.stack([y, y.at[3].set(jnp.nan), 2 * y])
    out = jax.vmap(solve)(batch)
    codes = np.asarray(out.status._value)
    assert codes[0] == codes[2] == J.RESULTS.successful._value
    assert codes[1] == J.RESULTS.nonfinite._value
    np.testing.assert_allclose(out.params["a"][0], sol.params["a"], rtol=1e-5, atol=1e-6)


def test_status_is_reported_not_silent():
    """Too few steps: `max_steps_reached`, and with throw=True an error."""
    X, y = regression(seed=7)
    X = jnp.asarray(X, jnp.float32)
    sol = lasso(J.ProximalGradient(restart=False), X, y, 0.1, throw=False)
    assert J.status_name(sol.status) == "successful"
    short = J.minimize(lsq(X), jnp.zeros(X.shape[1]), jnp.asarray(y, jnp.float32),
                       solver=J.ProximalGradient(), prox=P.l1, prox_args=0.1, max_steps=2,
                       throw=False)
    assert J.status_name(short.status) == "max_steps_reached"
    with pytest.raises(RuntimeError, match="max_steps"):
        J.minimize(lsq(X), jnp.zeros(X.shape[1]), jnp.asarray(y, jnp.float32),
                   solver=J.ProximalGradient(), prox=P.l1, prox_args=0.1, max_steps=2)


def test_far_start_is_not_looser():
    """The stopping rule on the gradient mapping is relative to the start only together with
    the step's and the gradient's error estimates: a start 1e4 away ends as close to the
    solution as a start at zero."""
    X, y = regression(seed=8)
    X, y = jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)
    ref = lasso(J.ProximalGradient(), X, y, 1.0).params
    for name, solver in SOLVERS.items():
        far = J.minimize(lsq(X), jnp.full(X.shape[1], 1e4, jnp.float32), y, solver=solver(),
                         prox=P.l1, prox_args=1.0, max_steps=3000)
        np.testing.assert_allclose(far.params, ref, atol=5e-3 * float(jnp.max(jnp.abs(ref))),
                                   err_msg=name)


def scaled_lasso(seed, n, d):
    """Columns scaled over 0.1 … 3, λ = 0.1·λ_max, and the solution by scikit-learn's
    coordinate descent to 1e-14 (float64, in numpy)."""
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * rng.uniform(0.1, 3, d)
    y = rng.standard_normal(n)
    lam = 0.1 * float(np.max(np.abs(X.T @ y)))
    ref = Lasso(alpha=lam / n, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(X, y).coef_
    return X, y, lam, ref


FAR_CASES = [  # (solver, seed, n, d, start, dtype): each said `successful` too far from x*
    ("ProximalGradient", 0, 80, 30, 1e3, "float32"),
    ("ProximalGradient", 1, 80, 30, 1e3, "float32"),
    pytest.param("ProximalGradient", 0, 40, 60, 1e3, "float64", marks=pytest.mark.float64),
    ("ProximalGradient", 3, 40, 60, 1e3, "float32"),
    ("ProximalNewton-fista", 4, 40, 60, 1e3, "float32"),
    ("ProximalNewton-cd", 0, 80, 30, 1e3, "float32"),
    ("ProximalNewton-cd", 0, 80, 30, 1e6, "float32"),
    pytest.param("ProximalNewton-cd", 4, 80, 30, 1e6, "float64", marks=pytest.mark.float64),
    pytest.param("ProximalNewton-cd", 4, 40, 60, 1e3, "float64", marks=pytest.mark.float64),
]


@pytest.mark.parametrize("name,seed,n,d,start,dtype", FAR_CASES)
def test_a_far_start_is_successful_only_within_tolerance(name, seed, n, d, start, dtype):
    """`successful` means ‖x − x*‖∞ ≤ rtol·max(‖x‖∞, 1), whatever the start. After a far start
    the gradient test (relative to ‖G(x₀)‖) is nearly void, so the error estimates carry the
    verdict: the step-based ones of ProximalGradient and ProximalNewton(inner="fista"),
    confirmed by (1 + ηL̂)‖G‖₂/μ̂ over recent secant curvatures; ProximalNewton's certified
    coordinate-descent step, only where the model's residual at z is a tenth of ‖G(xₖ)‖ (the
    tolerance floor, a tenth of the outer one, was loose after a far start)."""
    X, y, lam, ref = scaled_lasso(seed, n, d)
    Xj = jnp.asarray(X, dtype)
    if name == "ProximalGradient":
        solver = J.ProximalGradient()
    elif name == "ProximalNewton-fista":
        solver = J.ProximalNewton(inner="fista")
    else:
        solver = J.ProximalNewton(inner="cd",
                                  hessian_block=lambda w, yy, i: Xj[:, i].T @ Xj[:, i])
    sol = J.minimize(lsq(Xj), jnp.full(d, start, dtype), jnp.asarray(y, dtype), solver=solver,
                     prox=P.l1, prox_args=lam, max_steps=5000, throw=False)
    assert J.status_name(sol.status) == "successful"
    x = np.asarray(sol.params, np.float64)
    rtol = default_rtol(jnp.dtype(dtype))
    assert np.max(np.abs(x - ref)) <= rtol * max(np.max(np.abs(x)), 1.0)
