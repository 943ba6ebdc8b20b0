"""ProximalNewton's safeguards and warm starts (issue 15): the cold start that ended
`line_search_failed` on examples/sparse_regression.py's elastic net, the proximal-gradient
fallback on a nonconvex f, and a warm start that costs fewer Hessian-vector products than a
cold one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2 as J
from jaxopt2 import prox as P

from .test_proximal import lsq, regression


def diabetes_with_decoys(count=40, rho=0.8, seed=0, n_train=200):
    """The training split of examples/sparse_regression.py (load_data), built the same way:
    diabetes standardised, `count` decoys ρ·x_k + √(1 − ρ²)·ε, y and X centred."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    X, y = X[perm], y[perm]
    X = (X - X.mean(0)) / X.std(0)
    source = rng.integers(0, X.shape[1], count)
    Z = rho * X[:, source] + np.sqrt(1.0 - rho**2) * rng.standard_normal((len(y), count))
    X = np.hstack([X, (Z - Z.mean(0)) / Z.std(0)])
    y = (y - y[:n_train].mean()) / y[:n_train].std()
    X = X - X[:n_train].mean(0)
    return X[:n_train], y[:n_train]


@pytest.mark.float64
def test_cold_start_elastic_net_of_the_example_succeeds():
    """At λ = 0.008771 (point 31 of the example's 50-point grid) the cold start from zero with
    the default inner budget ended `line_search_failed` after 7 steps, 0.0126 from
    scikit-learn: FISTA's last iterate certified no decrease. Now: successful, and
    scikit-learn's answer."""
    from sklearn.linear_model import ElasticNet

    X, y = diabetes_with_decoys()
    n, d = X.shape
    alpha = 0.9
    lam_max = np.max(np.abs(X.T @ (y - y.mean()))) / (n * alpha)
    lam = lam_max * np.geomspace(1.0, 1e-3, 50)[31]
    assert abs(lam - 0.008771) < 1e-6  # the instance of the report
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def mse(p, data):
        A, b = data
        return 0.5 * jnp.mean((A @ p["w"] + p["b"] - b) ** 2)

    strengths = ({"w": alpha * lam, "b": None}, {"w": (1 - alpha) * lam, "b": None})
    sol = J.minimize(mse, {"w": jnp.zeros(d), "b": jnp.zeros(())}, (Xj, yj),
                     solver=J.ProximalNewton(rtol=0.0, atol=1e-10), prox=P.elastic_net,
                     prox_args=strengths, max_steps=100, throw=False)
    assert J.status_name(sol.status) == "successful"
    ref = ElasticNet(alpha=lam, l1_ratio=alpha, tol=1e-14, max_iter=10**6).fit(X, y)
    np.testing.assert_allclose(sol.params["w"], ref.coef_, atol=1e-7)
    np.testing.assert_allclose(sol.params["b"], ref.intercept_, atol=1e-7)


@pytest.mark.float64
def test_small_inner_budget_still_descends():
    """An inner budget far too small for the conditioning: every step still decreases F and
    none fails (the best-certified iterate, or the gradient fallback)."""
    X, y = diabetes_with_decoys(count=20)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    lam = 1.0
    f = lsq(Xj)
    F = lambda w: f(w, yj) + lam * jnp.sum(jnp.abs(w))  # noqa: E731
    w = jnp.zeros(X.shape[1])
    step = jax.jit(lambda w: J.minimize(f, w, yj, solver=J.ProximalNewton(inner_steps=3),
                                        prox=P.l1, prox_args=lam, max_steps=1, throw=False))
    values = [float(F(w))]
    for _ in range(15):
        sol = step(w)
        assert J.status_name(sol.status) in ("successful", "max_steps_reached")
        w = sol.params
        values.append(float(F(w)))
    assert np.all(np.diff(values) <= 1e-12 * abs(values[0]))
    assert values[-1] < 0.9 * values[0]


@pytest.mark.float64
def test_nonconvex_falls_back_to_a_proximal_gradient_step():
    """Σ(xᵢ² − 1)² + aᵀx + λ‖x‖₁ from 0.1·1, where ∇²f = 12x² − 4 < 0: the model is
    nonconvex and its Newton step failed the line search on the first step. The fallback
    descends to a point that satisfies the l1 stationarity conditions."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=6))
    lam = 0.5

    def f(x, a):
        return jnp.sum((x**2 - 1) ** 2) + a @ x

    x0 = jnp.full(6, 0.1)
    sol = J.minimize(f, x0, a, solver=J.ProximalNewton(rtol=1e-10), prox=P.l1, prox_args=lam,
                     max_steps=200, throw=False)
    assert J.status_name(sol.status) == "successful"
    F = lambda x: f(x, a) + lam * jnp.sum(jnp.abs(x))  # noqa: E731
    assert F(sol.params) < F(x0) - 1.0
    x, g = np.asarray(sol.params), np.asarray(jax.grad(f)(sol.params, a))
    on = x != 0
    assert on.any()
    np.testing.assert_allclose(g[on], -lam * np.sign(x[on]), atol=1e-7)
    assert np.all(np.abs(g[~on]) <= lam + 1e-9)


@pytest.mark.float64
def test_warm_start_costs_fewer_products():
    """The inner tolerance follows the current gradient mapping, not the start's: a warm start
    from the solution at a nearby λ (a path's next point) needs fewer Hessian-vector products
    than the cold start, and both reach the same solution."""
    X, y = regression(n=80, d=30, seed=3, rho=0.9)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    lam = 0.05 * np.max(np.abs(X.T @ y))

    def solve(lam, x0):
        return J.minimize(lsq(Xj), x0, yj, solver=J.ProximalNewton(rtol=0.0, atol=1e-9),
                          prox=P.l1, prox_args=lam, max_steps=500)

    cold = solve(lam, jnp.zeros(30))
    warm = solve(lam, solve(1.02 * lam, jnp.zeros(30)).params)
    np.testing.assert_allclose(warm.params, cold.params, atol=1e-8)
    assert int(warm.stats["num_hvp"]) < 0.7 * int(cold.stats["num_hvp"])
    assert int(warm.stats["num_steps"]) <= int(cold.stats["num_steps"])
