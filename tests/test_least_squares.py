"""LevenbergMarquardt and GaussNewton on Moré-Garbow-Hillstrom problems, curve fits against
scipy's MINPACK wrapper, and the documented behaviours (rank-deficient starts, large
residuals, dense vs matrix-free, geodesic acceleration, quadratic convergence of GN)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxopt2
from benchmarks.mgh import get
from jaxopt2 import RESULTS

pytestmark = pytest.mark.float64  # written for float64 tolerances

LM = jaxopt2.LevenbergMarquardt()
LM_CG = jaxopt2.LevenbergMarquardt(linear_solver="cg")
GN = jaxopt2.GaussNewton()

# (MGH number, sum of squares LM must reach from the standard start)
MGH = [(1, 0.0), (2, 48.98425367924), (4, 0.0), (5, 0.0), (7, 0.0), (12, 0.0), (13, 0.0)]


def _solve(solver, problem, max_steps=500):
    run = jax.jit(lambda x0: jaxopt2.least_squares(problem.residual, x0, None, solver=solver,
                                                   max_steps=max_steps, throw=False))
    return run(jnp.asarray(problem.x0))


def _scipy_lm(problem):
    jac = jax.jit(jax.jacfwd(lambda x: problem.residual(x, None)))
    fun = jax.jit(lambda x: problem.residual(x, None))
    return scipy.optimize.least_squares(lambda x: np.asarray(fun(x)), problem.x0,
                                        jac=lambda x: np.asarray(jac(x)), method="lm")


@pytest.mark.parametrize("number,target", MGH, ids=[str(n) for n, _ in MGH])
def test_lm_mgh(number, target):
    p = get(number)
    sol = _solve(LM, p)
    f = float(jnp.sum(sol.value**2))
    assert sol.status == RESULTS.successful
    if target == 0.0:
        assert f <= 1e-20
    else:
        assert f == pytest.approx(target, rel=1e-8)
    ref = _scipy_lm(p)
    njev, steps = int(sol.stats["num_jac"]), int(sol.stats["num_steps"])
    print(f"MGH {number} {p.name}: steps={steps} num_jac={njev} num_fun={int(sol.stats['num_fun'])}"
          f" | scipy lm nfev={ref.nfev} njev={ref.njev}")
    # MINPACK's algorithm: the Jacobian count should be comparable to scipy's lm.
    assert njev <= 2 * ref.njev + 2


@pytest.mark.parametrize("number", [1, 5, 7, 12])
def test_gauss_newton_zero_residual(number):
    """Zero-residual problems with J of full rank at the solution: GN converges (quadratic
    locally) in few steps, to LM's solution."""
    p = get(number)
    sol = _solve(GN, p, max_steps=50)
    assert sol.status == RESULTS.successful
    assert float(jnp.sum(sol.value**2)) <= 1e-20
    assert int(sol.stats["num_steps"]) <= 12
    lm = _solve(LM, p)
    np.testing.assert_allclose(sol.params, lm.params, rtol=1e-7, atol=1e-9)


def test_gauss_newton_quadratic_rate():
    """The last steps of GN on a zero-residual problem square the residual."""
    costs = []

    def square(y, _):
        return jnp.array([y[0] ** 2 + y[1] ** 2 - 4.0, jnp.exp(y[0]) + y[1] - 1.0])

    sol = jaxopt2.least_squares(square, jnp.array([1.0, -1.0]), None, solver=GN,
                                callback=lambda k, y, c: costs.append(float(c)))
    assert sol.status == RESULTS.successful
    r = np.sqrt(2 * np.array(costs))
    r = r[r > 1e-13]
    # ‖r_{k+1}‖ ≤ C‖r_k‖² over the last steps before the rounding floor
    assert len(r) >= 3
    ratios = r[1:] / r[:-1] ** 2
    assert np.all(ratios[-2:] < 10.0), ratios
    assert r[-1] / r[-2] < 1e-3


def _decay(p, args):
    t, y = args
    return {"main": p["amplitude"] * jnp.exp(-p["rate"] * t) + p["offset"] - y,
            "prior": jnp.atleast_1d(0.1 * (p["rate"] - 1.0))}


def _decay_data():
    t = jnp.linspace(0.0, 4.0, 40)
    noise = 0.05 * jnp.sin(7.0 * t) + 0.03 * jnp.cos(13.0 * t)
    return t, 2.5 * jnp.exp(-1.7 * t) + 0.3 + noise


def _decay_reference(args):
    t, y = map(np.asarray, args)

    def res(x):
        return np.concatenate([x[0] * np.exp(-x[1] * t) + x[2] - y, [0.1 * (x[1] - 1.0)]])

    return scipy.optimize.least_squares(res, [1.0, 1.0, 0.0], method="lm", xtol=1e-15,
                                        ftol=1e-15, gtol=1e-15).x


P0 = {"amplitude": jnp.array(1.0), "rate": jnp.array(1.0), "offset": jnp.array(0.0)}


@pytest.mark.parametrize("solver", [LM, LM_CG, GN, jaxopt2.GaussNewton(linear_solver="cg")],
                         ids=["lm-dense", "lm-cg", "gn-dense", "gn-cg"])
