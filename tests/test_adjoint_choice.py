"""The default adjoint solve of a small symmetric positive semi-definite system (minimisation,
least squares, up to 1,000 unknowns): conjugate gradients within a budget of n/6 products
first, and the dense solve (n batched products and an eigendecomposition) only where CG does
not reach the tolerance. Checked against dense references, and by counting how often the dense
solve runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
import jaxopt2._adjoint as adjoint_module

pytestmark = pytest.mark.float64

N = 240


def _system(cond, seed):
    """A symmetric positive definite matrix with eigenvalues log-spaced over `cond`, rotated
    by a random orthogonal matrix (so the Jacobi diagonal does not undo the spread)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    A = (Q * np.logspace(0, np.log10(cond), N)) @ Q.T
    return jnp.asarray(0.5 * (A + A.T)), jnp.asarray(rng.standard_normal(N))


def _fun(w, args):
    A, c, lam = args
    return 0.5 * w @ (A @ w) + 0.5 * lam * jnp.sum(w**2) - c @ w


# the adjoint without the forward solver's curvature: plain CG, then the matrix
PLAIN = jaxopt2.ImplicitAdjoint(solver_preconditioner=lambda out: None)


def _loss(lam, A, c, solver=None, adjoint=PLAIN):
    solver = jaxopt2.Newton() if solver is None else solver
    sol = jaxopt2.minimize(_fun, jnp.zeros(N), (A, c, lam), solver=solver, adjoint=adjoint)
    return jnp.sum(sol.params**2)


def _closed(lam, A, c):
    return jnp.sum(jnp.linalg.solve(A + lam * jnp.eye(N), c) ** 2)


@pytest.fixture
def dense_runs(monkeypatch):
    """How many times the dense solve runs (a host callback in it, counted per call)."""
    calls = []
    original = adjoint_module._dense_solve

    def counted(matvec, b, *rest, **kw):
        jax.debug.callback(lambda: calls.append(1))
        return original(matvec, b, *rest, **kw)

    monkeypatch.setattr(adjoint_module, "_dense_solve", counted)
    return calls


def test_well_conditioned_system_is_solved_by_cg_without_forming_the_matrix(dense_runs):
    A, c = _system(3.0, 0)
    got = jax.jit(jax.grad(_loss))(0.1, A, c)
    want = jax.grad(_closed)(0.1, A, c)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert not dense_runs  # CG met the tolerance within its budget


def test_ill_conditioned_system_falls_back_to_the_dense_solve(dense_runs):
    # condition 1e4 in a rotated basis: CG cannot solve it within its budget (40 products)
    A, c = _system(1e4, 1)
    got = jax.jit(jax.grad(_loss))(0.1, A, c)
    want = jax.grad(_closed)(0.1, A, c)
    np.testing.assert_allclose(got, want, rtol=1e-8)
    assert dense_runs


def test_under_vmap_the_dense_solve_runs_only_for_a_batch_that_needs_it(dense_runs):
    (A0, c0), (A1, c1), (A2, c2) = _system(3.0, 0), _system(2.0, 2), _system(1e4, 1)
    lam = jnp.array([0.1, 0.2])
    grad = jax.jit(jax.vmap(jax.grad(_loss)))
    # both members well-conditioned: CG for both, no dense solve
    got = grad(lam, jnp.stack([A0, A1]), jnp.stack([c0, c1]))
    want = jnp.stack([jax.grad(_closed)(0.1, A0, c0), jax.grad(_closed)(0.2, A1, c1)])
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert not dense_runs
    # one member needs the dense solve: both still right
    got = grad(lam, jnp.stack([A0, A2]), jnp.stack([c0, c2]))
    want = jnp.stack([jax.grad(_closed)(0.1, A0, c0), jax.grad(_closed)(0.2, A2, c2)])
    np.testing.assert_allclose(got, want, rtol=1e-8)
    assert dense_runs


@pytest.mark.parametrize("solver", [jaxopt2.Newton(), jaxopt2.LBFGS(), jaxopt2.BFGS()],
                         ids=["Newton", "LBFGS", "BFGS"])
