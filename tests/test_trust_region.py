"""The shared trust-region rules (`jaxopt2._trust_region`): every band of every rule, and the
guards of the reduction ratio."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt2 import _trust_region as tr


def test_reduction_ratio_is_actual_over_predicted():
    assert float(tr.reduction_ratio(0.3, 0.6)) == pytest.approx(0.5)
    assert float(tr.reduction_ratio(-0.2, 0.4)) == pytest.approx(-0.5)  # f rose
    assert float(tr.reduction_ratio(2.0, 1.0)) == pytest.approx(2.0)  # better than the model


@pytest.mark.parametrize("actual, predicted", [
    (0.5, 0.0),  # no decrease predicted
    (-0.5, -1.0),  # an "increase" predicted: the quotient is positive but meaningless
    (0.5, -1.0),
    (jnp.nan, 1.0),  # non-finite trial value
    (-jnp.inf, 1.0),
    (1.0, jnp.nan),
    (1.0, jnp.inf),  # finite/inf would be 0 anyway; inf/inf is NaN
    (jnp.inf, jnp.inf),
])
def test_reduction_ratio_rejects_without_evidence(actual, predicted):
    rho = tr.reduction_ratio(jnp.float32(actual), jnp.float32(predicted))
    assert float(rho) == 0.0
    poor, good = tr.bands(rho)
    assert bool(poor) and not bool(good)  # so the region always shrinks


def test_reduction_ratio_keeps_dtype_and_vmaps():
    for dtype in (jnp.float32, jnp.float64) if jax.config.jax_enable_x64 else (jnp.float32,):
        a = jnp.array([0.1, 0.5, 0.9, 1.0], dtype)
        p = jnp.array([1.0, 1.0, 1.0, 0.0], dtype)
        rho = jax.vmap(tr.reduction_ratio)(a, p)
        assert rho.dtype == dtype
        np.testing.assert_allclose(rho, [0.1, 0.5, 0.9, 0.0], rtol=1e-6)


@pytest.mark.parametrize("rho, poor, good", [
    (-1.0, True, False), (0.0, True, False), (0.1, True, False), (0.2499, True, False),
    (0.25, False, False), (0.5, False, False), (0.75, False, False),
    (0.7501, False, True), (0.9, False, True), (5.0, False, True),
])
def test_bands(rho, poor, good):
    p, g = tr.bands(jnp.float32(rho))
    assert (bool(p), bool(g)) == (poor, good)


def test_bands_custom_thresholds():
    assert tuple(map(bool, tr.bands(0.3, low=0.4, high=0.6))) == (True, False)
    assert tuple(map(bool, tr.bands(0.7, low=0.4, high=0.6))) == (False, True)


@pytest.mark.parametrize("rho, expected", [(0.1, 0.25), (0.5, 1.0), (0.9, 2.0)])
def test_update_radius_shrinks_keeps_grows(rho, expected):
    radius = jnp.float32(1.0)
    poor, good = tr.bands(tr.reduction_ratio(jnp.float32(rho), jnp.float32(1.0)))
    new = tr.update_radius(radius, poor, good, shrunk=0.25 * radius, grown=2 * radius)
    assert float(new) == expected
    assert new.dtype == radius.dtype


def test_update_radius_poor_wins_over_good():
    new = tr.update_radius(jnp.float32(1.0), jnp.array(True), jnp.array(True), shrunk=0.5,
                           grown=3.0)
    assert float(new) == 0.5


@pytest.mark.parametrize("rho, factor", [(0.1, 1.5), (0.5, 1.0), (0.9, 2.0 / 3.0)])
def test_martens_damping(rho, factor):
    poor, good = tr.bands(jnp.float32(rho))
    lam = tr.martens_damping(jnp.float32(2.0), poor, good, grow=1.5, shrink=2.0 / 3.0)
    assert float(lam) == pytest.approx(2.0 * factor)


def test_martens_damping_rejected_step_grows():
    # The caller passes a rejected step as poor, whatever its ratio: λ rises even when the
    # ratio alone would lower it.
    accepted = jnp.array(False)
    poor, good = tr.bands(jnp.float32(0.9))
    lam = tr.martens_damping(jnp.float32(2.0), ~accepted | poor, good, grow=1.5, shrink=0.5)
    assert float(lam) == pytest.approx(3.0)


@pytest.mark.parametrize("rho, factor", [
    (1.0, 1.0 / 3.0),  # 1 − 1³ = 0, floored at 1/3
    (2.0, 1.0 / 3.0),
    (0.5, 1.0),  # 1 − 0³
    (0.75, 0.875),  # 1 − 0.5³
    (0.25, 1.125),  # 1 + 0.5³
    (0.0, 2.0),  # 1 + 1³
])
def test_nielsen_damping_on_acceptance(rho, factor):
    lam, nu = tr.nielsen_damping(jnp.float32(3.0), jnp.float32(8.0), jnp.float32(rho),
                                 jnp.array(True))
    assert float(lam) == pytest.approx(3.0 * factor, rel=1e-6)
    assert float(nu) == 2.0


def test_nielsen_damping_on_rejection_doubles_nu():
    lam, nu = jnp.float32(1.0), jnp.float32(2.0)
    seen = []
    for _ in range(3):
        lam, nu = tr.nielsen_damping(lam, nu, jnp.float32(0.0), jnp.array(False))
        seen.append((float(lam), float(nu)))
    assert seen == [(2.0, 4.0), (8.0, 8.0), (64.0, 16.0)]
    assert lam.dtype == nu.dtype == jnp.float32


def test_more_shrink_interpolates():
    # φ(t) = 1 + 2d·t + c·t² with φ(1) = 1 − a; μ is its minimizer −d/c = ½d/(d + ½a).
    d, a = -1.0, -1.5  # the residual rose: μ = ½·(−1)/(−1 − 0.75) = 2/7
    mu = tr.more_shrink(jnp.float32(a), jnp.float32(d), jnp.float32(1.0), jnp.float32(1.2))
    assert float(mu) == pytest.approx(2.0 / 7.0, rel=1e-6)
    # The minimizer of that quadratic, checked directly.
    c = (1 - a) - 1 - 2 * d
    assert -2 * d / (2 * c) == pytest.approx(2.0 / 7.0)


@pytest.mark.parametrize("actual, dirder, rnorm_new, expected", [
    (0.3, -1.0, 0.8, 0.5),  # the residual fell: halve
    (-100.0, -0.1, 1.5, 0.1),  # interpolation below 0.1: floored
    (-1.0, -1.0, 20.0, 0.1),  # the residual grew tenfold
    (-1.0, -1.0, jnp.nan, 0.1),  # not finite
])
def test_more_shrink_bands(actual, dirder, rnorm_new, expected):
    mu = tr.more_shrink(jnp.float32(actual), jnp.float32(dirder), jnp.float32(1.0),
                        jnp.float32(rnorm_new))
    assert float(mu) == pytest.approx(expected)


def test_rules_are_jittable_and_differentiable_in_the_trial():
    # ρ is differentiable in the actual reduction where it is defined (used by unrolled
    # adjoints through NewtonCG's trust region).
    g = jax.jit(jax.grad(lambda a: tr.reduction_ratio(a, jnp.float32(4.0))))(jnp.float32(1.0))
    assert float(g) == pytest.approx(0.25)


def test_reduction_ratio_any_sign_is_minpacks():
    # Signed quotient for any nonzero prediction (lmder); still 0 for none or a NaN.
    assert float(tr.reduction_ratio(-0.5, -1.0, any_sign=True)) == pytest.approx(0.5)
    assert float(tr.reduction_ratio(0.5, -1.0, any_sign=True)) == pytest.approx(-0.5)
    assert float(tr.reduction_ratio(0.5, 0.0, any_sign=True)) == 0.0
    assert float(tr.reduction_ratio(0.5, jnp.nan, any_sign=True)) == 0.0
