"""Pieces shared by the randomized Newton solvers (`SketchedNewton`, `SubspaceNewton`): their
base class (the fields, checks and state they share), and the damped Newton step on a random
model of the Hessian.

Both solve a small dense system built from a random sketch or subspace, damp it until its
Cholesky factorization succeeds, and take the step with Armijo backtracking from t = 1."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from ._base import AbstractMinimizer, Counts, Iterate
from ._linalg import damped_cholesky
from ._linesearch import newton_line_search
from ._prng import check_seed, module_key
from ._validate import check_budget, check_line_search, check_tolerances


class RandomNewtonState(eqx.Module):
    key: jax.Array  # typed PRNG key, split once per step
    damping: jax.Array  # τ added to the random Hessian model at the last step (0 if none needed)


class AbstractRandomNewton(AbstractMinimizer):
    """What `SketchedNewton` and `SubspaceNewton` share: the stopping tolerances, the Armijo
    line search from t = 1 (`c1`, `max_backtracks`), the damping budget of the Cholesky
    factorization (`max_damping_tries`), `seed` as the shortcut for a `key` (which each
    subclass declares, so that its errors name the solver), and the state: the key, split
    once per step, and the last damping.

    The shared fields are keyword-only, so each solver's own fields keep their positions.
    """

    uses_curvature: ClassVar[bool] = True  # minima are checked for negative curvature

    seed: int = eqx.field(static=True, default=0, kw_only=True)
    rtol: float | None = eqx.field(default=None, kw_only=True)
    atol: float = eqx.field(default=0.0, kw_only=True)
    c1: float = eqx.field(default=1e-4, kw_only=True)
    max_backtracks: int = eqx.field(default=30, kw_only=True)
    max_damping_tries: int = eqx.field(default=12, kw_only=True)
    key: eqx.AbstractVar[jax.Array | None]

    def __check_init__(self):
        check_tolerances(self)
        check_line_search(self)
        check_budget("max_damping_tries", self.max_damping_tries)
        check_seed(self.seed, type(self).__name__, self.key)

    def init(self, fn, iterate: Iterate, args) -> RandomNewtonState:
        del fn, args
        return RandomNewtonState(module_key(self.key, self.seed, type(self).__name__),
                                 jnp.zeros((), iterate.value.dtype))


def damped_newton_step(solver, fn, iterate: Iterate, args, key, h, rhs, to_params,
                       counts: Counts):
    """Solve (½(h + hᵀ) + τI) z = −rhs, τ ≥ 0 the smallest damping tried (at most
    `solver.max_damping_tries`) that makes the matrix positive definite, and search along
    the direction `to_params(z)` (a params pytree). Returns the new iterate, the next state
    (key `key`, damping τ), `counts` plus the line search's, and the line search's result."""
    factor, tau = damped_cholesky(0.5 * (h + h.T), solver.max_damping_tries)
    z = jsl.cho_solve((factor, True), -rhs)
    # A step that leaves x unchanged in this subspace is no proof for the next, random one.
    new, ls_counts, result = newton_line_search(fn, iterate, to_params(z), args, solver.c1,
                                                solver.max_backtracks, grad_first=True,
                                                same_next=False)
    state = RandomNewtonState(key, tau.astype(iterate.value.dtype))
    return new, state, counts + ls_counts, result
