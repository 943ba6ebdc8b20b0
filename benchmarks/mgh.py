"""The 35 test problems of Moré, Garbow and Hillstrom as nonlinear least-squares residuals.

J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization software",
ACM Transactions on Mathematical Software 7(1):17-41, 1981 (called "the paper" below).

Each problem is `f(x) = sum_i r_i(x)**2` with the residuals `r(x) = residual(x, args)` (a 1-D
array of length `m`; `args` is unused and may be None), the paper's standard starting point `x0`
and its optimal sum of squares `f_star`. Where the paper gives a minimum only to six digits,
`f_star` is that minimum refined here in float64 (a tight Levenberg-Marquardt solve from the
paper's minimiser region), and `PUBLISHED[number]` holds the value as printed in the paper;
the two agree to the printed digits (tests/test_mgh.py checks this). `local_f` lists the
sums of squares of other stationary values the paper documents (e.g. Freudenstein-Roth's
local minimum 48.9842...), which a local method may legitimately reach.

Sizes of the problems whose dimension the paper leaves free:

- 11 Gulf research and development: n = 3, m = 99 (the paper: 3 <= m <= 100; m = 100 would put
  a data point exactly at the solution's x2 = 25, where |y - x2|**x3 is not differentiable).
- 12 Box three-dimensional: m = 10.
- 20 Watson: n = 6 (the paper lists n = 6, 9, 12).
- 21 extended Rosenbrock, 25 variably dimensioned, 26 trigonometric, 27 Brown almost-linear,
  28 discrete boundary value, 29 discrete integral equation, 30 Broyden tridiagonal,
  31 Broyden banded: n = m' = 10 (m as the problem's definition implies).
- 22 extended Powell singular: n = 12 (a multiple of 4 is required).
- 23 penalty I, 24 penalty II: n = 10 (the paper lists n = 4 and 10).
- 32 linear full rank, 33 linear rank 1, 34 linear rank 1 with zero columns and rows:
  n = 10, m = 20.
- 35 Chebyquad: n = m = 10 (the paper lists n = 1..10 with m = n).

Only jax, numpy and the standard library are imported, so tests can import this module as
`from benchmarks.mgh import get` without touching sys.path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Problem:
    """One test problem: `sum(residual(x, None)**2)` is minimised from `x0`."""

    number: int  # MGH numbering 1..35
    name: str
    residual: Callable  # residual(x, args) -> 1-D array of length m
    x0: np.ndarray  # the paper's standard starting point, float64
    m: int
    f_star: float  # optimal sum of squares sum(r**2) (not 0.5 * sum)
    local_f: tuple = ()  # sums of squares at other minima the paper documents

    @property
    def n(self) -> int:
        """Number of parameters."""
        return int(self.x0.shape[0])


def _f64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


# ------------------------------------------------------------------------------ data tables
# Typed from the paper; the index i of the paper is 1-based and is the position + 1 here.

_BARD_Y = _f64([0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39,
                0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39])

# Gaussian: y_i for i = 1..15 is symmetric about i = 8.
_GAUSS_Y = _f64([0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989,
                 0.3521, 0.2420, 0.1295, 0.0540, 0.0175, 0.0044, 0.0009])

_MEYER_Y = _f64([34780, 28610, 23650, 19630, 16370, 13720, 11540, 9744,
                 8261, 7030, 6005, 5147, 4427, 3820, 3307, 2872])

_KOWALIK_Y = _f64([0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627,
                   0.0456, 0.0342, 0.0323, 0.0235, 0.0246])
_KOWALIK_U = _f64([4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625])

_OSBORNE1_Y = _f64([0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784,
                    0.751, 0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522,
                    0.506, 0.490, 0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420,
                    0.414, 0.411, 0.406])

_OSBORNE2_Y = _f64([1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725,
                    0.746, 0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724,
                    0.649, 0.649, 0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495,
                    0.500, 0.423, 0.395, 0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429,
                    0.523, 0.562, 0.607, 0.653, 0.672, 0.708, 0.633, 0.668, 0.645, 0.632,
                    0.591, 0.559, 0.597, 0.625, 0.739, 0.710, 0.729, 0.720, 0.636, 0.581,
                    0.428, 0.292, 0.162, 0.098, 0.054])


# --------------------------------------------------------------------------- fixed size


def _rosenbrock(x, args):
    return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def _freudenstein_roth(x, args):
    x1, x2 = x[0], x[1]
    return jnp.stack([-13.0 + x1 + ((5.0 - x2) * x2 - 2.0) * x2,
                      -29.0 + x1 + ((x2 + 1.0) * x2 - 14.0) * x2])


def _powell_badly_scaled(x, args):
    return jnp.stack([1e4 * x[0] * x[1] - 1.0, jnp.exp(-x[0]) + jnp.exp(-x[1]) - 1.0001])


def _brown_badly_scaled(x, args):
    return jnp.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])


def _beale(x, args):
    i = jnp.arange(1, 4, dtype=x.dtype)
    y = jnp.asarray([1.5, 2.25, 2.625], dtype=x.dtype)
    return y - x[0] * (1.0 - x[1] ** i)


def _jennrich_sampson(x, args):
    i = jnp.arange(1, 11, dtype=x.dtype)
    return 2.0 + 2.0 * i - (jnp.exp(i * x[0]) + jnp.exp(i * x[1]))


def _helical_valley(x, args):
    x1, x2, x3 = x[0], x[1], x[2]
    # theta = arctan(x2/x1)/(2 pi), plus 1/2 when x1 < 0 (the paper's definition, which is
    # not atan2: it jumps by 1 across x1 < 0, x2 = 0). x1 = 0 is excluded by the paper; the
    # safe denominator only keeps the value finite there.
    safe_x1 = jnp.where(x1 == 0.0, 1e-300, x1)
    theta = jnp.arctan(x2 / safe_x1) / (2.0 * jnp.pi) + jnp.where(x1 < 0.0, 0.5, 0.0)
    return jnp.stack([10.0 * (x3 - 10.0 * theta),
                      10.0 * (jnp.sqrt(x1 ** 2 + x2 ** 2) - 1.0),
                      x3])


def _bard(x, args):
    u = jnp.arange(1, 16, dtype=x.dtype)
    v = 16.0 - u
    w = jnp.minimum(u, v)
    return jnp.asarray(_BARD_Y, dtype=x.dtype) - (x[0] + u / (v * x[1] + w * x[2]))


def _gaussian(x, args):
    t = (8.0 - jnp.arange(1, 16, dtype=x.dtype)) / 2.0
    return x[0] * jnp.exp(-x[1] * (t - x[2]) ** 2 / 2.0) - jnp.asarray(_GAUSS_Y, dtype=x.dtype)


def _meyer(x, args):
    t = 45.0 + 5.0 * jnp.arange(1, 17, dtype=x.dtype)
    return x[0] * jnp.exp(x[1] / (t + x[2])) - jnp.asarray(_MEYER_Y, dtype=x.dtype)


_GULF_M = 99


def _gulf(x, args):
    t = jnp.arange(1, _GULF_M + 1, dtype=x.dtype) / 100.0
    y = 25.0 + (-50.0 * jnp.log(t)) ** (2.0 / 3.0)
    return jnp.exp(-(jnp.abs(y - x[1]) ** x[2]) / x[0]) - t


_BOX_M = 10


def _box3d(x, args):
    t = 0.1 * jnp.arange(1, _BOX_M + 1, dtype=x.dtype)
    return (jnp.exp(-t * x[0]) - jnp.exp(-t * x[1])
            - x[2] * (jnp.exp(-t) - jnp.exp(-10.0 * t)))


def _powell_singular(x, args):
    return jnp.stack([x[0] + 10.0 * x[1],
                      jnp.sqrt(5.0) * (x[2] - x[3]),
                      (x[1] - 2.0 * x[2]) ** 2,
                      jnp.sqrt(10.0) * (x[0] - x[3]) ** 2])


def _wood(x, args):
    return jnp.stack([10.0 * (x[1] - x[0] ** 2),
                      1.0 - x[0],
                      jnp.sqrt(90.0) * (x[3] - x[2] ** 2),
                      1.0 - x[2],
                      jnp.sqrt(10.0) * (x[1] + x[3] - 2.0),
                      (x[1] - x[3]) / jnp.sqrt(10.0)])


def _kowalik_osborne(x, args):
    u = jnp.asarray(_KOWALIK_U, dtype=x.dtype)
    y = jnp.asarray(_KOWALIK_Y, dtype=x.dtype)
    return y - x[0] * (u ** 2 + u * x[1]) / (u ** 2 + u * x[2] + x[3])


def _brown_dennis(x, args):
    t = jnp.arange(1, 21, dtype=x.dtype) / 5.0
    return ((x[0] + t * x[1] - jnp.exp(t)) ** 2
            + (x[2] + x[3] * jnp.sin(t) - jnp.cos(t)) ** 2)


def _osborne1(x, args):
    t = 10.0 * jnp.arange(33, dtype=x.dtype)
    y = jnp.asarray(_OSBORNE1_Y, dtype=x.dtype)
    return y - (x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4]))


def _biggs_exp6(x, args):
    t = 0.1 * jnp.arange(1, 14, dtype=x.dtype)
    y = jnp.exp(-t) - 5.0 * jnp.exp(-10.0 * t) + 3.0 * jnp.exp(-4.0 * t)
    return (x[2] * jnp.exp(-t * x[0]) - x[3] * jnp.exp(-t * x[1])
            + x[5] * jnp.exp(-t * x[4]) - y)


def _osborne2(x, args):
    t = jnp.arange(65, dtype=x.dtype) / 10.0
    y = jnp.asarray(_OSBORNE2_Y, dtype=x.dtype)
    model = (x[0] * jnp.exp(-t * x[4])
             + x[1] * jnp.exp(-((t - x[8]) ** 2) * x[5])
             + x[2] * jnp.exp(-((t - x[9]) ** 2) * x[6])
             + x[3] * jnp.exp(-((t - x[10]) ** 2) * x[7]))
    return y - model


def _watson(x, args):
    n = x.shape[0]
    t = jnp.arange(1, 30, dtype=x.dtype)[:, None] / 29.0
    j = jnp.arange(1, n + 1, dtype=x.dtype)[None, :]
    # sum_{j=2}^n (j-1) x_j t^(j-2) and sum_{j=1}^n x_j t^(j-1); the j = 1 term of the first
    # sum is multiplied by 0, and t^(-1) is finite since t > 0.
    s1 = jnp.sum((j - 1.0) * x[None, :] * t ** (j - 2.0), axis=1)
    s2 = jnp.sum(x[None, :] * t ** (j - 1.0), axis=1)
    head = s1 - s2 ** 2 - 1.0
    return jnp.concatenate([head, jnp.stack([x[0], x[1] - x[0] ** 2 - 1.0])])


# ----------------------------------------------------------------------- variable size


def _extended_rosenbrock(x, args):
    odd, even = x[0::2], x[1::2]
    # Interleave f_{2i-1}, f_{2i} as the paper orders them.
    return jnp.stack([10.0 * (even - odd ** 2), 1.0 - odd], axis=1).reshape(-1)


def _extended_powell(x, args):
    a, b, c, d = x[0::4], x[1::4], x[2::4], x[3::4]
    return jnp.stack([a + 10.0 * b,
                      jnp.sqrt(5.0) * (c - d),
                      (b - 2.0 * c) ** 2,
                      jnp.sqrt(10.0) * (a - d) ** 2], axis=1).reshape(-1)


def _penalty1(x, args):
    a = 1e-5
    return jnp.concatenate([jnp.sqrt(a) * (x - 1.0), jnp.sum(x ** 2)[None] - 0.25])


def _penalty2(x, args):
    n = x.shape[0]
    a = 1e-5
    i = jnp.arange(2, n + 1, dtype=x.dtype)
    y = jnp.exp(i / 10.0) + jnp.exp((i - 1.0) / 10.0)
    e = jnp.exp(x / 10.0)
    mid = jnp.sqrt(a) * (e[1:] + e[:-1] - y)  # i = 2..n
    tail = jnp.sqrt(a) * (e[1:] - jnp.exp(-0.1))  # i = n+1..2n-1 uses x_{i-n+1} = x_2..x_n
    weights = jnp.arange(n, 0, -1, dtype=x.dtype)  # n - j + 1
    last = jnp.sum(weights * x ** 2) - 1.0
    return jnp.concatenate([(x[0] - 0.2)[None], mid, tail, last[None]])


def _variably_dimensioned(x, args):
    j = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
    s = jnp.sum(j * (x - 1.0))
    return jnp.concatenate([x - 1.0, jnp.stack([s, s ** 2])])


def _trigonometric(x, args):
    n = x.shape[0]
    i = jnp.arange(1, n + 1, dtype=x.dtype)
    return n - jnp.sum(jnp.cos(x)) + i * (1.0 - jnp.cos(x)) - jnp.sin(x)


def _brown_almost_linear(x, args):
    n = x.shape[0]
    head = x[:-1] + jnp.sum(x) - (n + 1.0)
    return jnp.concatenate([head, (jnp.prod(x) - 1.0)[None]])


def _grid(n, dtype):
    h = 1.0 / (n + 1)
    return h, h * jnp.arange(1, n + 1, dtype=dtype)


def _discrete_bvp(x, args):
    n = x.shape[0]
    h, t = _grid(n, x.dtype)
    zero = jnp.zeros((1,), x.dtype)
    left = jnp.concatenate([zero, x[:-1]])  # x_0 = 0
    right = jnp.concatenate([x[1:], zero])  # x_{n+1} = 0
    return 2.0 * x - left - right + h ** 2 * (x + t + 1.0) ** 3 / 2.0


def _discrete_integral(x, args):
    n = x.shape[0]
    h, t = _grid(n, x.dtype)
    c = (x + t + 1.0) ** 3
    lower = jnp.cumsum(t * c)  # sum_{j<=i} t_j c_j
    upper_all = jnp.cumsum(((1.0 - t) * c)[::-1])[::-1]  # sum_{j>=i} (1-t_j) c_j
    upper = jnp.concatenate([upper_all[1:], jnp.zeros((1,), x.dtype)])  # sum_{j>i}
    return x + h * ((1.0 - t) * lower + t * upper) / 2.0


def _broyden_tridiagonal(x, args):
    zero = jnp.zeros((1,), x.dtype)
    left = jnp.concatenate([zero, x[:-1]])
    right = jnp.concatenate([x[1:], zero])
    return (3.0 - 2.0 * x) * x - left - 2.0 * right + 1.0


def _broyden_banded(x, args):
    n = x.shape[0]
    ml, mu = 5, 1
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    band = ((j >= i - ml) & (j <= i + mu) & (j != i)).astype(np.float64)
    return x * (2.0 + 5.0 * x ** 2) + 1.0 - jnp.asarray(band, x.dtype) @ (x * (1.0 + x))


_LIN_M = 20


def _linear_full_rank(x, args):
    n = x.shape[0]
    s = jnp.sum(x)
    head = x - 2.0 * s / _LIN_M - 1.0
    tail = jnp.full((_LIN_M - n,), -2.0 * s / _LIN_M - 1.0, x.dtype)
    return jnp.concatenate([head, tail])


def _linear_rank1(x, args):
    j = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
    i = jnp.arange(1, _LIN_M + 1, dtype=x.dtype)
    return i * jnp.sum(j * x) - 1.0


def _linear_rank1_zero(x, args):
    n = x.shape[0]
    j = jnp.arange(2, n, dtype=x.dtype)  # j = 2..n-1
    s = jnp.sum(j * x[1:-1])
    i = jnp.arange(2, _LIN_M, dtype=x.dtype)  # i = 2..m-1
    mid = (i - 1.0) * s - 1.0
    minus_one = -jnp.ones((1,), x.dtype)
    return jnp.concatenate([minus_one, mid, minus_one])


def _chebyquad(x, args):
    n = x.shape[0]
    m = n
    # Shifted Chebyshev polynomials T_i(2x - 1) by the three-term recurrence, i = 1..m.
    z = 2.0 * x - 1.0
    t_prev, t_cur = jnp.ones_like(z), z
    rows = [t_cur]
    for _ in range(2, m + 1):
        t_prev, t_cur = t_cur, 2.0 * z * t_cur - t_prev
        rows.append(t_cur)
    means = jnp.stack(rows) @ jnp.full((n,), 1.0 / n, x.dtype)
    i = np.arange(1, m + 1)
    # Integral of T_i(2x - 1) over [0, 1]: 0 for odd i, -1/(i^2 - 1) for even i.
    integrals = np.zeros(m)
    even = i % 2 == 0
    integrals[even] = -1.0 / (i[even].astype(np.float64) ** 2 - 1.0)
    return means - jnp.asarray(integrals, x.dtype)


# ---------------------------------------------------------------------------- the set

# The values as printed in the paper (sum of squares), for the problems whose f_star below is
# a float64 refinement of a six-digit published value.
PUBLISHED: dict[int, float] = {
    6: 124.362, 8: 8.21487e-3, 9: 1.12793e-8, 10: 87.9458, 15: 3.07505e-4, 16: 85822.2,
    17: 5.46489e-5, 19: 4.01377e-2, 20: 2.28767e-3, 23: 7.08765e-5, 24: 2.93660e-4,
    35: 6.50395e-3,
}

_N = 10


def _ones(n, value=1.0):
    return np.full(n, value, dtype=np.float64)


def _bvp_x0(n):
    t = np.arange(1, n + 1, dtype=np.float64) / (n + 1)
    return t * (t - 1.0)


def _make() -> list[Problem]:
    n = _N
    m = _LIN_M
    return [
        Problem(1, "Rosenbrock", _rosenbrock, _f64([-1.2, 1.0]), 2, 0.0),
        Problem(2, "Freudenstein and Roth", _freudenstein_roth, _f64([0.5, -2.0]), 2, 0.0,
                (48.98425367924,)),
        Problem(3, "Powell badly scaled", _powell_badly_scaled, _f64([0.0, 1.0]), 2, 0.0),
        Problem(4, "Brown badly scaled", _brown_badly_scaled, _f64([1.0, 1.0]), 3, 0.0),
        Problem(5, "Beale", _beale, _f64([1.0, 1.0]), 3, 0.0),
        Problem(6, "Jennrich and Sampson", _jennrich_sampson, _f64([0.3, 0.4]), 10,
                124.36218235561),
        Problem(7, "Helical valley", _helical_valley, _f64([-1.0, 0.0, 0.0]), 3, 0.0),
        # Bard: the paper also documents f = 17.4286 at (0.8406, -inf, -inf), where the
        # residuals tend to y - mean(y), so f = sum((y - mean(y))**2).
        Problem(8, "Bard", _bard, _f64([1.0, 1.0, 1.0]), 15, 8.214877306579e-3,
                (17.428693333333,)),
        Problem(9, "Gaussian", _gaussian, _f64([0.4, 1.0, 0.0]), 15, 1.127932769619e-8),
        Problem(10, "Meyer", _meyer, _f64([0.02, 4000.0, 250.0]), 16, 87.945855170674),
        Problem(11, "Gulf research and development", _gulf, _f64([5.0, 2.5, 0.15]), _GULF_M,
                0.0),
        Problem(12, "Box three-dimensional", _box3d, _f64([0.0, 10.0, 20.0]), _BOX_M, 0.0),
        Problem(13, "Powell singular", _powell_singular, _f64([3.0, -1.0, 0.0, 1.0]), 4, 0.0),
        Problem(14, "Wood", _wood, _f64([-3.0, -1.0, -3.0, -1.0]), 6, 0.0),
        # Kowalik-Osborne: the paper also documents f = 1.02734e-3 at (+inf, -14.07, -inf,
        # -inf).
        Problem(15, "Kowalik and Osborne", _kowalik_osborne, _f64([0.25, 0.39, 0.415, 0.39]),
                11, 3.075056038492e-4, (1.02734e-3,)),
        Problem(16, "Brown and Dennis", _brown_dennis, _f64([25.0, 5.0, -5.0, -1.0]), 20,
                85822.201626357),
        Problem(17, "Osborne 1", _osborne1, _f64([0.5, 1.5, -1.0, 0.01, 0.02]), 33,
                5.464894697483e-5),
        # Biggs EXP6: f = 0 at (1, 10, 1, 5, 4, 3); the paper also documents the local
        # minimum f = 5.65565e-3 for m = 13.
        Problem(18, "Biggs EXP6", _biggs_exp6, _f64([1.0, 2.0, 1.0, 1.0, 1.0, 1.0]), 13, 0.0,
                (5.6556499e-3,)),
        Problem(19, "Osborne 2", _osborne2,
                _f64([1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5]), 65,
                4.013773629355e-2),
        Problem(20, "Watson", _watson, np.zeros(6), 31, 2.287670053552e-3),
        Problem(21, "Extended Rosenbrock", _extended_rosenbrock,
                np.tile(_f64([-1.2, 1.0]), n // 2), n, 0.0),
        Problem(22, "Extended Powell singular", _extended_powell,
                np.tile(_f64([3.0, -1.0, 0.0, 1.0]), 3), 12, 0.0),
        Problem(23, "Penalty I", _penalty1, np.arange(1, n + 1, dtype=np.float64), n + 1,
                7.087651467090e-5),
        Problem(24, "Penalty II", _penalty2, _ones(n, 0.5), 2 * n, 2.936605374567e-4),
        Problem(25, "Variably dimensioned", _variably_dimensioned,
                1.0 - np.arange(1, n + 1, dtype=np.float64) / n, n + 2, 0.0),
        # Trigonometric: the paper gives only f = 0. For n = 10 a local minimum with
        # f = 2.79506e-5 is reported in later published results of MINPACK-type codes (and
        # MINPACK's lmder reaches it from x0); it is listed so such a run is not a failure.
        Problem(26, "Trigonometric", _trigonometric, _ones(n, 1.0 / n), n, 0.0,
                (2.795056121879e-5,)),
        # Brown almost-linear: the paper also documents f = 1 at (0, ..., 0, n + 1).
        Problem(27, "Brown almost-linear", _brown_almost_linear, _ones(n, 0.5), n, 0.0,
                (1.0,)),
        Problem(28, "Discrete boundary value", _discrete_bvp, _bvp_x0(n), n, 0.0),
        Problem(29, "Discrete integral equation", _discrete_integral, _bvp_x0(n), n, 0.0),
        Problem(30, "Broyden tridiagonal", _broyden_tridiagonal, _ones(n, -1.0), n, 0.0),
        Problem(31, "Broyden banded", _broyden_banded, _ones(n, -1.0), n, 0.0),
        Problem(32, "Linear function - full rank", _linear_full_rank, _ones(n), m,
                float(m - n)),
        Problem(33, "Linear function - rank 1", _linear_rank1, _ones(n), m,
                m * (m - 1) / (2.0 * (2 * m + 1))),
        Problem(34, "Linear function - rank 1 with zero columns and rows", _linear_rank1_zero,
                _ones(n), m, (m * m + 3 * m - 6) / (2.0 * (2 * m - 3))),
        Problem(35, "Chebyquad", _chebyquad,
                np.arange(1, n + 1, dtype=np.float64) / (n + 1), n, 6.503954800882e-3),
    ]


PROBLEMS: list[Problem] = _make()
_BY_NAME = {p.name.lower(): p for p in PROBLEMS}


def get(key) -> Problem:
    """The problem with MGH number `key` (int) or name `key` (str, case-insensitive)."""
    if isinstance(key, (int, np.integer)):
        if not 1 <= int(key) <= len(PROBLEMS):
            raise KeyError(f"no MGH problem number {key}")
        return PROBLEMS[int(key) - 1]
    try:
        return _BY_NAME[str(key).lower()]
    except KeyError:
        raise KeyError(f"no MGH problem named {key!r}") from None
