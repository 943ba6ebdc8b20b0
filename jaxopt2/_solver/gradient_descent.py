"""Gradient descent with Armijo backtracking: the simplest solver through the shared loop."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._base import AbstractMinimizer, Iterate
from .._linesearch import backtracking
from .._results import RESULTS
from .._tree import tree_neg
from .._validate import check_line_search, check_number, check_positive, check_tolerances


class _GDState(eqx.Module):
    step_size: jax.Array


class GradientDescent(AbstractMinimizer):
    """Steepest descent, xₖ₊₁ = xₖ − tₖ ∇f(xₖ), with tₖ from Armijo backtracking
    (f(xₖ₊₁) ≤ f(xₖ) − c₁ tₖ ‖∇f(xₖ)‖²). Each step starts its search at `grow` times the last
    accepted step, so the step size adapts up as well as down.

    Linear convergence at a rate set by the condition number: use it as a baseline, or for
    problems where curvature is useless; prefer `LBFGS` or `NewtonCG` otherwise.

    ```python
    sol = jaxopt2.minimize(lambda x, a: jnp.sum((x - a) ** 2), jnp.zeros(3), jnp.ones(3),
                           solver=jaxopt2.GradientDescent())
    ```
    """

    first_step_scale_free: ClassVar[bool] = False  # Armijo alone accepts tiny steps anywhere

    rtol: float | None = None
    atol: float = 0.0
    step_size: float = 1.0
    grow: float = 2.0
    c1: float = 1e-4
    max_backtracks: int = 40

    def __check_init__(self):
        check_tolerances(self)
        check_line_search(self)
        check_positive("step_size", self.step_size)
        check_number("grow", self.grow, low=1.0)

    def init(self, fn, iterate: Iterate, args) -> _GDState:
        return _GDState(jnp.asarray(self.step_size, iterate.value.dtype))

    def step(self, fn, iterate: Iterate, args, state: _GDState):
        direction = tree_neg(iterate.grad)
        ls = backtracking(fn, iterate, direction, args, state.step_size * self.grow,
                          c1=self.c1, max_trials=self.max_backtracks)
        result = RESULTS.where(ls.ok, RESULTS.successful, RESULTS.line_search_failed)
        next_step = jnp.where(ls.ok, ls.step_size, state.step_size)
        return ls.iterate, _GDState(next_step), ls.counts, result


