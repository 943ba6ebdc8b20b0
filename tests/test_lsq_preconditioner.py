"""Nyström preconditioning of the matrix-free (CGLS) inner solves of GaussNewton and
LevenbergMarquardt: the same solutions as a dense solve with far fewer inner iterations on an
ill-conditioned problem, honest counts, and no silent damage from a broken preconditioner."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2 import RESULTS
from jaxopt2._front import raise_if_failed
from jaxopt2.sketch import NystromPreconditioner

pytestmark = pytest.mark.float64  # written for float64 tolerances

M, N, RANK = 2000, 300, 60


def _phi(z, c):
    return z + c * z**3


@functools.cache
def _problem(c):
    """Data (A, b, c) for the residual φ_c(A y) − b below. A = U diag(σ) Vᵀ (2000 × 300) has a
    decaying spectrum: 10 large singular values (1e2..1e1), 40 falling from 1 to 1e-3, and 250
    clustered in [1e-4, 1e-3]. κ(AᵀA) = 1e12, but past the top 50 directions only 1e2: what a
    rank-60 Nyström sketch can fix. b = φ_c(A x*) + noise (a nonzero residual)."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((M, N)))
    v, _ = np.linalg.qr(rng.standard_normal((N, N)))
    s = np.concatenate([np.logspace(2, 1, 10), np.logspace(0, -3, 40),
                        np.logspace(-3, -4, N - 50)])
    a = (u * s) @ v.T
    b = _phi(a @ rng.standard_normal(N), c) + 1e-2 * rng.standard_normal(M)
    return jnp.asarray(a), jnp.asarray(b), jnp.asarray(c)


@functools.cache
def _reference(c):
    """lstsq for the linear problem, dense Levenberg-Marquardt (the SVD of the formed
    Jacobian) for the nonlinear one."""
    data = _problem(c)
    if c == 0.0:
        return jnp.linalg.lstsq(data[0], data[1])[0]
    solver = jaxopt2.LevenbergMarquardt(linear_solver="dense", gtol=1e-10)
    return jaxopt2.least_squares(residual, jnp.zeros(N), data, solver=solver).params


def residual(y, data):
    """φ_c(A y) − b with φ_c(z) = z + c z³: linear least squares for c = 0, mildly nonlinear
    for small c (J = diag(1 + 3c z²) A, about as ill-conditioned). One function for both, so
    each solver compiles once."""
    a, b, c = data
    return _phi(a @ y, c) - b


def _solvers(name):
    """(plain, Nyström-preconditioned) matrix-free solvers with tolerances that ask for the
    solution itself: the default gtol = √eps stops on the gradient cosine, and LM's default
    ftol on the small relative decrease of a damped step, before the weakest directions
    (σ = 1e-4) have converged."""
    if name == "gn":
        cls, kw = jaxopt2.GaussNewton, dict(gtol=1e-10)
    else:
        cls, kw = jaxopt2.LevenbergMarquardt, dict(gtol=1e-10, ftol=1e-12)
    plain = cls(linear_solver="cg", **kw)
    pre = cls(linear_solver="cg", preconditioner=NystromPreconditioner(rank=RANK), **kw)
    return plain, pre


def _runner(solver, max_steps=100):
    return jax.jit(lambda data: jaxopt2.least_squares(
        residual, jnp.zeros(N), data, solver=solver, max_steps=max_steps, throw=False))


def _plain_inner(sol):
    """CGLS iterations of an unpreconditioned run: each step adds one jvp of its own (‖A g‖)."""
    return int(sol.stats["num_jvp"]) - int(sol.stats["num_steps"])


def _check_counts(sol, name):
    """Every PCG iteration is one jvp and one vjp, and so is each of the `rank` sketch
    products; GN sketches at every step, LM at every step but a final stationary one."""
    steps, pcg = int(sol.stats["num_steps"]), int(sol.state.pcg_iters)
    sketch = int(sol.stats["num_jvp"]) - steps - pcg
    assert sketch % RANK == 0
    assert sketch // RANK in ((steps,) if name == "gn" else (steps - 1, steps))
    return sketch


