"""Checks of the Moré-Garbow-Hillstrom problem definitions in benchmarks/mgh.py.

- every residual has length m and is finite at the standard starting point;
- the stored optima agree with the values printed in the paper, and known minimisers give them;
- MINPACK's Levenberg-Marquardt (scipy.optimize.least_squares(method="lm")) with exact JAX
  Jacobians reaches f_star, or a documented local value, from x0.
"""

import jax
import numpy as np
import pytest
from scipy.optimize import least_squares

from benchmarks.mgh import PROBLEMS, PUBLISHED, get

pytestmark = pytest.mark.float64  # written for float64 tolerances

RTOL = 1e-6
ATOL_ZERO = 1e-10

# MINPACK lm from the standard x0 stops at a documented local minimum rather than at f_star on
# these problems (the paper's f_star is still the global value).
LM_REACHES_LOCAL = {
    2: 48.98425367924,  # Freudenstein and Roth: the local minimum the paper documents
    26: 2.795056121879e-5,  # Trigonometric, n = 10
}


def _sum_sq(p, x):
    return float(np.sum(np.asarray(p.residual(np.asarray(x, np.float64), None)) ** 2))


def _close(value, target):
    if target == 0.0:
        return abs(value) <= ATOL_ZERO
    return abs(value - target) <= RTOL * abs(target)


def test_registry():
    assert [p.number for p in PROBLEMS] == list(range(1, 36))
    assert get(14) is get("wood") is PROBLEMS[13]
    with pytest.raises(KeyError):
        get(36)
    for p in PROBLEMS:
        assert p.x0.dtype == np.float64 and p.x0.ndim == 1
        assert all(v >= 0 for v in p.local_f)


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: str(p.number))
def test_residual_at_x0(p):
    r = np.asarray(jax.jit(p.residual)(p.x0, None))
    assert r.shape == (p.m,)
    assert r.dtype == np.float64
    assert np.all(np.isfinite(r))
    assert p.m >= p.n


@pytest.mark.parametrize("number", sorted(PUBLISHED))
def test_published_digits(number):
    # The printed values have six significant digits, some rounded and some truncated: the
    # refined value must lie within one unit of the sixth digit.
    p, printed = get(number), PUBLISHED[number]
    unit = 10.0 ** (np.floor(np.log10(printed)) - 5)
    assert abs(p.f_star - printed) < unit, (p.f_star, printed)


@pytest.mark.parametrize("number, x, f", [
    (1, [1.0, 1.0], 0.0),
    (2, [5.0, 4.0], 0.0),
    (4, [1e6, 2e-6], 0.0),
    (5, [3.0, 0.5], 0.0),
    (7, [1.0, 0.0, 0.0], 0.0),
    (11, [50.0, 25.0, 1.5], 0.0),
    (12, [1.0, 10.0, 1.0], 0.0),
    (12, [10.0, 1.0, -1.0], 0.0),
    (13, [0.0, 0.0, 0.0, 0.0], 0.0),
    (14, [1.0, 1.0, 1.0, 1.0], 0.0),
    (18, [1.0, 10.0, 1.0, 5.0, 4.0, 3.0], 0.0),
    (21, [1.0] * 10, 0.0),
    (25, [1.0] * 10, 0.0),
    (26, [0.0] * 10, 0.0),
    (27, [1.0] * 10, 0.0),
    (27, [0.0] * 9 + [11.0], 1.0),
    (32, [-1.0] * 10, 10.0),
])
def test_known_minimisers(number, x, f):
    assert _close(_sum_sq(get(number), x), f)


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: str(p.number))
def test_minpack_lm_reaches_optimum(p):
    fun = jax.jit(lambda x: p.residual(x, None))
    jac = jax.jit(jax.jacfwd(lambda x: p.residual(x, None)))
    res = least_squares(lambda x: np.asarray(fun(x)), p.x0, jac=lambda x: np.asarray(jac(x)),
                        method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=20000)
    f = float(np.sum(res.fun ** 2))
    if p.number in LM_REACHES_LOCAL:
        target = LM_REACHES_LOCAL[p.number]
        assert any(_close(target, v) for v in p.local_f)
        assert _close(f, target), f
    else:
        assert _close(f, p.f_star), (f, p.f_star)
