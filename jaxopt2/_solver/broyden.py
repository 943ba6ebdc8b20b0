"""Broyden's ("good") method for F(y) = 0 with a dense approximate inverse Jacobian."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._base import AbstractRootFinder, Counts, Point, residual_converged
from .._linalg import damped_solve, ravelled_jacobian
from .._linesearch import backtrack
from .._results import RESULTS
from .._tree import ravel, result_dtype, tree_inf_norm
from .._validate import check_line_search, check_tolerances

# After a step with a stale H, a direction that does not decrease ½‖F‖² within this many
# trials is abandoned for a fresh Jacobian instead of backtracking further.
_STALE_TRIALS = 8


class _BroydenState(eqx.Module):
    f_norm0: jax.Array  # max|F(y0)|
    inv_jac: jax.Array  # H ≈ J⁻¹ on the ravelled unknowns, (n, n)
    fresh: jax.Array  # H was just (re)initialised: its step is a true Newton step
    num_resets: jax.Array  # reinitialisations after the first (diagnostic)


class Broyden(AbstractRootFinder):
    """Broyden's "good" quasi-Newton method for F(y) = 0, with a line search on ½‖F‖².

    Keeps H ≈ J⁻¹ (dense, on the ravelled unknowns: for small and moderate n, O(n²) memory)
    and steps along p = −H F. After a step s with change δ = F(y + s) − F(y), H gets the
    least-change secant update in its Sherman–Morrison form

        H ← H + (s − Hδ) sᵀH / (sᵀHδ),

    the inverse of Broyden's rank-one update of J (it enforces J s = δ while changing J as
    little as possible in the Frobenius norm). Convergence near a root is superlinear, and a
    step costs one evaluation of F and O(n²) work instead of Newton's Jacobian and O(n³) LU.

    Initialisation (`initial_jacobian`): `"exact"` (default) takes H = J(y₀)⁻¹ from one
    `jax.jacfwd` and a dense inverse (the Levenberg pseudo-inverse (JᵀJ + ‖F‖I)⁻¹Jᵀ when J is
    singular), so the first step is a Newton step; a float β takes J₀ = β·I, i.e. H = I/β,
    with no Jacobian at all (β = −1 makes the first step of a fixed-point problem
    F = g(y) − y the Picard step y ← g(y)).

    Globalisation: backtracking from t = 1 on φ = ½‖F‖², accepting
    φ(y + tp) ≤ (1 − 2c₁t)φ(y), the Newton-model decrease (p is not guaranteed to be a
    descent direction, so this is a test of actual decrease). H is reset to its
    initialisation (at the current point) when the search fails after 8 trials, or when
    the update is ill-defined (|sᵀHδ| ≤ √eps‖s‖‖Hδ‖, or a non-finite H); a failure with a
    freshly reset H stops the solve with `RESULTS.line_search_failed`, since that step was
    a Newton (or fixed-scale) step that could not decrease ‖F‖.

    Stops successfully when max|F(y)| ≤ atol + rtol·max|F(y₀)|; `rtol=None` is √eps of the
    working dtype.

    Counts: `fun` per line-search trial; `jac` = 1 (with `fun` = 1) per exact
    (re)initialisation.

    **Arguments:**

    - `rtol`, `atol`: the stopping tolerances above.
    - `initial_jacobian`: `"exact"` or a nonzero float β (see above).
    - `c1`, `max_backtracks`: line-search constant and trial budget of a fresh H (1e-4, 30).

    Reference: C. G. Broyden, "A class of methods for solving nonlinear simultaneous
    equations", Math. Comp. 19 (1965); J. E. Dennis and R. B. Schnabel, Numerical Methods for
    Unconstrained Optimization and Nonlinear Equations, SIAM 1996, §8.1–8.3.
    """

    forms_dense_matrix: ClassVar[bool] = True  # the n×n inverse Jacobian
    default_max_steps: ClassVar[int] = 1000  # quasi-Newton, as LBFGS

    rtol: float | None = None
    atol: float = 0.0
    initial_jacobian: str | float = "exact"
    c1: float = 1e-4
    max_backtracks: int = 30

    def __check_init__(self):
        check_tolerances(self)
        check_line_search(self)
        if isinstance(self.initial_jacobian, str):
            if self.initial_jacobian != "exact":
                raise ValueError(f"`initial_jacobian` must be 'exact' or a nonzero float β "
                                 f"(J₀ = β·I); got {self.initial_jacobian!r}.")
        elif not (isinstance(self.initial_jacobian, (int, float)) and self.initial_jacobian != 0):
            raise ValueError(f"`initial_jacobian` must be 'exact' or a nonzero float β "
                             f"(J₀ = β·I); got {self.initial_jacobian!r}.")

    def _initial_inverse(self, fn, point: Point, args):
        """(H, counts) at `point`."""
        flat_y = ravel(point.y)[0]
        n, dtype = flat_y.shape[0], flat_y.dtype
        if not isinstance(self.initial_jacobian, str):
            return jnp.eye(n, dtype=dtype) / self.initial_jacobian, Counts()
        jac, _ = ravelled_jacobian(fn, point.y, args)
        eye = jnp.eye(n, dtype=jac.dtype)
        inv = jnp.linalg.solve(jac, eye)
        f_norm = jnp.linalg.norm(ravel(point.f)[0])
        inv = lax.cond(jnp.all(jnp.isfinite(inv)), lambda: inv,
                       lambda: damped_solve(jac, eye, f_norm))
        return inv, Counts.of(fun=1, jac=1)

    def init(self, fn, point: Point, args):
        f_norm0 = tree_inf_norm(point.f)
        done = residual_converged(f_norm0, f_norm0, self.rtol, self.atol, result_dtype(point.y))
        inv, counts = self._initial_inverse(fn, point, args)
        state = _BroydenState(f_norm0, inv, jnp.array(True), jnp.zeros((), jnp.int32))
        return state, counts, done, RESULTS.successful

    def step(self, fn, point: Point, args, state: _BroydenState):
        flat_f, _ = ravel(point.f)
        flat_y, unravel = ravel(point.y)
        inv = state.inv_jac
        flat_f = flat_f.astype(inv.dtype)
        p = -(inv @ flat_f)
        p = jnp.where(jnp.all(jnp.isfinite(p)), p, 0.0)
        phi0 = 0.5 * flat_f @ flat_f
        trials = jnp.where(state.fresh, self.max_backtracks,
                           min(_STALE_TRIALS, self.max_backtracks))
        ls = backtrack(fn, point, unravel(p), args, phi0=phi0, slope=-2 * phi0,
                       decrease=-2 * phi0, c1=self.c1, max_trials=trials)
        new = ls.point

        # Sherman–Morrison form of Broyden's update, on the accepted step.
        s = ravel(new.y)[0].astype(inv.dtype) - flat_y.astype(inv.dtype)
        delta = ravel(new.f)[0].astype(inv.dtype) - flat_f
        h_delta = inv @ delta
        denom = s @ h_delta
        scale = jnp.linalg.norm(s) * jnp.linalg.norm(h_delta)
        well_defined = jnp.abs(denom) > jnp.sqrt(jnp.finfo(inv.dtype).eps) * scale
        safe = jnp.where(well_defined, denom, 1.0)
        updated = inv + jnp.outer(s - h_delta, s @ inv) / safe
        well_defined = well_defined & jnp.all(jnp.isfinite(updated))

        failed = ~ls.ok & state.fresh
        reset = ~failed & (~ls.ok | ~well_defined)

        def do_reset():
            return self._initial_inverse(fn, new, args)

        def keep():
            return jnp.where(ls.ok, updated, inv), Counts()

        inv_new, reset_counts = lax.cond(reset, do_reset, keep)
        converged = residual_converged(tree_inf_norm(new.f), state.f_norm0, self.rtol,
                                       self.atol, result_dtype(point.y))
        done = (converged & ls.ok) | failed
        result = RESULTS.where(failed, RESULTS.line_search_failed, RESULTS.successful)
        new_state = _BroydenState(state.f_norm0, inv_new, reset,
                                  state.num_resets + reset.astype(jnp.int32))
        return new, new_state, Counts.of(fun=ls.num_fun) + reset_counts, done, result
