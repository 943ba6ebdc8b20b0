"""JacobiPreconditioner (issue 20): the diagonal against jnp.diag(jax.hessian), NewtonCG and the
implicit adjoint with it (against dense solves), its products counted, and preconditioner="auto"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2.curvature import JacobiPreconditioner

D = 20


def _data(seed=0):
    X = jax.random.normal(jax.random.key(seed), (60, D)) * jnp.logspace(0, 2, D)
    y = X @ jnp.linspace(-1.0, 1.0, D) * 1e-2 + jax.random.normal(jax.random.key(1), (60,))
    return X, y


def _ridge(w, args):
    X, y, lam = args
    return 0.5 * jnp.mean((X @ w["a"] + w["b"] - y) ** 2) + 0.5 * lam * jnp.sum(w["a"] ** 2)


def _ridge_solution(X, y, lam):
    A = jnp.hstack([X, jnp.ones((X.shape[0], 1))])
    H = A.T @ A / X.shape[0] + lam * jnp.diag(jnp.r_[jnp.ones(D), 0.0])
    return jnp.linalg.solve(H, A.T @ y / X.shape[0])


def _hessian_diag(fun, params, args):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return jnp.diag(jax.hessian(lambda v: fun(unravel(v), args))(flat))


def test_diagonal_exact_and_estimated_against_the_hessian():
    X, y = _data()
    args = (X, y, 0.1)
    w = {"a": jnp.linspace(0.0, 1.0, D), "b": jnp.ones(())}
    exact = jax.jit(lambda w, args: JacobiPreconditioner().diagonal(
        jaxopt2.curvature.hessian(_ridge, w, args)))(w, args)  # 21 unknowns ≤ 64: exact
    ref = jax.jit(_hessian_diag, static_argnums=0)(_ridge, w, args)
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(exact)[0], ref, rtol=1e-5)
    assert JacobiPreconditioner().num_products(21) == 21
    # a separable objective has a diagonal Hessian: Hutchinson's estimate is then exact
    sep = lambda v, s: jnp.sum(s * v**4) + jnp.sum(jnp.cosh(v))  # noqa: E731
    s, v = jnp.logspace(0, 3, 40), jnp.linspace(-1.0, 1.0, 40)
    pre = JacobiPreconditioner(num_probes=4)
    assert pre.num_products(40) == 4

    @jax.jit
    def estimate(v, s):
        op = jaxopt2.curvature.hessian(sep, v, s)
        return pre.diagonal(op), pre(None, None, None, op)(jnp.ones(40)), jax.hessian(sep)(v, s)

    est, applied, hess = estimate(v, s)
    np.testing.assert_allclose(est, jnp.diag(hess), rtol=1e-5)
    np.testing.assert_allclose(applied, 1 / jnp.diag(hess), rtol=1e-5)  # M⁻¹r for r = 1


def test_newton_cg_with_jacobi_and_auto_against_the_dense_solution():
    X, y = _data()
    w0 = {"a": jnp.zeros(D), "b": jnp.zeros(())}
    ref = _ridge_solution(X, y, 1e-3)

    def solve(pre, lam):
        return jaxopt2.minimize(_ridge, w0, (X, y, lam),
                                solver=jaxopt2.NewtonCG(rtol=1e-5, preconditioner=pre))

    solve = jax.jit(solve, static_argnums=0)
    plain, jac, auto = (solve(p, 1e-3) for p in (None, JacobiPreconditioner(), "auto"))
    for sol in (plain, jac, auto):
        assert sol.status == jaxopt2.RESULTS.successful
        got = jnp.r_[sol.params["a"], sol.params["b"]]
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
    steps = int(jac.stats["num_steps"])
    # the build's 21 products per step are counted, and CG needs far fewer products than
    # without preconditioning (columns scaled over two decades)
    cg_products = int(jac.stats["num_hvp"]) - 21 * steps
    assert 0 < cg_products < int(plain.stats["num_hvp"]) / 2
    # auto: plain CG's first step is long (> 25 iterations), so it builds the diagonal once
    # and goes on with it
    assert int(auto.stats["num_hvp"]) < int(plain.stats["num_hvp"])


def test_implicit_adjoint_with_jacobi_matches_the_closed_form():
    X, y = _data()
    w0 = {"a": jnp.zeros(D), "b": jnp.zeros(())}
    adjoint = jaxopt2.ImplicitAdjoint(preconditioner=JacobiPreconditioner())

    def loss(lam, adjoint):
        sol = jaxopt2.minimize(_ridge, w0, (X, y, lam), adjoint=adjoint,
                               solver=jaxopt2.NewtonCG(rtol=1e-6))
        return jnp.sum(sol.params["a"] ** 2)

    got = jax.grad(loss)(1e-2, adjoint)
    want = jax.grad(lambda lam: jnp.sum(_ridge_solution(X, y, lam)[:D] ** 2))(1e-2)
    np.testing.assert_allclose(got, want, rtol=2e-3)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="num_probes"):
        JacobiPreconditioner(num_probes=0)
    with pytest.raises(ValueError, match="floor"):
        JacobiPreconditioner(floor=0.0)
    with pytest.raises(ValueError, match="'auto'"):
        jaxopt2.NewtonCG(preconditioner="jacobi")


@pytest.mark.float64
def test_probed_diagonal_exact_where_the_colours_separate_the_couplings():
    import lineax as lx

    from jaxopt2._jacobi import probed_diagonal

    # n ≤ k probes: every colour class holds one unknown, so the diagonal is exact
    A = jax.random.normal(jax.random.key(3), (12, 12))
    A = A @ A.T
    op = lx.MatrixLinearOperator(A, lx.symmetric_tag)
    np.testing.assert_allclose(probed_diagonal(op, 16), jnp.diag(A), rtol=1e-12)
    # a pentadiagonal matrix couples unknowns at most 2 apart: 5 colours separate them, on a
    # pytree of two leaves numbered across the leaves
    n = 30
    B = (jnp.diag(jnp.logspace(0, 3, n)) + 0.3 * jnp.diag(jnp.ones(n - 1), 1)
         + 0.3 * jnp.diag(jnp.ones(n - 1), -1) - 0.1 * jnp.diag(jnp.ones(n - 2), 2)
         - 0.1 * jnp.diag(jnp.ones(n - 2), -2))
    split = lambda v: {"a": v[:10].reshape(2, 5), "b": v[10:]}  # noqa: E731
    join = lambda t: jnp.r_[t["a"].ravel(), t["b"]]  # noqa: E731
    tree_op = lx.FunctionLinearOperator(lambda t: split(B @ join(t)),
                                        jax.eval_shape(lambda: split(jnp.zeros(n))))
    got = jax.jit(lambda: join(probed_diagonal(tree_op, 5)))()
    np.testing.assert_allclose(got, jnp.diag(B), rtol=1e-12)
    # 3 colours put i and i + 3 together, which B does not couple: exact too; 2 colours put
    # i and i + 2 together, which it does
    np.testing.assert_allclose(jax.jit(lambda: join(probed_diagonal(tree_op, 3)))(),
                               jnp.diag(B), rtol=1e-12)
    assert not np.allclose(jax.jit(lambda: join(probed_diagonal(tree_op, 2)))(), jnp.diag(B),
                           rtol=1e-6)


def _auto_mode(sol):
    return int(sol.state.auto.mode)


def test_auto_keeps_the_diagonal_where_it_pays_and_drops_it_where_it_does_not():
    # badly scaled variables: Jacobi removes the ill-conditioning and is kept
    n = 200
    s = jnp.logspace(0, 3, n)
    scaled = lambda w, a: 0.5 * jnp.sum(s * w**2) + 0.01 * jnp.sum(w**4) - jnp.sum(w)  # noqa
    # a rotated ill-conditioned quadratic: a near-constant diagonal, so Jacobi cannot help
    Q = jnp.linalg.qr(jax.random.normal(jax.random.key(4), (n, n)))[0]
    H = (Q * jnp.logspace(0, 3, n)) @ Q.T
    rotated = lambda w, a: 0.5 * w @ H @ w - jnp.sum(w)  # noqa: E731

    solve = jax.jit(lambda fun, pre: jaxopt2.minimize(
        fun, jnp.zeros(n), solver=jaxopt2.NewtonCG(preconditioner=pre)), static_argnums=(0, 1))
    for fun, want in ((scaled, (1, 3)), (rotated, (2, 4))):
        plain, auto = solve(fun, None), solve(fun, "auto")
        assert auto.status == plain.status == jaxopt2.RESULTS.successful
        # both within float32's tolerance of each other (rtol ~ √eps of the solution)
        scale = float(jnp.max(jnp.abs(plain.params)))
        np.testing.assert_allclose(auto.params, plain.params, atol=2e-3 * scale)
        assert _auto_mode(auto) in want  # 1, 3: Jacobi in use; 2, 4: dropped for plain CG
    # where kept, CG's products (probes counted) fall well below plain CG's
    assert int(solve(scaled, "auto").stats["num_hvp"]) < int(
        solve(scaled, None).stats["num_hvp"]) / 2
    # where dropped, the detour costs at most the probes and one step's CG
    auto, plain = solve(rotated, "auto"), solve(rotated, None)
    assert int(auto.stats["num_hvp"]) < 1.5 * int(plain.stats["num_hvp"])
    # the default is "auto"
    assert jaxopt2.NewtonCG().preconditioner == "auto"


@pytest.mark.float64
def test_default_matrix_free_adjoint_is_jacobi_preconditioned_and_accurate():
    # 1,200 unknowns (> the dense adjoint's 1,000): CG with the Jacobi diagonal, on a
    # quadratic whose Hessian spans four decades along the coordinates
    n = 1200
    s = jnp.logspace(0, 4, n)
    c = jnp.linspace(-1.0, 1.0, n)

    def fun(w, lam):
        return 0.5 * jnp.sum(s * w**2) + 0.5 * lam * jnp.sum(w) ** 2 - c @ w

    def loss(lam):
        sol = jaxopt2.minimize(fun, jnp.zeros(n), lam, solver=jaxopt2.NewtonCG(rtol=1e-12))
        return jnp.sum(sol.params ** 2)

    def closed(lam):  # (D + lam 11ᵀ)⁻¹ c by Sherman–Morrison
        dc, d1 = c / s, 1 / s
        return jnp.sum((dc - d1 * lam * jnp.sum(dc) / (1 + lam * jnp.sum(d1))) ** 2)

    got = jax.jit(jax.grad(loss))(0.3)
    want = jax.grad(closed)(0.3)
    np.testing.assert_allclose(got, want, rtol=1e-9)
