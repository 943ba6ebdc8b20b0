"""The interface of the constrained solvers and the result of their loop."""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax

from .._results import RESULTS
from .._validate import check_tolerance
from ._problem import Problem


class ConstrainedOutput(eqx.Module):
    """What a constrained solver's `run` returns: the point, the multipliers of the
    equalities (λ, m entries) and inequalities (μ ≥ 0, p entries), the status, the number of
    outer steps and solver-specific statistics (int32 counts, or residual-like scalars)."""

    x: jax.Array
    lam: jax.Array
    mu: jax.Array
    result: RESULTS
    num_steps: jax.Array
    stats: dict


class AbstractConstrainedSolver(eqx.Module):
    """Base class of the solvers of `jaxopt2.minimize_constrained`.

    Subclasses declare `rtol` and `atol`: the solve succeeds when every KKT residual is
    within atol + rtol·scale (`_problem.converged`), and say which constraints they take
    through `supports_inequality` and `supports_bounds`."""

    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float]
    supports_inequality: ClassVar[bool] = False
    supports_bounds: ClassVar[bool] = False

    def __check_init__(self):
        check_tolerance("rtol", self.rtol, allow_none=True)
        check_tolerance("atol", self.atol)

    @abc.abstractmethod
    def run(self, problem: Problem, x0: jax.Array, args, max_steps: int) -> ConstrainedOutput:
        """Solve from the flat start `x0` (inside the box) in at most `max_steps` outer
        steps."""
