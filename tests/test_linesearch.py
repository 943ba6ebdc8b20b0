"""zoom_wolfe: the accepted point satisfies the strong Wolfe conditions (checked independently
of the implementation) on 1-D-along-a-direction problems, including a wildly long and a wildly
short first trial; failure modes, float32, the cubic interpolant, and backtracking."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt2._base import evaluate
from jaxopt2._linesearch import _cubic_min, backtracking, zoom_wolfe

pytestmark = pytest.mark.float64  # written for float64 tolerances


def _fn(f):
    return lambda x, args: (f(x), None)


def quadratic(x):
    A = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], x.dtype)
    b = jnp.array([1.0, -2.0, 0.5], x.dtype)
    return 0.5 * x @ A @ x - b @ x


def quartic(x):
    # Nonconvex with two local minima along each coordinate (near −1.30 and 1.13).
    return jnp.sum(x**4 - 3.0 * x**2 + x)


def soft_abs(x):
    # Minimizer at 3, nearly linear far from it: a long first trial lands far beyond.
    return jnp.sum(jnp.sqrt(1.0 + (x - 3.0) ** 2))


CASES = {
    "quadratic": (quadratic, jnp.array([1.0, 1.0, 1.0]), None, 1.0),
    "quartic-left": (quartic, jnp.array([0.5]), None, 1.0),
    "quartic-right": (quartic, jnp.array([-0.2]), None, 1.0),
    "quartic-multi": (quartic, jnp.array([2.0, -2.0, 0.3]), None, 1.0),
    "too-long": (soft_abs, jnp.zeros(1), jnp.ones(1), 1e6),
    "too-short": (soft_abs, jnp.zeros(1), jnp.ones(1), 1e-8),
    "too-long-quadratic": (quadratic, jnp.array([1.0, 1.0, 1.0]), None, 1e8),
}


def check_strong_wolfe(f, x, d, t, c1, c2):
    phi = lambda s: f(x + s * d)
    dphi = jax.grad(phi)
    assert t > 0
    assert phi(t) <= phi(0.0) + c1 * t * dphi(0.0)
    assert abs(dphi(t)) <= c2 * abs(dphi(0.0))


@functools.partial(jax.jit, static_argnums=0)
def search(f, x, d, t0, c2):
    # c2 and t0 are traced so the cases of one objective share a compilation.
    it = evaluate(_fn(f), x, None)
    d = -it.grad if d is None else d
    return it, d, zoom_wolfe(_fn(f), it, d, None, t0, c1=1e-4, c2=c2)


@pytest.mark.parametrize("c2", [0.9, 0.1])
@pytest.mark.parametrize("name", list(CASES))
def test_zoom_wolfe_strong_wolfe_point(name, c2):
    f, x, d, t0 = CASES[name]
    it, d, ls = search(f, x, d, t0, c2)
    assert ls.ok
    check_strong_wolfe(f, x, d, float(ls.step_size), 1e-4, c2)
    # The returned iterate is the evaluated point x + t d, with its value and gradient.
    new_x = x + ls.step_size * d
    np.testing.assert_allclose(ls.iterate.params, new_x, rtol=1e-12)
    np.testing.assert_allclose(ls.iterate.value, f(new_x), rtol=1e-12)
    np.testing.assert_allclose(ls.iterate.grad, jax.grad(f)(new_x), rtol=1e-10, atol=1e-14)
    assert 1 <= int(ls.counts.grad) <= 30 and int(ls.counts.fun) == 0


def test_zoom_wolfe_extreme_first_trials_are_cheap():
    # Cubic extrapolation (×10 at most) and the 80%-safeguarded zoom reach a Wolfe point from
    # a first trial eight orders of magnitude off in either direction in a handful of trials.
    for t0 in (1e8, 1e-8):
        _, _, ls = search(soft_abs, jnp.zeros(1), jnp.ones(1), t0, 0.9)
        assert ls.ok and int(ls.counts.grad) <= 15


def test_zoom_wolfe_exact_on_quadratic_with_tight_c2():
    # On a quadratic the cubic interpolant is exact: with c2 tiny the step is the exact
    # minimizer along d, t* = −gᵀd / dᵀAd.
    x = jnp.array([1.0, 1.0, 1.0])
    it, d, ls = search(quadratic, x, None, 1.0, 1e-8)
    A = jax.hessian(quadratic)(x)
    t_star = -(it.grad @ d) / (d @ A @ d)
    np.testing.assert_allclose(ls.step_size, t_star, rtol=1e-8)


def test_zoom_wolfe_not_descent_fails_and_keeps_iterate():
    x = jnp.array([1.0, 1.0, 1.0])
    it = evaluate(_fn(quadratic), x, None)
    ls = zoom_wolfe(_fn(quadratic), it, it.grad, None, 1.0)
    assert not ls.ok
    assert ls.step_size == 0
    np.testing.assert_array_equal(ls.iterate.params, x)
    np.testing.assert_array_equal(ls.iterate.value, it.value)


def test_zoom_wolfe_inconsistent_gradient_fails():
    # The gradient claims descent along d but f increases: no acceptable step exists.
    @jax.custom_jvp
    def f(x):
        return jnp.sum(x**2)

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        return f(x), -2.0 * jnp.sum(x * dx)

    x = jnp.array([1.0, -2.0])
    it = evaluate(_fn(f), x, None)
    ls = zoom_wolfe(_fn(f), it, -it.grad, None, 1.0)
    assert not ls.ok
    np.testing.assert_array_equal(ls.iterate.params, x)


@pytest.mark.parametrize("t0", [1e3, 1e8])
def test_zoom_wolfe_float32_overflowing_trial(t0):
    # A first trial that overflows to inf shrinks back tenfold per trial, with no NaN.
    f = lambda x: jnp.sum(jnp.exp(3.0 * x)) + jnp.sum(x**2)
    x = jnp.array([-3.0, 0.5], jnp.float32)
    d = jnp.array([1.0, 0.0], jnp.float32)
    it = evaluate(_fn(f), x, None)
    assert not jnp.isfinite(f(x + t0 * d))
    ls = zoom_wolfe(_fn(f), it, d, None, jnp.float32(t0))
    assert ls.ok
    check_strong_wolfe(lambda z: f(z).astype(jnp.float64), x.astype(jnp.float64),
                       d.astype(jnp.float64), float(ls.step_size), 1e-4, 0.9)
    assert ls.iterate.params.dtype == jnp.float32
    assert ls.step_size.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(ls.iterate.params))) and ls.iterate.value < it.value


def test_zoom_wolfe_float32_near_minimizer_uses_slopes():
    # Steps whose decrease is below float32 resolution of f: value comparisons alone fail,
    # the approximate-Wolfe test on slopes still accepts a step that reduces |g|.
    A = jnp.diag(jnp.array([1.0, 1e4], jnp.float32))
    f = lambda x: 0.5 * x @ A @ x + 10.0
    x = jnp.array([3e-4, 1e-7], jnp.float32)
    it = evaluate(_fn(f), x, None)
    d = -it.grad
    ls = zoom_wolfe(_fn(f), it, d, None, 1.0)
    assert ls.ok
    slope0 = float(it.grad @ d)
    slope = float(ls.iterate.grad @ d)
    assert abs(slope) <= 0.9 * abs(slope0)
    assert jnp.all(jnp.isfinite(ls.iterate.grad))


def test_zoom_wolfe_jit_and_vmap():
    def one(x, t0):
        it = evaluate(_fn(quartic), x, None)
        ls = zoom_wolfe(_fn(quartic), it, -it.grad, None, t0)
        return ls.step_size, ls.ok

    xs = jnp.array([[0.5], [-0.2], [2.0]])
    t0s = jnp.array([1.0, 1e-6, 1e3])
    ts, oks = jax.jit(jax.vmap(one))(xs, t0s)
    single = jax.jit(one)
    for x, t0, t, ok in zip(xs, t0s, ts, oks, strict=True):
        t_ref, ok_ref = single(x, t0)
        assert ok and ok_ref
        np.testing.assert_allclose(t, t_ref, rtol=1e-12)


def test_cubic_min():
    # φ(t) = t³ − 3t has its local minimizer at t = 1; the cubic through two points with
    # slopes reproduces it exactly, in either order of the points.
    phi = lambda t: t**3 - 3 * t
    dphi = lambda t: 3 * t**2 - 3
    for a, b in [(0.0, 2.0), (2.0, 0.0), (-0.5, 1.5)]:
        t = _cubic_min(a, phi(a), dphi(a), b, phi(b), dphi(b))
        np.testing.assert_allclose(t, 1.0, rtol=1e-12)
    # Degenerate data give NaN (callers fall back to bisection), never an exception.
    assert jnp.isnan(_cubic_min(1.0, 0.0, -1.0, 1.0, 0.0, -1.0))
    assert jnp.isnan(_cubic_min(0.0, 0.0, -1.0, 1.0, jnp.inf, jnp.nan))


def test_backtracking_unchanged():
    # GradientDescent's Armijo search: halves from the first trial until sufficient decrease.
    x = jnp.array([1.0, 1.0, 1.0])
    it = evaluate(_fn(quadratic), x, None)
    d = -it.grad
    ls = backtracking(_fn(quadratic), it, d, None, 8.0)
    t = float(ls.step_size)
    slope = float(it.grad @ d)
    assert ls.ok
    assert quadratic(x + t * d) <= it.value + 1e-4 * t * slope
    assert quadratic(x + 2 * t * d) > it.value + 1e-4 * 2 * t * slope
    assert int(ls.counts.grad) == 1 and int(ls.counts.fun) == int(np.log2(8.0 / t)) + 1
