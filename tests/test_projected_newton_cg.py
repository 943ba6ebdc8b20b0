"""ProjectedNewtonCG: the ε-active set, whole solves against scipy's L-BFGS-B and NNLS, and
where second order pays: an ill-conditioned NNLS that L-BFGS-B needs hundreds of steps for.
The front-door contract (jit, vmap, pytrees, dtypes, implicit derivatives) is tested for both
bound-constrained solvers in tests/test_lbfgsb.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2._solver.lbfgsb import LBFGSB
from jaxopt2._solver.projected_newton_cg import ProjectedNewtonCG, active_set
from tests.test_lbfgsb import (
    breast_cancer_problem,
    drive,
    nnls_loss,
    nnls_problem,
    projected_gradient,
)


def test_active_set_is_near_a_bound_with_the_gradient_pointing_out():
    x = jnp.array([0.0, 0.0, 0.05, 1.0, 1.0, 0.5])
    g = jnp.array([1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    got = active_set(x, g, jnp.zeros(6), jnp.ones(6), 0.1)
    np.testing.assert_array_equal(got, [True, False, True, True, False, False])
    # with ε = 0 only exactly active bounds count
    got0 = active_set(x, g, jnp.zeros(6), jnp.ones(6), 0.0)
    np.testing.assert_array_equal(got0, [True, False, False, True, False, False])


@pytest.mark.float64
def test_logistic_regression_matches_scipy():
    loss, args, lo, hi, x_ref, _ = breast_cancer_problem()
    it, steps, ok, pg = jax.jit(lambda: drive(ProjectedNewtonCG(), loss, jnp.zeros(30), args,
                                              jnp.asarray(lo), jnp.asarray(hi), 100, 1e-12))()
    assert ok and pg <= 1e-12, (steps, pg)
    active = (x_ref == lo) | (x_ref == hi)
    np.testing.assert_array_equal(np.asarray(it.params)[active], x_ref[active])
    # scipy's own answer is the less accurate one here (its pg ≈ 1e-10, κ ≈ 1e4)
    np.testing.assert_allclose(it.params, x_ref, atol=2e-6)
    assert steps <= 20  # quadratic convergence once the active set is found


@pytest.mark.float64
def test_nnls_matches_scipy():
    a, b, x_ref = nnls_problem()
    it, _, ok, pg = jax.jit(lambda: drive(ProjectedNewtonCG(), nnls_loss, jnp.ones(20),
                                          (jnp.asarray(a), jnp.asarray(b)), jnp.zeros(20),
                                          jnp.full(20, jnp.inf), 200, 1e-12))()
    assert ok and pg <= 1e-12
    np.testing.assert_allclose(it.params, x_ref, atol=1e-10)


@pytest.mark.float64
def test_ill_conditioned_nnls_newton_beats_lbfgsb():
    # singular values from 1 to 1e-3 (κ(AᵀA) = 1e6): L-BFGS-B's 10 pairs learn the spectrum
    # slowly, projected Newton solves the free block exactly once the active set settles.
    a, b, x_ref = nnls_problem(seed=1, m=200, n=50, decay=3.0)
    data = (jnp.asarray(a), jnp.asarray(b))
    lo, hi = jnp.zeros(50), jnp.full(50, jnp.inf)

    def run(solver):
        return jax.jit(lambda: drive(solver, nnls_loss, jnp.ones(50), data, lo, hi, 3000,
                                     1e-10))()

    newton, newton_steps, ok_n, _ = run(ProjectedNewtonCG())
    lbfgsb, lbfgsb_steps, ok_l, _ = run(LBFGSB())
    assert ok_n and ok_l
    # pg ≤ 1e-10 with λ_min(AᵀA) ≈ 1e-6 on the free block: x within about 1e-4 in theory
    np.testing.assert_allclose(newton.params, x_ref, atol=1e-7)
    np.testing.assert_allclose(lbfgsb.params, x_ref, atol=1e-5)
    assert 5 * newton_steps < lbfgsb_steps, (newton_steps, lbfgsb_steps)


def test_negative_curvature_still_descends_to_a_bound():
    # f = −½‖x‖² + small linear term in [−1, 2]²: indefinite everywhere, the minimizer is the
    # corner (2, 2); CG stops on negative curvature and the projected search reaches it.
    fun = lambda x, _: -0.5 * jnp.sum(x**2) - 0.01 * jnp.sum(x)  # noqa: E731
    lo, hi = -jnp.ones(2), 2 * jnp.ones(2)
    it, _, ok, pg = jax.jit(lambda: drive(ProjectedNewtonCG(), fun, jnp.array([0.1, 0.3]),
                                          None, lo, hi, 50, 0.0))()
    np.testing.assert_array_equal(it.params, [2.0, 2.0])
    assert pg == 0 and jnp.all(projected_gradient(it.params, it.grad, lo, hi) == 0)


@pytest.mark.float64
def test_singular_hessian_with_gradient_outside_its_range_falls_back_to_a_gradient_step():
    """HS 9's penalty subproblem from x = 0: the Hessian there is the rank-one penalty
    ρ·aaᵀ (a = (4, −3)) and the gradient (π/12, 0) is not in its range, so CG returns a huge
    step and every backtrack of it fails (was line_search_failed at step 1). The projected
    gradient step taken instead leads to the minimizer LBFGSB finds, with the same value."""
    rho = 10.0

    def f(x, _):
        return (jnp.sin(jnp.pi * x[0] / 12) * jnp.cos(jnp.pi * x[1] / 16)
                + 0.5 * rho * (4 * x[0] - 3 * x[1]) ** 2)

    x0, bounds = jnp.zeros(2), (-10.0, 10.0)
    hess = jax.hessian(f)(x0, None)
    assert np.linalg.matrix_rank(np.asarray(hess)) == 1  # the premise: singular at x0
    sol = jaxopt2.minimize(f, x0, None, solver=ProjectedNewtonCG(), bounds=bounds,
                           throw=False)
    ref = jaxopt2.minimize(f, x0, None, solver=LBFGSB(), bounds=bounds)
    assert jaxopt2.status_name(sol.status) == "successful"
    np.testing.assert_allclose(sol.value, ref.value, rtol=1e-10)
    np.testing.assert_allclose(sol.params, ref.params, atol=1e-5)
