"""ImplicitAdjoint(refine=...): one Newton step under differentiation, so that a first-order
solver's derivatives are not limited by its stopping tolerance (issue 20)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2 as J


def _ridge(dtype):
    X = jax.random.normal(jax.random.key(0), (200, 12), dtype) * jnp.logspace(0, -1, 12,
                                                                              dtype=dtype)
    y = X @ jnp.linspace(-1, 1, 12, dtype=dtype) + 0.1 * jax.random.normal(
        jax.random.key(1), (200,), dtype)
    Xv, yv = 1.1 * X[:50], y[:50]

    def inner(w, th):
        return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(th) * w**2)

    def val(w):
        return 0.5 * jnp.mean((Xv @ w - yv) ** 2)

    def closed_form(th):
        return jnp.linalg.solve(X.T @ X / 200 + jnp.diag(jnp.exp(th)), X.T @ y / 200)

    return inner, val, closed_form, jnp.full(12, -3.0, dtype)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.float64
@pytest.mark.parametrize("solver", [J.LBFGS(), J.GradientDescent()], ids=lambda s: type(s).__name__)
def test_first_order_hypergradient_is_refined_by_default(solver):
    inner, val, closed_form, th = _ridge(jnp.float64)
    ref = jax.grad(lambda t: val(closed_form(t)))(th)

    def outer(t, adjoint):
        return val(J.minimize(inner, jnp.zeros(12), t, solver=solver, adjoint=adjoint).params)

    default = jax.jit(jax.grad(lambda t: outer(t, J.ImplicitAdjoint())))(th)
    plain = jax.jit(jax.grad(lambda t: outer(t, J.ImplicitAdjoint(refine=False))))(th)
    # without the step the derivative carries the solve's own error (rtol-sized) ...
    assert _rel(plain, ref) > 1e-9
    # ... with it, the error is squared
    assert _rel(default, ref) < 1e-11
    # forward mode takes the same rule
    fwd = jax.jacfwd(lambda t: outer(t, J.ImplicitAdjoint()))(th)
    assert _rel(fwd, ref) < 1e-11


@pytest.mark.float64
def test_refined_second_derivative():
    inner, val, closed_form, th = _ridge(jnp.float64)
    th = th[:3].at[:].set(-2.0)
    inner3 = lambda w, t: inner(w, jnp.concatenate([t, jnp.full(9, -3.0)]))  # noqa: E731
    ref = jax.hessian(lambda t: val(closed_form(jnp.concatenate([t, jnp.full(9, -3.0)]))))(th)
    solve = lambda t: J.minimize(inner3, jnp.zeros(12), t, solver=J.LBFGS()).params  # noqa: E731
    h = jax.hessian(lambda t: val(solve(t)))(th)
    np.testing.assert_allclose(h, ref, rtol=1e-6, atol=1e-10 * float(jnp.max(jnp.abs(ref))))


def test_refine_in_float32_and_primal():
    inner, val, closed_form, th = _ridge(jnp.float32)
    w_star = closed_form(th)
    solve = lambda t, r: J.minimize(inner, jnp.zeros(12), t, solver=J.LBFGS(),  # noqa: E731
                                    adjoint=J.ImplicitAdjoint(refine=r)).params
    ref = jax.grad(lambda t: val(closed_form(t)))(th)
    g = jax.grad(lambda t: val(solve(t, None)))(th)
    g_plain = jax.grad(lambda t: val(solve(t, False)))(th)
    assert _rel(g, ref) <= _rel(g_plain, ref) + 1e-6
    assert _rel(g, ref) < 1e-3
    # an undifferentiated call returns the solver's own point; a differentiated one the
    # refined point, no farther from the solution
    w_primal = solve(th, None)
    w_diff, _ = jax.jvp(lambda t: solve(t, None), (th,), (jnp.ones_like(th),))
    assert float(jnp.max(jnp.abs(w_diff - w_star))) <= float(
        jnp.max(jnp.abs(w_primal - w_star))) + 1e-6


def test_refine_keeps_a_failed_problem_nan_under_vmap():
    inner, val, _, th = _ridge(jnp.float32)
    ths = jnp.stack([th, th.at[0].set(jnp.nan), th + 0.5])

    def outer(t):
        sol = J.minimize(inner, jnp.zeros(12), t, solver=J.LBFGS(), throw=False)
        return val(sol.params)

    g = jax.vmap(jax.grad(outer))(ths)
    assert bool(jnp.all(jnp.isfinite(g[0]))) and bool(jnp.all(jnp.isfinite(g[2])))
    assert bool(jnp.all(jnp.isnan(g[1])))
    np.testing.assert_allclose(g[0], jax.grad(outer)(th), rtol=1e-5, atol=1e-7)


def test_refine_is_off_for_curvature_solvers():
    # Newton-type answers are quadratically converged: no step is taken (identical result)
    inner, val, _, th = _ridge(jnp.float32)
    solve = lambda t, r: J.minimize(inner, jnp.zeros(12), t, solver=J.Newton(),  # noqa: E731
                                    adjoint=J.ImplicitAdjoint(refine=r)).params
    a = jax.grad(lambda t: val(solve(t, None)))(th)
    b = jax.grad(lambda t: val(solve(t, False)))(th)
    np.testing.assert_array_equal(a, b)


def test_refine_rejects_a_non_bool():
    with pytest.raises(TypeError, match="refine"):
        J.ImplicitAdjoint(refine="yes")
