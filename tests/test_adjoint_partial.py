"""Reverse-mode derivatives through a solve whose outer loss uses only some leaves of the
solution pytree (the README quickstart's shape). The leaves left out get symbolic-zero
cotangents, which the transpose of `custom_linear_solve` in older jax (0.4.30) cannot take;
this is the regression test for the lower-bound job (`make test-min`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2

pytestmark = pytest.mark.float64  # written for float64 tolerances

N, D = 30, 4


def _data(dtype):
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    X = jax.random.normal(kx, (N, D), dtype)
    y = jax.random.normal(ky, (N,), dtype)
    return X, y


def _ridge(params, args):
    X, y, lam = args
    r = X @ params["w"] + params["b"] - y
    return 0.5 * jnp.sum(r**2) + 0.5 * lam * jnp.sum(params["w"] ** 2)


def _closed_form(X, y, lam):
    """(w*, b*) and their derivatives in λ: H θ* = Aᵀy with A = [X 1], H = AᵀA + λ diag(1…1, 0),
    so dθ*/dλ = −H⁻¹ diag(1…1, 0) θ*."""
    A = jnp.concatenate([X, jnp.ones((N, 1), X.dtype)], axis=1)
    mask = jnp.concatenate([jnp.ones(D, X.dtype), jnp.zeros(1, X.dtype)])
    H = A.T @ A + lam * jnp.diag(mask)
    theta = jnp.linalg.solve(H, A.T @ y)
    dtheta = -jnp.linalg.solve(H, mask * theta)
    return theta, dtheta


@pytest.mark.slow  # ~20 s each (make test-slow)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_grad_through_minimize_with_unused_leaves(dtype):
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        pytest.skip("float64 needs jax_enable_x64")
    X, y = _data(dtype)
    lam = jnp.asarray(0.7, dtype)
    params0 = {"w": jnp.zeros(D, dtype), "b": jnp.zeros((), dtype)}

    def solve(lam):
        return jaxopt2.minimize(_ridge, params0, (X, y, lam), solver=jaxopt2.Newton()).params

    only_w = jax.jit(jax.grad(lambda lam: jnp.sum(solve(lam)["w"] ** 2)))(lam)
    only_b = jax.jit(jax.grad(lambda lam: solve(lam)["b"]))(lam)

    theta, dtheta = _closed_form(X, y, lam)
    tol = 1e-4 if dtype == jnp.float32 else 1e-9
    np.testing.assert_allclose(only_w, 2 * theta[:D] @ dtheta[:D], rtol=tol)
    np.testing.assert_allclose(only_b, dtheta[D], rtol=tol)
    assert only_w.dtype == dtype


def test_grad_through_least_squares_with_unused_leaf():
    """The same through `least_squares` (a different optimality condition, same adjoint)."""
    X, y = _data(jnp.float32)
    lam = jnp.asarray(0.7, jnp.float32)
    params0 = {"w": jnp.zeros(D, jnp.float32), "b": jnp.zeros((), jnp.float32)}

    def residuals(params, args):
        X, y, lam = args
        return jnp.concatenate([X @ params["w"] + params["b"] - y, jnp.sqrt(lam) * params["w"]])

    def b_star(lam):
        return jaxopt2.least_squares(residuals, params0, (X, y, lam),
                                     solver=jaxopt2.LevenbergMarquardt()).params["b"]

    _, dtheta = _closed_form(X, y, lam)
    np.testing.assert_allclose(jax.jit(jax.grad(b_star))(lam), dtheta[D], rtol=1e-3)
