"""Bisection (Chandrupatla's bracketing method) on scalar equations with known roots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxopt2
from jaxopt2 import RESULTS

pytestmark = pytest.mark.float64  # written for float64 tolerances


def _cube(y, a):
    return y**3 - a


def _kepler(e_anomaly, args):
    ecc, mean = args
    return e_anomaly - ecc * jnp.sin(e_anomaly) - mean


def _root_value(fn, y0, solver):
    sol = jaxopt2.root_find(fn, y0, None, solver=solver)
    return sol.params, sol.value


def _batched(fn, solver, y0=1.0, max_steps=256):
    """One compiled vmap over the problems of a test."""

    def solve(args):
        sol = jaxopt2.root_find(fn, jnp.asarray(y0), args, solver=solver, max_steps=max_steps,
                                throw=False)
        return sol.params, sol.status._value, sol.stats["num_fun"]

    return jax.jit(jax.vmap(solve))


CUBE_ARGS = jnp.array([1e-6, 0.5, 2.0, 27.0, 1000.0])


@pytest.mark.parametrize("solver", [jaxopt2.Bisection(),
                                    jaxopt2.Bisection(lower=0.0, upper=20.0)],
                         ids=["search", "bracket"])
def test_cube_root(solver):
    roots, status, nfun = _batched(_cube, solver)(CUBE_ARGS)
    assert np.all(status == RESULTS.successful._value)
    np.testing.assert_allclose(roots, np.cbrt(np.asarray(CUBE_ARGS)), rtol=1e-14)
    if solver.lower is not None:
        # Plain bisection needs log2(20 / (4 eps · root)) ≈ 50–70 halvings; the interpolation
        # steps make it superlinear.
        assert int(jnp.max(nfun)) <= 30


def test_kepler_equation_matches_brentq():
    ecc = np.array([0.0, 0.1, 0.5, 0.9, 0.99])
    mean = np.array([0.3, 1.0, 2.0, 3.0, 0.05])
    ref = [scipy.optimize.brentq(lambda e, i=i: e - ecc[i] * np.sin(e) - mean[i], 0.0, np.pi,
                                 xtol=1e-15) for i in range(len(ecc))]
    args = (jnp.asarray(ecc), jnp.asarray(mean))
    for solver in (jaxopt2.Bisection(), jaxopt2.Bisection(lower=0.0, upper=float(np.pi))):
        roots, status, _ = _batched(_kepler, solver, y0=0.0)(args)
        assert np.all(status == RESULTS.successful._value)
        np.testing.assert_allclose(roots, ref, rtol=1e-13, atol=1e-15)


def test_cos_fixed_point_and_bracket_selects_root():
    def f(y, args):
        return jnp.cos(y) - y

    dottie = scipy.optimize.brentq(lambda y: np.cos(y) - y, 0.0, 1.0, xtol=1e-15)
    for solver in (jaxopt2.Bisection(), jaxopt2.Bisection(lower=0.0, upper=1.0)):
        root, value = jax.jit(lambda y0, s=solver: _root_value(f, y0, s))(jnp.array(0.0))
        np.testing.assert_allclose(root, dottie, rtol=1e-14)
        assert abs(float(value)) <= 1e-14

    # sin has many roots: the one inside the given bracket is found, even from a far y0
    # (and y0 = 6.5 inside the bracket only narrows it).
    def sine(y, args):
        return jnp.sin(y)

    solve = jax.jit(lambda y0: _root_value(sine, y0, jaxopt2.Bisection(lower=6.0, upper=7.0)))
    for y0 in (0.5, 6.5):
        np.testing.assert_allclose(solve(jnp.array(y0))[0], 2 * np.pi, rtol=1e-14)


def test_implicit_gradients_match_closed_forms():
    solver = jaxopt2.Bisection()

    def cbrt(a):
        return jaxopt2.root_find(_cube, jnp.array(1.0), a, solver=solver).params

    grad = jax.jit(jax.grad(cbrt))
    for a in (2.0, 27.0):
        np.testing.assert_allclose(grad(a), a ** (-2 / 3) / 3, rtol=1e-10)

    # Kepler: dE/de = sin E / (1 − e cos E), dE/dM = 1 / (1 − e cos E).
    def kepler(ecc, mean):
        return jaxopt2.root_find(_kepler, jnp.array(0.0), (ecc, mean),
                                 solver=jaxopt2.Bisection(lower=0.0, upper=4.0)).params

    ecc, mean = 0.7, 1.2
    e_anom, (d_ecc, d_mean) = jax.jit(jax.value_and_grad(kepler, argnums=(0, 1)))(ecc, mean)
    denom = 1 - ecc * np.cos(e_anom)
    np.testing.assert_allclose(d_ecc, np.sin(e_anom) / denom, rtol=1e-10)
    np.testing.assert_allclose(d_mean, 1 / denom, rtol=1e-10)


def test_bad_bracket_reports_then_raises():
    solver = jaxopt2.Bisection(lower=-1.0, upper=1.0)

    def f(y, args):
        return y**2 + args  # no real root for args > 0

    sol = jaxopt2.root_find(f, jnp.array(0.5), jnp.array(1.0), solver=solver, throw=False)
    assert sol.status == RESULTS.bracket_invalid
    assert int(sol.stats["num_fun"]) == 3  # y0 and both ends, then it stops
    with pytest.raises(RuntimeError, match="solve failed"):
        jaxopt2.root_find(f, jnp.array(0.5), jnp.array(1.0), solver=solver)
    # Without a bracket, the search runs out of steps.
    sol = jaxopt2.root_find(f, jnp.array(0.5), jnp.array(1.0), solver=jaxopt2.Bisection(),
                            max_steps=20, throw=False)
    assert sol.status == RESULTS.max_steps_reached


def test_exact_zero_and_ftol():
    # F(lower) = 0 exactly: the end itself is returned.
    sol = jaxopt2.root_find(_cube, jnp.array(0.5), jnp.array(8.0),
                            solver=jaxopt2.Bisection(lower=2.0, upper=5.0))
    assert float(sol.params) == 2.0 and float(sol.value) == 0.0
    # A loose ftol stops as soon as |F| ≤ ftol, well before the bracket is tight.
    sol = jaxopt2.root_find(_cube, jnp.array(1.0), jnp.array(2.0),
                            solver=jaxopt2.Bisection(lower=0.0, upper=2.0, ftol=1e-3))
    assert abs(float(sol.value)) <= 1e-3
    assert abs(float(sol.params) - 2 ** (1 / 3)) > 1e-12


def test_rejects_non_scalar_and_bad_hyperparameters():
    with pytest.raises(ValueError, match="scalar"):
        jaxopt2.root_find(lambda y, a: y - 1.0, jnp.zeros(2), None, solver=jaxopt2.Bisection())
    for kwargs in ({"lower": 0.0}, {"lower": 1.0, "upper": 0.0}, {"atol": -1.0},
                   {"initial_step": 0.0}):
        with pytest.raises(ValueError):
            jaxopt2.Bisection(**kwargs)
