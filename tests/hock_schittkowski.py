"""Hock–Schittkowski test problems for the constrained solvers.

Coded from W. Hock and K. Schittkowski, "Test Examples for Nonlinear Programming Codes",
Lecture Notes in Economics and Mathematical Systems 187, Springer 1981: the start x0, the
objective, the constraints in jaxopt2's convention (eq(x) = 0, ineq(x) ≤ 0: the book writes
g(x) ≥ 0, so ineq = −g), the bounds, the optimal value f* and a solution x* as printed.
Every function takes `(x, args)` with `args` unused, so they plug into
`jaxopt2.minimize_constrained` directly; `x0` is a tuple of floats (cast to the dtype of the
test). `numpy_functions` gives NumPy versions for the reference solvers of the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

SQ2 = math.sqrt(2.0)


class HSProblem(NamedTuple):
    number: int
    x0: tuple
    fun: Callable
    eq: Callable | None
    ineq: Callable | None
    bounds: tuple | None  # (lower, upper) tuples of floats (±inf where unbounded)
    f_star: float
    x_star: tuple | None  # a published solution (None where the optimum is not unique)


def _hs(number, x0, fun, eq=None, ineq=None, bounds=None, *, f_star, x_star=None):
    return HSProblem(number, tuple(float(v) for v in x0), fun, eq, ineq, bounds, f_star,
                     None if x_star is None else tuple(float(v) for v in x_star))


def _stack(*parts):
    return jnp.stack(list(parts))


PROBLEMS = {
    6: _hs(6, (-1.2, 1.0), lambda x, _: (1 - x[0]) ** 2,
           eq=lambda x, _: _stack(10 * (x[1] - x[0] ** 2)),
           f_star=0.0, x_star=(1, 1)),
    7: _hs(7, (2.0, 2.0), lambda x, _: jnp.log(1 + x[0] ** 2) - x[1],
           eq=lambda x, _: _stack((1 + x[0] ** 2) ** 2 + x[1] ** 2 - 4),
           f_star=-math.sqrt(3.0), x_star=(0, math.sqrt(3.0))),
    # x* = (12k − 3, 16k − 4) for any integer k: only f* is unique.
    9: _hs(9, (0.0, 0.0), lambda x, _: jnp.sin(jnp.pi * x[0] / 12) * jnp.cos(jnp.pi * x[1] / 16),
           eq=lambda x, _: _stack(4 * x[0] - 3 * x[1]),
           f_star=-0.5),
    14: _hs(14, (2.0, 2.0), lambda x, _: (x[0] - 2) ** 2 + (x[1] - 1) ** 2,
            eq=lambda x, _: _stack(x[0] - 2 * x[1] + 1),
            ineq=lambda x, _: _stack(x[0] ** 2 / 4 + x[1] ** 2 - 1),
            f_star=9 - 2.875 * math.sqrt(7.0),
            x_star=(0.5 * (math.sqrt(7.0) - 1), 0.25 * (math.sqrt(7.0) + 1))),
    26: _hs(26, (-2.6, 2.0, 2.0), lambda x, _: (x[0] - x[1]) ** 2 + (x[1] - x[2]) ** 4,
            eq=lambda x, _: _stack((1 + x[1] ** 2) * x[0] + x[2] ** 4 - 3),
            f_star=0.0, x_star=(1, 1, 1)),
    27: _hs(27, (2.0, 2.0, 2.0), lambda x, _: 0.01 * (x[0] - 1) ** 2 + (x[1] - x[0] ** 2) ** 2,
            eq=lambda x, _: _stack(x[0] + x[2] ** 2 + 1),
            f_star=0.04, x_star=(-1, 1, 0)),
    28: _hs(28, (-4.0, 1.0, 1.0), lambda x, _: (x[0] + x[1]) ** 2 + (x[1] + x[2]) ** 2,
            eq=lambda x, _: _stack(x[0] + 2 * x[1] + 3 * x[2] - 1),
            f_star=0.0, x_star=(0.5, -0.5, 0.5)),
    39: _hs(39, (2.0, 2.0, 2.0, 2.0), lambda x, _: -x[0],
            eq=lambda x, _: _stack(x[1] - x[0] ** 3 - x[2] ** 2, x[0] ** 2 - x[1] - x[3] ** 2),
            f_star=-1.0, x_star=(1, 1, 0, 0)),
    40: _hs(40, (0.8, 0.8, 0.8, 0.8), lambda x, _: -x[0] * x[1] * x[2] * x[3],
            eq=lambda x, _: _stack(x[0] ** 3 + x[1] ** 2 - 1, x[0] ** 2 * x[3] - x[2],
                                   x[3] ** 2 - x[1]),
            f_star=-0.25,
            x_star=(2 ** (-1 / 3), 2 ** (-1 / 2), 2 ** (-11 / 12), 2 ** (-1 / 4))),
    42: _hs(42, (1.0, 1.0, 1.0, 1.0),
            lambda x, _: (x[0] - 1) ** 2 + (x[1] - 2) ** 2 + (x[2] - 3) ** 2 + (x[3] - 4) ** 2,
            eq=lambda x, _: _stack(x[0] - 2, x[2] ** 2 + x[3] ** 2 - 2),
            f_star=28 - 10 * SQ2, x_star=(2, 2, 0.6 * SQ2, 0.8 * SQ2)),
    43: _hs(43, (0.0, 0.0, 0.0, 0.0),
            lambda x, _: (x[0] ** 2 + x[1] ** 2 + 2 * x[2] ** 2 + x[3] ** 2 - 5 * x[0]
                          - 5 * x[1] - 21 * x[2] + 7 * x[3]),
            ineq=lambda x, _: -_stack(
                8 - x[0] ** 2 - x[1] ** 2 - x[2] ** 2 - x[3] ** 2 - x[0] + x[1] - x[2] + x[3],
                10 - x[0] ** 2 - 2 * x[1] ** 2 - x[2] ** 2 - 2 * x[3] ** 2 + x[0] + x[3],
                5 - 2 * x[0] ** 2 - x[1] ** 2 - x[2] ** 2 - 2 * x[0] + x[1] + x[3]),
            f_star=-44.0, x_star=(0, 1, 2, -1)),
    46: _hs(46, (0.5 * SQ2, 1.75, 0.5, 2.0, 2.0),
            lambda x, _: ((x[0] - x[1]) ** 2 + (x[2] - 1) ** 2 + (x[3] - 1) ** 4
                          + (x[4] - 1) ** 6),
            eq=lambda x, _: _stack(x[0] ** 2 * x[3] + jnp.sin(x[3] - x[4]) - 1,
                                   x[1] + x[2] ** 4 * x[3] ** 2 - 2),
            f_star=0.0, x_star=(1, 1, 1, 1, 1)),
    47: _hs(47, (2.0, SQ2, -1.0, 2 - SQ2, 0.5),
            lambda x, _: ((x[0] - x[1]) ** 2 + (x[1] - x[2]) ** 3 + (x[2] - x[3]) ** 4
                          + (x[3] - x[4]) ** 4),
            eq=lambda x, _: _stack(x[0] + x[1] ** 2 + x[2] ** 3 - 3,
                                   x[1] - x[2] ** 2 + x[3] - 1, x[0] * x[4] - 1),
            f_star=0.0, x_star=(1, 1, 1, 1, 1)),
    48: _hs(48, (3.0, 5.0, -3.0, 2.0, -2.0),
            lambda x, _: (x[0] - 1) ** 2 + (x[1] - x[2]) ** 2 + (x[3] - x[4]) ** 2,
            eq=lambda x, _: _stack(jnp.sum(x) - 5, x[2] - 2 * (x[3] + x[4]) + 3),
            f_star=0.0, x_star=(1, 1, 1, 1, 1)),
    49: _hs(49, (10.0, 7.0, 2.0, -3.0, 0.8),
            lambda x, _: ((x[0] - x[1]) ** 2 + (x[2] - 1) ** 2 + (x[3] - 1) ** 4
                          + (x[4] - 1) ** 6),
            eq=lambda x, _: _stack(x[0] + x[1] + x[2] + 4 * x[3] - 7, x[2] + 5 * x[4] - 6),
            f_star=0.0, x_star=(1, 1, 1, 1, 1)),
    50: _hs(50, (35.0, -31.0, 11.0, 5.0, -5.0),
            lambda x, _: ((x[0] - x[1]) ** 2 + (x[1] - x[2]) ** 2 + (x[2] - x[3]) ** 4
                          + (x[3] - x[4]) ** 2),
            eq=lambda x, _: _stack(x[0] + 2 * x[1] + 3 * x[2] - 6, x[1] + 2 * x[2] + 3 * x[3] - 6,
                                   x[2] + 2 * x[3] + 3 * x[4] - 6),
            f_star=0.0, x_star=(1, 1, 1, 1, 1)),
    51: _hs(51, (2.5, 0.5, 2.0, -1.0, 0.5),
            lambda x, _: ((x[0] - x[1]) ** 2 + (x[1] + x[2] - 2) ** 2 + (x[3] - 1) ** 2
                          + (x[4] - 1) ** 2),
            eq=lambda x, _: _stack(x[0] + 3 * x[1] - 4, x[2] + x[3] - 2 * x[4], x[1] - x[4]),
            f_star=0.0, x_star=(1, 1, 1, 1, 1)),
    52: _hs(52, (2.0, 2.0, 2.0, 2.0, 2.0),
            lambda x, _: ((4 * x[0] - x[1]) ** 2 + (x[1] + x[2] - 2) ** 2 + (x[3] - 1) ** 2
                          + (x[4] - 1) ** 2),
            eq=lambda x, _: _stack(x[0] + 3 * x[1], x[2] + x[3] - 2 * x[4], x[1] - x[4]),
            f_star=1859 / 349, x_star=tuple(v / 349 for v in (-33, 11, 180, -158, 11))),
    61: _hs(61, (0.0, 0.0, 0.0),
            lambda x, _: (4 * x[0] ** 2 + 2 * x[1] ** 2 + 2 * x[2] ** 2 - 33 * x[0] + 16 * x[1]
                          - 24 * x[2]),
            eq=lambda x, _: _stack(3 * x[0] - 2 * x[1] ** 2 - 7, 4 * x[0] - x[2] ** 2 - 11),
            f_star=-143.6461422, x_star=(5.32677016, -2.11899864, 3.21046424)),
    71: _hs(71, (1.0, 5.0, 5.0, 1.0),
            lambda x, _: x[0] * x[3] * (x[0] + x[1] + x[2]) + x[2],
            eq=lambda x, _: _stack(jnp.sum(x**2) - 40),
            ineq=lambda x, _: _stack(25 - x[0] * x[1] * x[2] * x[3]),
            bounds=((1.0,) * 4, (5.0,) * 4),
            f_star=17.0140173, x_star=(1, 4.7429994, 3.8211503, 1.3794082)),
    77: _hs(77, (2.0,) * 5,
            lambda x, _: ((x[0] - 1) ** 2 + (x[0] - x[1]) ** 2 + (x[2] - 1) ** 2
                          + (x[3] - 1) ** 4 + (x[4] - 1) ** 6),
            eq=lambda x, _: _stack(x[0] ** 2 * x[3] + jnp.sin(x[3] - x[4]) - 2 * SQ2,
                                   x[1] + x[2] ** 4 * x[3] ** 2 - 8 - SQ2),
            f_star=0.24150513,
            x_star=(1.166172, 1.182111, 1.380257, 1.506036, 0.6109203)),
    78: _hs(78, (-2.0, 1.5, 2.0, -1.0, -1.0),
            lambda x, _: x[0] * x[1] * x[2] * x[3] * x[4],
            eq=lambda x, _: _stack(jnp.sum(x**2) - 10, x[1] * x[2] - 5 * x[3] * x[4],
                                   x[0] ** 3 + x[1] ** 3 + 1),
            f_star=-2.91970041,
            x_star=(-1.717142, 1.595708, 1.827248, -0.7636429, -0.7636435)),
    79: _hs(79, (2.0,) * 5,
            lambda x, _: ((x[0] - 1) ** 2 + (x[0] - x[1]) ** 2 + (x[1] - x[2]) ** 2
                          + (x[2] - x[3]) ** 4 + (x[3] - x[4]) ** 4),
            eq=lambda x, _: _stack(x[0] + x[1] ** 2 + x[2] ** 3 - 2 - 3 * SQ2,
                                   x[1] - x[2] ** 2 + x[3] + 2 - 2 * SQ2, x[0] * x[4] - 2),
            f_star=0.0787768209,
            x_star=(1.191127, 1.362603, 1.472818, 1.635017, 1.679081)),
    100: _hs(100, (1.0, 2.0, 0.0, 4.0, 0.0, 1.0, 1.0),
             lambda x, _: ((x[0] - 10) ** 2 + 5 * (x[1] - 12) ** 2 + x[2] ** 4
                           + 3 * (x[3] - 11) ** 2 + 10 * x[4] ** 6 + 7 * x[5] ** 2 + x[6] ** 4
                           - 4 * x[5] * x[6] - 10 * x[5] - 8 * x[6]),
             ineq=lambda x, _: -_stack(
                 127 - 2 * x[0] ** 2 - 3 * x[1] ** 4 - x[2] - 4 * x[3] ** 2 - 5 * x[4],
                 282 - 7 * x[0] - 3 * x[1] - 10 * x[2] ** 2 - x[3] + x[4],
                 196 - 23 * x[0] - x[1] ** 2 - 6 * x[5] ** 2 + 8 * x[6],
                 -4 * x[0] ** 2 - x[1] ** 2 + 3 * x[0] * x[1] - 2 * x[2] ** 2 - 5 * x[5]
                 + 11 * x[6]),
             f_star=680.6300573,
             x_star=(2.330499, 1.951372, -0.4775414, 4.365726, -0.6244870, 1.038131,
                     1.594227)),
}

EQUALITY_ONLY = tuple(k for k, p in PROBLEMS.items() if p.ineq is None and p.bounds is None)
