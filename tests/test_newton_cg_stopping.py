"""NewtonCG's own stopping estimate (issue 13): the norm of its last CG step, trusted only
where CG solved the Newton system to max(rtol, √eps). The shared contraction and secant
estimates, fooled by loosely solved steps on the 4-D Rosenbrock valley, let float32 solves
stop 0.1 from any minimizer, which the final curvature check then (rightly) refused as
`ill_conditioned`; with rtol below float32's gradient resolution they never certified."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2 as J
from jaxopt2._linalg import truncated_cg

STARTS = [([-1.2, 1.0, 1.0], 1.0), ([-1.2, 1.0, -0.5], 0.8)]
VARIANTS = {"line-search": {}, "trust-region": {"trust_region": True}}


def rosenbrock(p, a):
    x = jnp.concatenate([p["x"], p["y"][None]])
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (a - x[:-1]) ** 2)


def _grad_hess(x):
    """Gradient and Hessian of the chained Rosenbrock function (a = 1), in float64 numpy."""
    n = x.size
    g = np.zeros(n)
    H = np.zeros((n, n))
    for i in range(n - 1):
        r = x[i + 1] - x[i] ** 2
        g[i] += -400 * x[i] * r - 2 * (1 - x[i])
        g[i + 1] += 200 * r
        H[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        H[i + 1, i + 1] += 200
        H[i, i + 1] = H[i + 1, i] = -400 * x[i]
    return g, H


def _distance_to_minimizer(params):
    """‖x − x*‖∞ for the minimizer x* that float64 Newton reaches from the solver's answer
    (asserted to be a strict local minimum: zero gradient, positive definite Hessian)."""
    x = np.concatenate([np.asarray(params["x"], np.float64),
                        np.asarray(params["y"], np.float64)[None]])
    z = x.copy()
    for _ in range(50):
        g, H = _grad_hess(z)
        z = z - np.linalg.solve(H, g)
    g, H = _grad_hess(z)
    assert np.max(np.abs(g)) < 1e-9 and np.linalg.eigvalsh(H)[0] > 0
    return np.max(np.abs(x - z)), max(np.max(np.abs(x)), 1.0)


def _start(x, y, dtype):
    return {"x": jnp.asarray(x, dtype), "y": jnp.asarray(y, dtype)}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("start", range(len(STARTS)))
def test_float32_4d_rosenbrock_is_solved_not_refused(variant, start):
    sol = J.minimize(rosenbrock, _start(*STARTS[start], jnp.float32), 1.0,
                     solver=J.NewtonCG(**VARIANTS[variant]), max_steps=500, throw=False)
    status = J.status_name(sol.status)
    # Before: ill_conditioned 0.1 (start 0) and 0.04 (start 1) from the local minimizer.
    assert status == "successful", status
    distance, scale = _distance_to_minimizer(sol.params)
    assert distance <= 1e-3 * scale
    assert sol.params["x"].dtype == jnp.float32


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_rtol_below_gradient_resolution_certifies(variant):
    # rtol = 1e-5 in float32: the shared estimates never settled (max_steps_reached at 500).
    sol = J.minimize(rosenbrock, _start(*STARTS[0], jnp.float32), 1.0,
                     solver=J.NewtonCG(rtol=1e-5, **VARIANTS[variant]), max_steps=500,
                     throw=False)
    assert J.status_name(sol.status) == "successful"
    distance, scale = _distance_to_minimizer(sol.params)
    assert distance <= 1e-5 * scale


@pytest.mark.float64
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float64_4d_rosenbrock_is_solved(variant):
    for x, y in STARTS:
        sol = J.minimize(rosenbrock, _start(x, y, jnp.float64), 1.0,
                         solver=J.NewtonCG(**VARIANTS[variant]), max_steps=500, throw=False)
        assert J.status_name(sol.status) == "successful"
        distance, scale = _distance_to_minimizer(sol.params)
        assert distance <= 1e-6 * scale


def test_vmap_over_starts_reports_per_problem():
    starts = jax.tree_util.tree_map(lambda *a: jnp.stack(a),
                                    *[_start(x, y, jnp.float32) for x, y in STARTS])
    solve = jax.jit(jax.vmap(lambda p0: J.minimize(rosenbrock, p0, 1.0, solver=J.NewtonCG(),
                                                   max_steps=500, throw=False)))
    sols = solve(starts)
    assert np.all(np.asarray(sols.status == J.RESULTS.successful))
    for i in range(len(STARTS)):
        distance, scale = _distance_to_minimizer(
            jax.tree_util.tree_map(lambda a, i=i: a[i], sols.params))
        assert distance <= 1e-3 * scale


def _previous(full_step, dtype=jnp.float32):
    """A NewtonCG state whose last step was taken whole with ‖d‖∞ = `full_step` (0: none)."""
    p = jnp.zeros(8, dtype)
    state = J.NewtonCG().init(None, J._base.Iterate(p, jnp.zeros((), dtype), p, None), None)
    return eqx.tree_at(lambda s: s.full_step, state, jnp.asarray(full_step, dtype))


def test_error_estimate_is_the_newton_step_only_for_a_tight_solve():
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    A = jnp.asarray(Q @ np.diag(np.logspace(0, 3, 8)) @ Q.T, jnp.float32)
    g = jnp.asarray(rng.standard_normal(8), jnp.float32)
    newton = float(jnp.max(jnp.abs(jnp.linalg.solve(A, g))))
    solver = J.NewtonCG()
    eta_certify = solver._certifying_forcing(g)
    first = _previous(0.0)

    def error(cg, eta, state=first, full=True):
        return float(solver._error(cg, jnp.asarray(eta), eta_certify, state, jnp.asarray(full),
                                   jnp.ones((), jnp.float32), jnp.zeros(8, jnp.float32))[0])

    tight = truncated_cg(lambda v: A @ v, -g, rtol=eta_certify, max_iters=16)
    np.testing.assert_allclose(error(tight, eta_certify), newton, rtol=0.05)
    # A loose solve (the forcing term far from the end) underestimates: no estimate at all.
    loose = truncated_cg(lambda v: A @ v, -g, rtol=0.5, max_iters=16)
    assert float(jnp.max(jnp.abs(loose.x))) < 0.9 * newton
    assert np.isinf(error(loose, 0.5))
    # Cut short by a trust region: not a Newton step either.
    cut = truncated_cg(lambda v: A @ v, -g, rtol=eta_certify, max_iters=16, radius=0.1 * newton)
    assert np.isinf(error(cut, eta_certify))
    # In float32 (η = 1e-3) a contracting pair of whole steps is not used: η·κ may be ~1.
    np.testing.assert_allclose(error(tight, eta_certify, _previous(20 * newton)), newton,
                               rtol=0.05)


@pytest.mark.float64
def test_error_estimate_after_two_whole_steps_is_their_contraction():
    """(ρ/(1 − ρ) + √η)·‖dₖ‖ with ρ the larger of ‖dₖ‖/‖dₖ₋₁‖ and ‖gₖ₊₁‖/‖gₖ‖, only where
    both steps were taken whole, η ≤ 1e-6 and ρ ≤ ½."""
    rng = np.random.default_rng(1)
    A = jnp.asarray(np.diag(np.logspace(0, 2, 8)))
    g = jnp.asarray(rng.standard_normal(8))
    solver = J.NewtonCG(rtol=1e-8)
    eta = solver._certifying_forcing(g)  # 1.5e-8
    cg = truncated_cg(lambda v: A @ v, -g, rtol=eta, max_iters=32)
    d = float(jnp.max(jnp.abs(cg.x)))

    def error(prev, full=True, grad_ratio=0.0):
        # ‖gₖ‖₂ = 2 and gₖ₊₁ of norm 2·grad_ratio
        new_grad = jnp.zeros(8).at[0].set(2 * grad_ratio)
        return float(solver._error(cg, jnp.asarray(eta), eta, _previous(prev, jnp.float64),
                                   jnp.asarray(full), jnp.asarray(2.0), new_grad)[0])

    np.testing.assert_allclose(error(10 * d), (0.1 / 0.9 + eta**0.5) * d, rtol=1e-6)
    np.testing.assert_allclose(error(10 * d, grad_ratio=0.25), (0.25 / 0.75 + eta**0.5) * d,
                               rtol=1e-6)
    assert error(10 * d, full=False) == pytest.approx(d)  # this step was cut by the search
    assert error(0.0) == pytest.approx(d)  # the step before was cut (or there was none)
    assert error(1.5 * d) == pytest.approx(d)  # ρ > ½: no contraction to speak of


def _offset_bowl(x, ab):
    # minimizer 1000 − b/a; with a = 1e5, b = 1.7 it lies 1.7e-5 from 1000, under half of
    # float32's spacing there (6.1e-5), while the gradient (1.7) is far above the tolerance.
    a, b = ab
    return 1000.0 + 0.5 * a * jnp.sum((x - 1000.0) ** 2) + b * jnp.sum(x - 1000.0)


@pytest.mark.parametrize("solver", [J.Newton(), J.NewtonCG(), J.NewtonCG(trust_region=True),
                                    J.RegularizedNewton(), J.DampedNewton()],
                         ids=["Newton", "NewtonCG", "NewtonCG-tr", "RegularizedNewton",
                              "DampedNewton"])
def test_step_below_the_resolution_of_x_stops_at_once(solver):
    """A Newton step that cannot move x in float32 (its decrease is below f's rounding, so the
    line search accepts it) is reported after one step, not repeated until `max_steps`; under
    vmap the solvable problem beside it is unaffected."""
    x0 = jnp.full(3, 1000.0, jnp.float32)
    ab = (jnp.array([1e5, 1.0], jnp.float32), jnp.array([1.7, 1.7], jnp.float32))
    sol = jax.vmap(lambda a, b: J.minimize(_offset_bowl, x0, (a, b), solver=solver,
                                           throw=False))(*ab)
    assert [J.status_name(s) for s in np.asarray(sol.status._value)] == [
        "line_search_failed", "successful"]
    assert int(sol.stats["num_steps"][0]) == 1
    np.testing.assert_allclose(np.asarray(sol.params[1]), 1000.0 - 1.7, rtol=1e-7)


@pytest.mark.float64
def test_no_solve_tighter_than_a_certifying_one():
    """Eisenstat–Walker's term falls with the square of the gradient ratio (to 1e-13 on the
    last step of the digits benchmark, 87 CG iterations where 65 certify): NewtonCG floors it
    at the certifying forcing term, so the last step's η is exactly that term, and a fixed
    `forcing` is left as given."""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((200, 30)))
    y = jnp.asarray(rng.integers(0, 2, 200) * 2.0 - 1)

    def loss(w, a):
        return jnp.mean(jnp.logaddexp(0.0, -y * (X @ w))) + 0.5 * a * (w @ w)

    solver = J.NewtonCG(rtol=1e-10)
    w0 = jnp.zeros(30, jnp.float64)
    sol = J.minimize(loss, w0, jnp.float64(1e-3), solver=solver)
    assert J.status_name(sol.status) == "successful"
    eta_certify = solver._certifying_forcing(w0)
    assert float(sol.state.eta) == pytest.approx(eta_certify, rel=1e-12)
    fixed = J.minimize(loss, w0, jnp.float64(1e-3), solver=J.NewtonCG(rtol=1e-10, forcing=1e-12))
    assert float(fixed.state.eta) == pytest.approx(1e-12, rel=1e-12)
