"""Damped fixed-point (Picard/Krasnosel'skii–Mann) iteration."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax

from .._base import (
    AbstractFixedPointSolver,
    Counts,
    Point,
    evaluate_point,
    residual_converged,
)
from .._results import RESULTS
from .._tree import result_dtype, tree_inf_norm, tree_sub
from .._validate import check_tolerances, check_unit_interval


class _State(eqx.Module):
    residual0: jax.Array  # max|g(y0) − y0|
    residual: jax.Array  # max|g(y) − y| at the current point


class FixedPointIteration(AbstractFixedPointSolver):
    """y ← (1 − β) y + β g(y), with damping β ∈ (0, 1] (β = 1: plain Picard iteration).

    Converges linearly for a contraction (rate = its Lipschitz constant) and, with β < 1, for
    averaged nonexpansive maps. Stops when max|g(y) − y| ≤ atol + rtol · max|g(y₀) − y₀|;
    `rtol=None` is √eps of the working dtype. One evaluation of g per step.
    """

    steps_estimate_error: ClassVar[bool] = True
    # Linear convergence: a contraction of rate 0.99 needs about 1,400 steps to 1e-6.
    default_max_steps: ClassVar[int] = 5000

    damping: float = 1.0
    rtol: float | None = None
    atol: float = 0.0

    def __check_init__(self):
        check_unit_interval("damping", self.damping, high_open=False)
        check_tolerances(self)

    def _done(self, residual, residual0, y):
        return residual_converged(residual, residual0, self.rtol, self.atol, result_dtype(y))

    def init(self, fn, point: Point, args):
        r = tree_inf_norm(tree_sub(point.f, point.y))
        done = self._done(r, r, point.y)
        return _State(r, r), Counts(), done, RESULTS.successful

    def step(self, fn, point: Point, args, state: _State):
        beta = self.damping
        y = jax.tree_util.tree_map(
            lambda y, g: ((1 - beta) * y + beta * g).astype(y.dtype), point.y, point.f)
        new = evaluate_point(fn, y, args)
        r = tree_inf_norm(tree_sub(new.f, new.y))
        done = self._done(r, state.residual0, y)
        return new, _State(state.residual0, r), Counts.of(fun=1), done, RESULTS.successful
