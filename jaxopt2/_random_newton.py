"""Pieces shared by the randomized Newton solvers (`SketchedNewton`, `SubspaceNewton`): their
state, their construction checks, and the damped Newton step on a random model of the Hessian.

Both solve a small dense system built from a random sketch or subspace, damp it until its
Cholesky factorization succeeds, and take the step with Armijo backtracking from t = 1."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from ._base import Counts, Iterate
from ._linalg import damped_cholesky
from ._linesearch import newton_line_search
from ._prng import check_seed, module_key
from ._validate import check_budget, check_line_search, check_tolerances


class RandomNewtonState(eqx.Module):
    key: jax.Array  # typed PRNG key, split once per step
    damping: jax.Array  # τ added to the random Hessian model at the last step (0 if none needed)


def check_random_newton(solver, owner: str) -> None:
    """The fields both solvers share: tolerances, the line search, `max_damping_tries`, and
    `seed` against `key`."""
    check_tolerances(solver)
    check_line_search(solver)
    check_budget("max_damping_tries", solver.max_damping_tries)
    check_seed(solver.seed, owner, solver.key)


def init_state(solver, iterate: Iterate, owner: str) -> RandomNewtonState:
    return RandomNewtonState(module_key(solver.key, solver.seed, owner),
                             jnp.zeros((), iterate.value.dtype))


def damped_newton_step(solver, fn, iterate: Iterate, args, key, h, rhs, to_params,
                       counts: Counts):
    """Solve (½(h + hᵀ) + τI) z = −rhs, τ ≥ 0 the smallest damping tried (at most
    `solver.max_damping_tries`) that makes the matrix positive definite, and search along
    the direction `to_params(z)` (a params pytree). Returns the new iterate, the next state
    (key `key`, damping τ), `counts` plus the line search's, and the line search's result."""
    factor, tau = damped_cholesky(0.5 * (h + h.T), solver.max_damping_tries)
    z = jsl.cho_solve((factor, True), -rhs)
    new, ls_counts, result = newton_line_search(fn, iterate, to_params(z), args, solver.c1,
                                                solver.max_backtracks, grad_first=True)
    state = RandomNewtonState(key, tau.astype(iterate.value.dtype))
    return new, state, counts + ls_counts, result