def test_curve_fit_pytree_matches_scipy(solver):
    """A nonzero-residual exponential fit with dict parameters and dict residuals: dense and
    matrix-free LM, GN, all match MINPACK to tight tolerance."""
    args = _decay_data()
    ref = _decay_reference(args)
    sol = jaxopt2.least_squares(_decay, P0, args, solver=solver)
    assert sol.status == RESULTS.successful
    got = np.array([sol.params["amplitude"], sol.params["rate"], sol.params["offset"]])
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert set(sol.value) == {"main", "prior"}
    if solver.linear_solver == "cg":
        assert int(sol.stats["num_jac"]) == 0 and int(sol.stats["num_jvp"]) > 0


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
def test_dense_and_cg_agree_moderate():
    """A 120 × 12 problem (each residual a smooth function of three parameters)."""
    n, m = 12, 120
    key = jax.random.PRNGKey(1)
    idx = jax.random.randint(key, (m, 3), 0, n)
    truth = jnp.linspace(0.5, 1.5, n)
    c = jnp.sin(truth[idx[:, 0]]) * truth[idx[:, 1]] + truth[idx[:, 2]] ** 2
    c = c + 0.01 * jax.random.normal(jax.random.PRNGKey(2), (m,))

    def residual(y, c):
        return jnp.sin(y[idx[:, 0]]) * y[idx[:, 1]] + y[idx[:, 2]] ** 2 - c

    y0 = jnp.ones(n)
    dense = jaxopt2.least_squares(residual, y0, c, solver=LM)
    free = jaxopt2.least_squares(residual, y0, c,
                                 solver=jaxopt2.LevenbergMarquardt(linear_solver="cg",
                                                                   ftol=1e-12, xtol=1e-12))
    assert dense.status == RESULTS.successful and free.status == RESULTS.successful
    np.testing.assert_allclose(free.params, dense.params, rtol=1e-6, atol=1e-8)
    assert int(dense.stats["num_jac"]) >= 1 and int(free.stats["num_jac"]) == 0


def _rank_deficient(y, _):
    return jnp.array([y[0] - 1.0, y[1] - 2.0, y[0] * y[2] - 2.0])


@pytest.mark.parametrize("solver", [LM, GN, LM_CG], ids=["lm", "gn", "lm-cg"])
def test_rank_deficient_start(solver):
    """At y₀ = 0 the Jacobian has rank 2 < 3 (J e₃ = 0: y₂ has no effect there): not a
    failure; the minimum-norm / damped step moves y₀, after which y₂ is determined, and the
    zero-residual solution (1, 2, 2) is reached."""
    y0 = jnp.zeros(3)
    jac = jax.jacfwd(lambda y: _rank_deficient(y, None))(y0)
    assert np.linalg.matrix_rank(np.asarray(jac)) == 2
    sol = jaxopt2.least_squares(_rank_deficient, y0, None, solver=solver)
    assert sol.status == RESULTS.successful
    assert float(jnp.max(jnp.abs(sol.value))) <= 1e-10
    np.testing.assert_allclose(sol.params, [1.0, 2.0, 2.0], rtol=1e-9)


def test_large_residual_stops_successfully():
    """Freudenstein-Roth from (15, −2) is at its local minimum (f = 48.98…, r ≠ 0) region:
    matrix-free LM stops there with success; so does the Jennrich-Sampson optimum (124.36)."""
    fr = get(2)
    sol = jaxopt2.least_squares(fr.residual, jnp.array([15.0, -2.0]), None, solver=LM_CG)
    assert sol.status == RESULTS.successful
    assert float(jnp.sum(sol.value**2)) == pytest.approx(48.98425367924, rel=1e-8)
    js = get(6)
    sol = jaxopt2.least_squares(js.residual, jnp.asarray(js.x0), None, solver=LM)
    assert sol.status == RESULTS.successful
    assert float(jnp.sum(sol.value**2)) == pytest.approx(js.f_star, rel=1e-6)


def test_geodesic_acceleration_fewer_steps():
    """Rosenbrock's curved valley: geodesic acceleration cuts the matrix-free LM steps."""
    p = get(1)
    plain = _solve(LM_CG, p)
    geo = _solve(jaxopt2.LevenbergMarquardt(linear_solver="cg", geodesic=True), p)
    assert plain.status == RESULTS.successful and geo.status == RESULTS.successful
    assert float(jnp.sum(geo.value**2)) <= 1e-20
    assert int(geo.stats["num_steps"]) < 0.75 * int(plain.stats["num_steps"])


def test_unscaled_option_and_validation():
    p = get(5)
    sol = _solve(jaxopt2.LevenbergMarquardt(scale=False), p)
    assert sol.status == RESULTS.successful
    np.testing.assert_allclose(sol.params, [3.0, 0.5], rtol=1e-8)
    with pytest.raises(ValueError, match="linear_solver"):
        jaxopt2.LevenbergMarquardt(linear_solver="qr")
    with pytest.raises(ValueError, match="factor"):
        jaxopt2.LevenbergMarquardt(factor=0.0)
    with pytest.raises(ValueError, match="xtol"):
        jaxopt2.GaussNewton(xtol=-1.0)


def test_large_problem_matrix_free():
    """100,000 residuals × 1,000 parameters: "auto" goes matrix-free (J would be 800 MB)."""
    n, m = 1000, 100_000
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    i = jax.random.randint(k1, (m,), 0, n)
    j = jax.random.randint(k2, (m,), 0, n)
    truth = 1.0 + 0.5 * jnp.sin(jnp.arange(n))
    c = truth[i] * truth[j] + 0.1 * truth[i]

    def residual(y, c):
        return y[i] * y[j] + 0.1 * y[i] - c

    sol = jaxopt2.least_squares(residual, jnp.ones(n), c, solver=LM, max_steps=60)
    assert sol.status == RESULTS.successful
    assert int(sol.stats["num_jac"]) == 0
    r0 = float(jnp.linalg.norm(residual(jnp.ones(n), c)))
    assert float(jnp.linalg.norm(sol.value)) <= 1e-6 * r0
