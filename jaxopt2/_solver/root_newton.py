"""Newton–Raphson for small dense systems F(y) = 0, globalised by backtracking on ½‖F‖²."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._base import AbstractRootFinder, Counts, Point, newton_root_outcome, residual_converged
from .._linalg import newton_solve, ravelled_jacobian
from .._linesearch import backtrack
from .._results import RESULTS
from .._tree import ravel, result_dtype, tree_inf_norm
from .._validate import check_line_search_solver


class _NewtonRaphsonState(eqx.Module):
    f_norm0: jax.Array  # max|F(y0)|, the scale of the relative stopping test
    step_size: jax.Array  # the line-search step of the last iteration (diagnostic)


class NewtonRaphson(AbstractRootFinder):
    """Newton's method for F(y) = 0 with a dense Jacobian, for small systems (n up to a few
    thousand unknowns).

    Each step forms J = ∂F/∂y at the ravelled y by forward-mode differentiation (`jax.jacfwd`),
    solves J p = −F by LU, and backtracks from t = 1 on the merit function φ = ½‖F‖²: the
    Newton direction is a descent direction for it, with φ'(0) = −‖F‖², so Armijo's condition
    φ(y + tp) ≤ φ(y) − c₁ t ‖F‖² can always be met. Near a root with nonsingular J the full
    step is taken and convergence is quadratic.

    When J is singular (the LU solve is not finite) the step becomes the Levenberg step
    p = −(JᵀJ + μI)⁻¹JᵀF with μ = ‖F‖, a descent direction for φ that still converges to
    roots where J is singular (Fan & Yuan, 2005). If no trial step decreases φ within
    `max_backtracks` trials, the solve stops with `RESULTS.line_search_failed` (y is then
    typically a local minimiser of ‖F‖ that is not a root); a direction that is not finite
    even after damping stops it with `RESULTS.linear_solve_failed`.

    Stops successfully when max|F(y)| ≤ atol + rtol·max|F(y₀)|; `rtol=None` is √eps of the
    working dtype. Use `NewtonKrylov` for large systems: this one costs O(n²) memory and
    O(n³) time per step.

    Counts per step: `jac` = 1 (and `fun` = 1, the primal evaluation inside `jacfwd`), plus one
    `fun` per line-search trial.

    **Arguments:**

    - `rtol`, `atol`: the stopping tolerances above.
    - `c1`: the Armijo constant (default 1e-4, the usual choice: almost any decrease of φ).
    - `max_backtracks`: line-search trials per step (default 30; the step shrinks at least
      twofold per trial).

    Reference: J. E. Dennis and R. B. Schnabel, Numerical Methods for Unconstrained
    Optimization and Nonlinear Equations, SIAM 1996, §6.5 (Algorithm 6.5.1).
    """

    steps_estimate_error: ClassVar[bool] = True

    forms_dense_matrix: ClassVar[bool] = True  # the n×n Jacobian

    rtol: float | None = None
    atol: float = 0.0
    c1: float = 1e-4
    max_backtracks: int = 30

    def __check_init__(self):
        check_line_search_solver(self)

    def init(self, fn, point: Point, args):
        f_norm0 = tree_inf_norm(point.f)
        done = residual_converged(f_norm0, f_norm0, self.rtol, self.atol, result_dtype(point.y))
        state = _NewtonRaphsonState(f_norm0, jnp.ones((), f_norm0.dtype))
        return state, Counts(), done, RESULTS.successful

    def step_fraction(self, state: _NewtonRaphsonState):
        return state.step_size

    def step(self, fn, point: Point, args, state: _NewtonRaphsonState):
        jac, unravel = ravelled_jacobian(fn, point.y, args)
        flat_f = ravel(point.f)[0].astype(jac.dtype)
        f_norm = jnp.linalg.norm(flat_f)
        p = newton_solve(jac, -flat_f, f_norm)
        finite = jnp.all(jnp.isfinite(p))
        p = jnp.where(finite, p, 0.0)
        slope = flat_f @ (jac @ p)
        phi0 = 0.5 * f_norm**2
        ls = backtrack(fn, point, unravel(p), args, phi0=phi0, slope=slope, decrease=slope,
                       c1=self.c1, max_trials=self.max_backtracks)
        new = ls.point
        done, result = newton_root_outcome(self, point, new, state.f_norm0, ls.ok, finite)
        counts = Counts.of(fun=1 + ls.num_fun, jac=1)
        return new, _NewtonRaphsonState(state.f_norm0, ls.step_size), counts, done, result