@pytest.mark.slow  # 11–16 s each (make test-slow)
@pytest.mark.parametrize("name", ["gn", "lm"])
def test_nystrom_matches_dense_with_far_fewer_iterations(name):
    plain_solver, pre_solver = _solvers(name)
    plain_run, pre_run = _runner(plain_solver), _runner(pre_solver)
    for c in (0.0, 0.01):  # linear, then mildly nonlinear: the same compiled programs
        data, ref = _problem(c), _reference(c)
        pre, plain = pre_run(data), plain_run(data)
        assert pre.status == RESULTS.successful
        err = float(jnp.linalg.norm(pre.params - ref) / jnp.linalg.norm(ref))
        sketch, iters = _check_counts(pre, name), int(pre.state.pcg_iters)
        plain_iters = _plain_inner(plain)
        print(f"{name} c={c}: PCG {iters} iterations + {sketch} sketch products in "
              f"{int(pre.stats['num_steps'])} steps, error {err:.1e}; plain CGLS {plain_iters} "
              f"iterations in {int(plain.stats['num_steps'])} steps")
        # The solution is ill-conditioned (σ down to 1e-4), the sum of squares is not.
        cost = float(jnp.sum(residual(pre.params, data) ** 2))
        assert cost == pytest.approx(float(jnp.sum(residual(ref, data) ** 2)), rel=1e-9)
        # With σ_min = 1e-4, MINPACK's relative ftol leaves ~1e-5 in the parameters; how much
        # exactly moves with the rounding of the data (BLAS threads), hence the margin.
        assert err <= 2e-4
        # Markedly fewer inner iterations (the plain runs even stop short of the solution,
        # through ftol on their stagnating truncated steps).
        assert 3 * iters <= plain_iters


def _small(y, args):
    """A tiny linear problem with a preconditioner scale in `args`."""
    a, b, _ = args
    return a @ y - b


def _scaled_identity(fun, params, args, op):
    """M⁻¹ = m·I with m from `args`: 1 is harmless, NaN returns non-finite values, −1 is not
    positive definite. The protocol passes `args`, so all three share one compilation."""
    m = args[2]
    return lambda v: jax.tree_util.tree_map(lambda x: m * x, v)


@pytest.mark.parametrize("cls", [jaxopt2.GaussNewton, jaxopt2.LevenbergMarquardt],
                         ids=["gn", "lm"])
def test_broken_preconditioner_is_reported_not_used(cls):
    a = jax.random.normal(jax.random.PRNGKey(0), (20, 5))
    b = jax.random.normal(jax.random.PRNGKey(1), (20,))
    y0 = jnp.ones(5)
    solver = cls(linear_solver="cg", preconditioner=_scaled_identity)
    run = jax.jit(lambda m: jaxopt2.least_squares(_small, y0, (a, b, m), solver=solver,
                                                  throw=False))
    good = run(1.0)
    assert good.status == RESULTS.successful
    np.testing.assert_allclose(good.params, jnp.linalg.lstsq(a, b)[0], rtol=1e-6)
    for m in (jnp.nan, -1.0):
        sol = run(m)
        # stopped at once with the inner solve's failure, at the (finite) starting point
        assert sol.status == RESULTS.linear_solve_failed
        assert int(sol.stats["num_steps"]) == 1
        np.testing.assert_array_equal(sol.params, y0)
        # what throw=True makes of it (the wiring itself is tested in test_checks.py)
        with pytest.raises(RuntimeError, match="inner linear solve failed"):
            raise_if_failed(sol.params, sol.status)


def test_dense_path_validation():
    ny = NystromPreconditioner(rank=2)
    with pytest.raises(ValueError, match="matrix-free"):
        jaxopt2.GaussNewton(linear_solver="dense", preconditioner=ny)
    with pytest.raises(ValueError, match="matrix-free"):
        jaxopt2.LevenbergMarquardt(linear_solver="dense", preconditioner=ny)
    with pytest.raises(ValueError, match="callable"):
        jaxopt2.GaussNewton(linear_solver="cg", preconditioner=3)
    # "auto" on a small problem takes the dense path, which has no iterative solve: unused
    a = jax.random.normal(jax.random.PRNGKey(0), (20, 5))
    b = jax.random.normal(jax.random.PRNGKey(1), (20,))
    sol = jaxopt2.least_squares(_small, jnp.zeros(5), (a, b, jnp.asarray(1.0)),
                                solver=jaxopt2.GaussNewton(preconditioner=ny))
    assert sol.status == RESULTS.successful and int(sol.stats["num_jac"]) >= 1
    assert sol.state.pcg_iters is None