def test_newtons_last_factor_preconditions_the_adjoint(dense_runs, solver):
    # condition 1e4 in a rotated basis, which plain CG cannot solve within its budget (the
    # test above): Newton's last Cholesky factor is the exact Hessian here, so with it as
    # the preconditioner CG finishes at once. LBFGS and BFGS keep no curvature for the
    # adjoint: both of LBFGS's solves (the refining step and the adjoint) fall back to the
    # matrix, and the derivative is right either way
    A, c = _system(1e4, 1)
    got = jax.jit(jax.grad(lambda lam: _loss(lam, A, c, solver, jaxopt2.ImplicitAdjoint())))(0.1)
    want = jax.grad(_closed)(0.1, A, c)
    np.testing.assert_allclose(got, want, rtol=1e-8)
    if isinstance(solver, jaxopt2.Newton):
        assert not dense_runs
    else:
        assert dense_runs


def test_newton_started_at_the_solution_has_no_factor_and_still_differentiates(dense_runs):
    # zero steps: the kept factor is still the zero of `init`, so its product is not finite;
    # CG gives up and the matrix is formed (on a system plain CG would solve at once)
    A, c = _system(3.0, 0)
    lam = 0.1
    x_star = jnp.linalg.solve(A + lam * jnp.eye(N), c)

    def loss(lam):
        sol = jaxopt2.minimize(_fun, x_star, (A, c, lam), solver=jaxopt2.Newton(atol=1e-6),
                               adjoint=jaxopt2.ImplicitAdjoint())
        return jnp.sum(sol.params**2), sol.stats["num_steps"]

    (_, steps), got = jax.jit(jax.value_and_grad(loss, has_aux=True))(lam)
    assert int(steps) == 0
    np.testing.assert_allclose(got, jax.grad(_closed)(lam, A, c), rtol=1e-8)
    assert dense_runs


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_vmap_in_both_dtypes_without_the_matrix(dense_runs, dtype):
    (A0, c0), (A1, c1) = _system(3.0, 0), _system(2.0, 2)
    As, cs = jnp.stack([A0, A1]).astype(dtype), jnp.stack([c0, c1]).astype(dtype)

    def loss(lam, A, c):
        sol = jaxopt2.minimize(_fun, jnp.zeros(N, dtype), (A, c, lam),
                               solver=jaxopt2.NewtonCG(), adjoint=PLAIN)
        return jnp.sum(sol.params**2)

    got = jax.jit(jax.vmap(jax.grad(loss)))(jnp.array([0.1, 0.2], dtype), As, cs)
    assert got.dtype == dtype
    want = jnp.stack([jax.grad(_closed)(0.1, A0, c0), jax.grad(_closed)(0.2, A1, c1)])
    np.testing.assert_allclose(got, want, rtol=1e-9 if dtype == jnp.float64 else 1e-4)
    assert not dense_runs


def test_forward_mode_and_float32():
    A, c = _system(3.0, 3)
    t = jax.jvp(lambda lam: _loss(lam, A, c), (0.1,), (1.0,))[1]
    np.testing.assert_allclose(t, jax.grad(_closed)(0.1, A, c), rtol=1e-9)
    A32, c32 = A.astype(jnp.float32), c.astype(jnp.float32)

    def loss32(lam):
        sol = jaxopt2.minimize(_fun, jnp.zeros(N, jnp.float32), (A32, c32, lam),
                               solver=jaxopt2.Newton())
        return jnp.sum(sol.params**2)

    got = jax.jit(jax.grad(loss32))(jnp.float32(0.1))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, jax.grad(_closed)(0.1, A, c), rtol=1e-3)


def test_singular_consistent_system_still_gets_the_minimum_norm_derivative():
    # f depends on w only through Pw (P a projection of rank N/2): the Hessian is singular,
    # the optimality condition consistent, and the derivative of the minimum-norm solution is
    # that of the problem restricted to range(P)
    rng = np.random.default_rng(4)
    U, _ = np.linalg.qr(rng.standard_normal((N, N // 2)))
    U = jnp.asarray(U)
    c = U @ jnp.asarray(rng.standard_normal(N // 2))

    def fun(w, lam):
        z = U.T @ w
        return 0.5 * (1.0 + lam) * z @ z - (U.T @ c) @ z

    def loss(lam):
        sol = jaxopt2.minimize(fun, jnp.zeros(N), lam, solver=jaxopt2.Newton(rtol=1e-12))
        return jnp.sum(sol.params**2)

    # w* = c / (1 + lam), in range(U): |w*|² = |c|²/(1 + lam)²
    got = jax.grad(loss)(0.5)
    np.testing.assert_allclose(got, -2 * (c @ c) / 1.5**3, rtol=1e-9)
