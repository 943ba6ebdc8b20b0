"""Gradient descent with Barzilai-Borwein steps and Armijo backtracking: the simplest solver
through the shared loop, with its own evidence of convergence (a gradient-implied distance)."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._base import AbstractMinimizer, Counts, Iterate, roundoff
from .._linesearch import LINE_SEARCH_ROUNDOFF, backtracking, cauchy_curvature
from .._results import RESULTS
from .._stopping import hessian_products_available
from .._tree import (
    tree_dot,
    tree_inf_norm,
    tree_neg,
    tree_norm,
    tree_sub,
)
from .._validate import check_line_search, check_number, check_positive, check_tolerances


class _GDState(eqx.Module):
    step_size: jax.Array  # first trial of the next search
    curvature: jax.Array  # the least curvature measured in the run (inf: none yet)
    error: jax.Array  # ‖g‖₂ / curvature: the distance to x* that the gradient implies
    pending: Counts  # what `init` evaluated, counted with the first step


class GradientDescent(AbstractMinimizer):
    """Steepest descent, xₖ₊₁ = xₖ − tₖ ∇f(xₖ), with tₖ found by Armijo backtracking
    (f(xₖ₊₁) ≤ f(xₖ) − c₁ tₖ ‖∇f(xₖ)‖²) from the Barzilai-Borwein step
    tₖ⁰ = sᵀs / sᵀy, s = xₖ − xₖ₋₁, y = ∇f(xₖ) − ∇f(xₖ₋₁) (`grow`·tₖ₋₁ where sᵀy ≤ 0).
    The first trial is the Cauchy step 1/q₀, q₀ = uᵀ∇²f(x₀)u along u = ∇f(x₀)/‖∇f(x₀)‖
    (one Hessian-vector product, or a difference of gradients where f has no second
    derivatives), or `step_size` if given. Every trial is then invariant to scaling f by a constant.

    Convergence is judged by the distance to x* that the gradient implies: for f strongly
    convex with modulus μ, ‖x − x*‖ ≤ ‖∇f(x)‖₂/μ. The curvatures q = sᵀy/sᵀs measured along
    the steps (and q₀) lie in [μ, L], and the long Barzilai-Borwein steps sample the flat
    directions, so the least q of the run, μ̂, estimates μ (forgotten after a step longer
    than max(‖xₖ‖∞, 1), which leaves the region it was measured in): success needs
    ‖gₖ‖∞ ≤ atol + rtol·‖g₀‖∞ and ‖gₖ‖₂/μ̂ ≤ rtol·max(‖xₖ‖∞, 1), instead of the shared rule's
    estimates (`jaxopt2/_stopping.py`), which the irregular step lengths fool. A far start
    through flatter regions than x*'s only makes this stricter (at worst
    `max_steps_reached`), never looser.
    A trial whose whole predicted decrease is below f's round-off is accepted unless f
    measurably rises (Hager & Zhang's approximate Armijo test), so a start at x* ends
    `successful` after one negligible step.

    Linear convergence at a rate set by the condition number: use it as a baseline, or for
    problems where curvature is useless; prefer `LBFGS` or `NewtonCG` otherwise.

    References: Barzilai & Borwein, "Two-point step size gradient methods", IMA J. Numer.
    Anal. 8 (1988); Raydan, "The Barzilai and Borwein gradient method for the large scale
    unconstrained minimization problem", SIAM J. Optim. 7 (1997).

    ```python
    sol = jaxopt2.minimize(lambda x, a: jnp.sum((x - a) ** 2), jnp.zeros(3), jnp.ones(3),
                           solver=jaxopt2.GradientDescent())
    ```
    """

    rtol: float | None = None
    atol: float = 0.0
    step_size: float | None = None  # the first trial; None: the Cauchy step 1/q₀
    grow: float = 2.0  # where sᵀy ≤ 0 (no BB step) the next first trial is grow·(last step)
    c1: float = 1e-4
    max_backtracks: int = 40

    # linear convergence: about cond·ln(1/rtol) steps (2,104 on the cond-1e4 logistic
    # benchmark of 2,000 × 100 in float64)
    default_max_steps: ClassVar[int] = 5000

    def __check_init__(self):
        check_tolerances(self)
        check_line_search(self)
        check_positive("step_size", self.step_size, allow_none=True)
        check_number("grow", self.grow, low=1.0)

    @property
    def first_step_scale_free(self) -> bool:
        # A user's `step_size` is in units of 1/f: a tiny first step then proves nothing.
        return self.step_size is None

    def init(self, fn, iterate: Iterate, args) -> _GDState:
        dtype = iterate.value.dtype
        inf = jnp.asarray(jnp.inf, dtype)
        if self.step_size is not None:
            return _GDState(jnp.asarray(self.step_size, dtype), inf, inf, Counts())
        q, pending = cauchy_curvature(fn, iterate, args,
                                      hessian_products_available(fn, iterate.params, args))
        # Negative curvature (or none measured): a first trial that moves x by s(x), for
        # the line search to cut.
        ginf = tree_inf_norm(iterate.grad)
        fallback = jnp.maximum(tree_inf_norm(iterate.params), 1) / jnp.where(ginf > 0, ginf, 1)
        measured = (q > 0) & jnp.isfinite(q)
        t0 = jnp.where(measured, 1 / jnp.where(q > 0, q, 1), fallback)
        return _GDState(t0.astype(dtype), jnp.where(measured, q, jnp.inf).astype(dtype), inf,
                        pending)

    def step(self, fn, iterate: Iterate, args, state: _GDState):
        noise = roundoff(iterate.value, iterate.params, LINE_SEARCH_ROUNDOFF)
        ls = backtracking(fn, iterate, tree_neg(iterate.grad), args, state.step_size,
                          c1=self.c1, max_trials=self.max_backtracks, noise=noise)
        new = ls.iterate
        s = tree_sub(new.params, iterate.params)
        y = tree_sub(new.grad, iterate.grad)
        ss, sy = tree_dot(s, s), tree_dot(s, y)
        measured = ls.ok & (ss > 0) & (sy > 0)
        # A step that f's round-off hides (accepted by the noise allowance) has a gradient
        # change of round-off too: its curvature would spoil μ̂ for the rest of the run.
        resolved = measured & (iterate.value - new.value > noise)
        q = jnp.where(resolved, sy / jnp.where(ss > 0, ss, 1), jnp.inf)
        curvature = jnp.minimum(state.curvature, q.astype(state.curvature.dtype))
        # Curvature measured before (and along) a step longer than s(x) describes another
        # region: from (x − 1)⁴ at 10⁶ one step lands near 1, where f is far flatter.
        far = tree_inf_norm(s) > jnp.maximum(tree_inf_norm(new.params), 1)
        curvature = jnp.where(far, jnp.inf, curvature).astype(state.curvature.dtype)
        bb = ss / jnp.where(sy > 0, sy, 1)
        next_step = jnp.where(measured, bb, self.grow * ls.step_size)
        next_step = jnp.where(ls.ok, next_step, state.step_size).astype(state.step_size.dtype)
        # ‖x − x*‖∞ ≤ ‖x − x*‖₂ ≤ ‖g‖₂/μ: the 2-norm, for the bound to hold.
        error = jnp.where(jnp.isfinite(curvature), tree_norm(new.grad) / curvature, jnp.inf)
        result = RESULTS.where(ls.ok, RESULTS.successful, RESULTS.line_search_failed)
        counts = ls.counts + state.pending
        new_state = _GDState(next_step, curvature, error.astype(state.error.dtype), Counts())
        return new, new_state, counts, result

    def error_estimate(self, state: _GDState):
        return state.error
