"""Minimizers on a singular Hessian: softmax regression with unpenalised intercepts.

f(W, b) = mean_i [logsumexp(z_i) − z_{i,y_i}] + ½μ‖W‖², z = XW + b, is constant along
b ↦ b + c·1 (every logit moves together), so the Hessian has that null direction and the
minimizers form a line. The gradient is orthogonal to it in exact arithmetic; its round-off
component along it must not be amplified into steps along the line (issue 13: RegularizedNewton
with γ doubling every step drifted there by O(1) per step once ‖g‖ reached round-off, and never
met the stopping rule). References: Newton with the pseudo-inverse of the dense Hessian in
float64, which never moves along the null direction.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2 import RESULTS

# slow: float64 solves to round-off on a singular Hessian (make test-slow, run by .ci/run)
pytestmark = pytest.mark.slow


def make_data(seed, dtype, n=120, d=5, k=4):
    kx, kw, kn = jax.random.split(jax.random.PRNGKey(seed), 3)
    X = jax.random.normal(kx, (n, d), dtype)
    z = X @ jax.random.normal(kw, (d, k), dtype) + 0.3 * jax.random.normal(kn, (n, k), dtype)
    return X, jax.nn.one_hot(jnp.argmax(z, axis=1), k, dtype=dtype)


def softmax(p, a):
    X, Y = a
    z = X @ p["W"] + p["b"]
    nll = jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.sum(Y * z, axis=1))
    return nll + 0.5e-2 * jnp.sum(p["W"] ** 2)  # intercepts not penalised


def zeros(dtype, d=5, k=4):
    return {"W": jnp.zeros((d, k), dtype), "b": jnp.zeros(k, dtype)}


def grad_hess(W, b, X, Y, mu=1e-2):
    """Gradient and dense Hessian of `softmax` in NumPy float64, parameters ordered (W, b)
    as `ravel_pytree` orders them: vec(W) row-major, then b."""
    n, d = X.shape
    z = X @ W + b
    P = np.exp(z - z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    A = np.hstack([X, np.ones((n, 1))])  # row i: [x_i, 1]
    g = A.T @ (P - Y) / n
    g[:d] += mu * W
    # Σ_i (a_i a_iᵀ) ⊗ (diag p_i − p_i p_iᵀ) / n, in the (row of [W; b], class) ordering.
    S = np.einsum("ik,kl->ikl", P, np.eye(P.shape[1])) - np.einsum("ik,il->ikl", P, P)
    H = np.einsum("ia,ib,ikl->akbl", A, A, S).reshape(g.size, g.size) / n
    H[: d * P.shape[1], : d * P.shape[1]] += mu * np.eye(d * P.shape[1])
    return g.ravel(), H


def pinv_newton(a):
    """x ← x − H⁺g from 0 in float64: the minimizer with mean(b) = 0."""
    X, Y = (np.asarray(t, np.float64) for t in a)
    d, k = X.shape[1], Y.shape[1]
    theta = np.zeros((d + 1) * k)
    for _ in range(30):
        g, H = grad_hess(theta[: d * k].reshape(d, k), theta[d * k:], X, Y)
        theta = theta - np.linalg.pinv(H, hermitian=True) @ g
    return {"W": theta[: d * k].reshape(d, k), "b": theta[d * k:]}


def test_the_problem_is_singular_and_the_reference_is_right():
    a = make_data(0, jnp.float32)
    X, Y = (np.asarray(t, np.float64) for t in a)
    W = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (5, 4)), np.float64)
    g, H = grad_hess(W, np.arange(4.0), X, Y)
    p = {"W": jnp.asarray(W, jnp.float32), "b": jnp.arange(4.0)}
    flat, unravel = jax.flatten_util.ravel_pytree(p)
    np.testing.assert_allclose(g, jax.grad(lambda v: softmax(unravel(v), a))(flat), atol=1e-5)
    np.testing.assert_allclose(H, jax.hessian(lambda v: softmax(unravel(v), a))(flat),
                               atol=1e-5)
    eigs = np.linalg.eigvalsh(H)
    assert abs(eigs[0]) < 1e-12 * eigs[-1] < eigs[1]  # one null direction, b + c·1
    ref = pinv_newton(a)
    assert np.max(np.abs(grad_hess(ref["W"], ref["b"], X, Y)[0])) < 1e-12


def check(sol, a, dtype, rtol):
    assert sol.status == RESULTS.successful
    assert sol.params["W"].dtype == dtype
    ref = pinv_newton(a)
    g0 = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(
        jax.grad(softmax)(zeros(dtype), a)))
    g = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(
        jax.grad(softmax)(sol.params, a)))
    assert g <= rtol * g0
    # The point is a minimizer up to the free shift of b.
    b = np.asarray(sol.params["b"], np.float64)
    tol = 30 * rtol
    np.testing.assert_allclose(sol.params["W"], ref["W"], atol=tol)
    np.testing.assert_allclose(b - b.mean(), ref["b"], atol=tol)
    return abs(b.mean())  # how far it moved along the flat direction


@pytest.mark.parametrize("seed", range(3))
def test_regularized_newton_float32(seed):
    a = make_data(seed, jnp.float32)
    sol = jaxopt2.minimize(softmax, zeros(jnp.float32), a, max_steps=60, throw=False,
                           solver=jaxopt2.RegularizedNewton(rtol=1e-4))
    # The drift along b + c·1 stays small (before the fix: O(1) to O(10) per step).
    assert check(sol, a, jnp.float32, 1e-4) <= 0.05


@pytest.mark.float64
@pytest.mark.parametrize("seed", range(3))
def test_regularized_newton_float64_to_roundoff(seed):
    # rtol = 1e-10 makes the solve reach the gradient's round-off, where the drift began.
    a = make_data(seed, jnp.float64)
    sol = jaxopt2.minimize(softmax, zeros(jnp.float64), a, max_steps=60, throw=False,
                           solver=jaxopt2.RegularizedNewton(rtol=1e-10))
    assert check(sol, a, jnp.float64, 1e-10) <= 1e-6


@pytest.mark.parametrize("solver", [jaxopt2.NewtonCG, jaxopt2.LBFGS])
def test_other_minimizers_float32(solver):
    # NewtonCG may move along the flat direction (about 2 in float32 here): not an error.
    a = make_data(0, jnp.float32)
    sol = jaxopt2.minimize(softmax, zeros(jnp.float32), a, max_steps=200, throw=False,
                           solver=solver(rtol=1e-4))
    check(sol, a, jnp.float32, 1e-4)
