"""Implicit differentiation: hypergradients against closed forms, modes against each other,
higher order, failure reporting, the stand-alone tools (custom_root, root_vjp, KKT,
projected-gradient fixed points) and the alternative adjoints (Neumann, dense, unrolled)."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jaxopt2
from jaxopt2 import RESULTS, implicit

pytestmark = pytest.mark.float64  # written for float64 tolerances

N, D = 60, 8


def ridge_data(seed=0):
    kx, kw, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    X = jax.random.normal(kx, (N, D)) * jnp.logspace(0, -1, D)
    w = jax.random.normal(kw, (D,))
    y = X @ w + 0.1 * jax.random.normal(kv, (N,))
    Xv = jax.random.normal(kv, (30, D))
    return X, y, Xv, Xv @ w


def ridge_loss(w, args):
    X, y, lam = args
    return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(lam) * w**2)


def val_loss(w, Xv, yv):
    return 0.5 * jnp.mean((Xv @ w - yv) ** 2)


def ridge_hypergradient_closed_form(theta, X, y, Xv, yv):
    """L(θ) = val_loss(w*(θ)), w* = (XᵀX/n + diag e^θ)⁻¹ Xᵀy/n:
    dL/dθ_j = −e^θ_j w*_j v_j with v = (XᵀX/n + diag e^θ)⁻¹ ∇L_val(w*)."""
    H = X.T @ X / N + jnp.diag(jnp.exp(theta))
    w = jnp.linalg.solve(H, X.T @ y / N)
    v = jnp.linalg.solve(H, jax.grad(val_loss)(w, Xv, yv))
    return -jnp.exp(theta) * w * v


def outer(theta, data, adjoint=jaxopt2.ImplicitAdjoint(), solver=None):
    X, y, Xv, yv = data
    sol = jaxopt2.minimize(ridge_loss, jnp.zeros(D), (X, y, theta),
                           solver=solver or jaxopt2.NewtonCG(rtol=1e-12), adjoint=adjoint)
    return val_loss(sol.params, Xv, yv)


THETA = jnp.linspace(-3.0, -1.0, D)


def test_ridge_hypergradient_matches_closed_form_both_modes():
    data = ridge_data()
    ref = ridge_hypergradient_closed_form(THETA, *data)
    g_rev, g_fwd = jax.jit(lambda t: (jax.grad(outer)(t, data),
                                      jax.jacfwd(outer)(t, data)))(THETA)
    np.testing.assert_allclose(g_rev, ref, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(g_fwd, g_rev, rtol=1e-10, atol=1e-15)


def test_vmap_over_hyperparameters_equals_loop():
    data = ridge_data(1)
    thetas = jnp.stack([THETA, THETA + 1.0, THETA - 0.5])
    batched = jax.jit(jax.vmap(jax.grad(lambda t: outer(t, data))))(thetas)
    for i, t in enumerate(thetas):
        np.testing.assert_allclose(batched[i], ridge_hypergradient_closed_form(t, *data),
                                   rtol=1e-9, atol=1e-14)


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
def test_second_derivative_through_a_solve():
    data = ridge_data(2)

    def scalar_outer(s):
        return outer(THETA + s, data)

    hess = jax.jit(jax.hessian(scalar_outer))(0.0)
    g = jax.jit(jax.grad(scalar_outer))
    h = 1e-4
    np.testing.assert_allclose(hess, (g(h) - g(-h)) / (2 * h), rtol=1e-6)


@pytest.mark.parametrize("linear_solver", [lx.LU(), lx.GMRES(rtol=1e-12, atol=1e-12)],
                         ids=["dense-LU", "GMRES"])
def test_selectable_adjoint_solvers(linear_solver):
    data = ridge_data(3)
    adjoint = jaxopt2.ImplicitAdjoint(linear_solver=linear_solver)
    g = jax.jit(jax.grad(lambda t: outer(t, data, adjoint)))(THETA)
    np.testing.assert_allclose(g, ridge_hypergradient_closed_form(THETA, *data), rtol=1e-8)


def test_neumann_series_approximates_and_improves_with_steps():
    data = ridge_data(4)
    ref = ridge_hypergradient_closed_form(THETA, *data)
    errors = []
    for steps in (5, 200):
        adjoint = jaxopt2.ImplicitAdjoint(linear_solver=jaxopt2.Neumann(steps=steps))
        g = jax.jit(jax.grad(lambda t, a=adjoint: outer(t, data, a)))(THETA)
        errors.append(float(jnp.linalg.norm(g - ref) / jnp.linalg.norm(ref)))
    assert errors[1] < 0.1 * errors[0] and errors[1] < 1e-3, errors


@pytest.mark.slow  # 18–26 s of compiling (make test-slow)
def test_unrolled_adjoint_approaches_implicit_when_converged():
    data = ridge_data(5)
    ref = ridge_hypergradient_closed_form(THETA, *data)
    unrolled = jax.jit(jax.grad(lambda t: outer(t, data, jaxopt2.UnrolledAdjoint(),
                                                jaxopt2.LBFGS(rtol=1e-9))))(THETA)
    np.testing.assert_allclose(unrolled, ref, rtol=1e-5, atol=1e-10)
    # Newton with a dense Cholesky: unrolling differentiates the linear algebra too
    unrolled_newton = jax.jit(jax.grad(lambda t: outer(t, data, jaxopt2.UnrolledAdjoint(),
                                                       jaxopt2.Newton())))(THETA)
    np.testing.assert_allclose(unrolled_newton, ref, rtol=1e-7, atol=1e-12)


def test_failed_adjoint_solve_is_reported_per_problem():
    # At a = 0 the root x* = 0 of x² − a is double: ∂ₓF = 0 is singular and the adjoint
    # system has no solution. The derivative there must be NaN (and raise unbatched), while
    # the other problems of a batch are unaffected.
    @implicit.custom_root(lambda x, a: x**2 - a,
                          adjoint=jaxopt2.ImplicitAdjoint(throw=False))
    def sqrt_quiet(x0, a):
        return jnp.sqrt(a)

    grads = jax.jit(jax.vmap(jax.grad(sqrt_quiet, argnums=1), in_axes=(None, 0)))(
        1.0, jnp.array([4.0, 0.0, 9.0]))
    assert np.isnan(grads[1])
    np.testing.assert_allclose(np.asarray(grads)[[0, 2]], [0.25, 1 / 6], rtol=1e-10)

    @implicit.custom_root(lambda x, a: x**2 - a)
    def sqrt_loud(x0, a):
        return jnp.sqrt(a)

    # throw=True raises outside vmap ...
    with pytest.raises(Exception, match="implicit differentiation did not converge"):
        jax.block_until_ready(jax.jit(jax.grad(sqrt_loud, argnums=1))(1.0, 0.0))
    # ... but never under vmap
    grads = jax.jit(jax.vmap(jax.grad(sqrt_loud, argnums=1), in_axes=(None, 0)))(
        1.0, jnp.array([4.0, 0.0]))
    assert np.isnan(grads[1]) and np.isclose(grads[0], 0.25)


@pytest.mark.slow  # 18–26 s of compiling (make test-slow)
def test_inner_failure_reported_through_the_gradient_call():
    data = ridge_data(6)
    X, y, Xv, yv = data

    def outer_with_status(theta, max_steps, throw):
        sol = jaxopt2.minimize(ridge_loss, jnp.zeros(D), (X, y, theta),
                               solver=jaxopt2.GradientDescent(), max_steps=max_steps,
                               throw=throw)
        return val_loss(sol.params, Xv, yv), sol.status

    _, status = jax.grad(outer_with_status, has_aux=True)(THETA, 2, False)
    assert status == RESULTS.max_steps_reached
    with pytest.raises(RuntimeError, match="max_steps_reached"):
        jax.grad(lambda t: outer_with_status(t, 2, True)[0])(THETA)


@pytest.mark.slow  # 18–26 s of compiling (make test-slow)
def test_custom_fixed_point_root_vjp_and_jvp():
    A = jnp.array([[0.5, 0.2], [0.1, 0.3]])
    fixed = lambda y, b: A @ y + b  # y* = (I − A)⁻¹ b

    @implicit.custom_fixed_point(fixed)
    def solve(y0, b):
        # any solver: it is never differentiated
        return jaxopt2.fixed_point(fixed, y0, b, solver=jaxopt2.FixedPointIteration()).params

    b = jnp.array([1.0, 2.0])
    inv = jnp.linalg.inv(jnp.eye(2) - A)
    np.testing.assert_allclose(jax.jacrev(solve, argnums=1)(jnp.zeros(2), b), inv, rtol=1e-9)
    np.testing.assert_allclose(jax.jacfwd(solve, argnums=1)(jnp.zeros(2), b), inv, rtol=1e-9)
    F = lambda y, b: fixed(y, b) - y
    root = inv @ b
    u = jnp.array([1.0, -2.0])
    (vjp_b,) = jaxopt2.root_vjp(F, root, (b,), u)
    np.testing.assert_allclose(vjp_b, inv.T @ u, rtol=1e-9)
    np.testing.assert_allclose(jaxopt2.root_jvp(F, root, (b,), (u,)), inv @ u, rtol=1e-9)


@pytest.mark.slow  # 18–26 s of compiling (make test-slow)
def test_kkt_conditions_equality_constrained_qp():
    # min ½xᵀQx + cᵀx s.t. Ax = b: the KKT system [[Q, Aᵀ], [A, 0]] (x, μ) = (−c, b).
    Q = jnp.diag(jnp.array([2.0, 1.0, 3.0]))
    A = jnp.array([[1.0, 1.0, 1.0]])
    fun = lambda x, c: 0.5 * x @ Q @ x + c @ x
    eq = lambda x, b: A @ x - b
    K = jnp.block([[Q, A.T], [A, jnp.zeros((1, 1))]])

    @implicit.custom_root(implicit.kkt_conditions(fun, eq))
    def qp(z0, c, b):
        z = jnp.linalg.solve(K, jnp.concatenate([-c, b]))
        return z[:3], z[3:]

    c, b = jnp.array([1.0, -1.0, 0.5]), jnp.array([2.0])
    dx_db = jax.jacobian(lambda b: qp((jnp.zeros(3), jnp.zeros(1)), c, b)[0])(b)
    np.testing.assert_allclose(dx_db, jnp.linalg.inv(K)[:3, 3:], rtol=1e-9)
    dx_dc = jax.jacobian(lambda c: qp((jnp.zeros(3), jnp.zeros(1)), c, b)[0])(c)
    np.testing.assert_allclose(dx_dc, -jnp.linalg.inv(K)[:3, :3], rtol=1e-9)


def test_projected_gradient_fixed_point_nonnegative_least_squares():
    # NNLS: min ½‖Mx − y‖² s.t. x ≥ 0; at the solution the active set is fixed, and the free
    # coordinates solve the unconstrained problem restricted to them.
    M = jnp.array([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.2, 1.0], [0.5, 0.0, 0.1]])
    fun = lambda x, y: 0.5 * jnp.sum((M @ x - y) ** 2)
    T = implicit.projected_gradient_map(fun, lambda v, _: jnp.maximum(v, 0.0), stepsize=0.5)

    @implicit.custom_fixed_point(T)
    def nnls(x0, y, proj_args):
        return jaxopt2.fixed_point(lambda x, a: T(x, *a), x0, (y, proj_args),
                                   solver=jaxopt2.FixedPointIteration(),
                                   max_steps=5000).params

    y = jnp.array([1.0, -2.0, 1.5, 0.3])
    x = nnls(jnp.zeros(3), y, None)
    free = np.asarray(x > 1e-8)
    assert free.sum() == 2  # one coordinate is clamped at 0
    Mf = M[:, free]
    dxf_dy = jnp.linalg.pinv(Mf)  # derivative of the free part; the clamped one stays 0
    J = jax.jacobian(lambda y: nnls(jnp.zeros(3), y, None))(y)
    np.testing.assert_allclose(J[free], dxf_dy, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(J[~free], 0.0, atol=1e-9)


def test_bad_optimality_condition_and_options_rejected():
    @implicit.custom_root(lambda x, a: jnp.concatenate([x - a, x]))  # two residuals per unknown
    def bad(x0, a):
        return a

    with pytest.raises(ValueError, match="structure, shapes and dtypes"):
        jax.grad(lambda a: bad(jnp.zeros(2), a).sum())(jnp.ones(2))
    with pytest.raises(ValueError, match="checkpoints"):
        jaxopt2.UnrolledAdjoint(checkpoints=0)
    with pytest.raises(ValueError, match="steps"):
        jaxopt2.Neumann(steps=0)


def test_preconditioned_adjoint_cg():
    data = ridge_data(7)
    X = data[0]
    diag = jnp.sum(X**2, axis=0) / N + jnp.exp(THETA)  # the Hessian's diagonal (Jacobi)
    jacobi = lambda fun, params, args, op: (lambda v: v / diag)
    adjoint = jaxopt2.ImplicitAdjoint(preconditioner=jacobi)
    g = jax.jit(jax.grad(lambda t: outer(t, data, adjoint)))(THETA)
    np.testing.assert_allclose(g, ridge_hypergradient_closed_form(THETA, *data), rtol=1e-9,
                               atol=1e-14)
    # the preconditioner is really used: a useless one (M⁻¹ = 0) makes the solve fail
    broken = jaxopt2.ImplicitAdjoint(preconditioner=lambda *_: (lambda v: 0.0 * v), throw=False)
    g_bad = jax.jit(jax.grad(lambda t: outer(t, data, broken)))(THETA)
    assert np.all(np.isnan(g_bad))


def test_nystrom_preconditioned_adjoint():
    data = ridge_data(8)
    adjoint = jaxopt2.ImplicitAdjoint(
        preconditioner=jaxopt2.sketch.NystromPreconditioner(rank=4))
    g = jax.jit(jax.grad(lambda t: outer(t, data, adjoint)))(THETA)
    np.testing.assert_allclose(g, ridge_hypergradient_closed_form(THETA, *data), rtol=1e-9,
                               atol=1e-14)
