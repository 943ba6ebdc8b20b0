"""Gradient-regularized Newton: (H + λI) steps with λ tied to the gradient norm."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.tree_util as jtu
import lineax as lx

from .._base import AbstractMinimizer, Counts, Iterate, evaluate, roundoff
from .._curvature import hessian
from .._linalg import EW_ETA_MAX, cg_budget, inner_rtol, truncated_cg
from .._linesearch import ACCEPTANCE_ROUNDOFF
from .._loops import while_loop
from .._results import RESULTS
from .._tree import (
    ravel,
    tree_axpy,
    tree_changed,
    tree_dot,
    tree_neg,
    tree_norm,
    tree_sub,
    tree_where,
)
from .._validate import (
    check_budget,
    check_inexact_newton,
    check_number,
    check_positive,
    renamed_fields,
)

# With an adaptive inner tolerance, CG for (H + λI)p = −g also runs until ‖r‖² ≤ θλ·(−gᵀp),
# θ = _ENERGY. For a CG iterate rᵀp = 0 and −gᵀp = pᵀ(H + λI)p, so on a quadratic
# g₊ = r − λp and f − f₊ = ½pᵀHp + λ‖p‖², and the acceptance test ‖g₊‖² ≤ 8λ(f − f₊) reads
# ‖r‖² ≤ 4λpᵀHp + 7λ²‖p‖², implied by ‖r‖² ≤ 4λ(−gᵀp). Without this a loose η (up to 0.5)
# with λ ≪ ‖H‖ leaves a residual the test rejects however often the step is retried, and λ
# is driven up by orders of magnitude before γ recovers. θ = 1 keeps a margin of 4 for the
# non-quadratic part.
_ENERGY = 1.0

# After an accepted step γ is at most _RADIUS times the step's length (see `step`): large
# enough that λ = ‖g‖/γ stays far below the curvature along a Newton step (on the benchmark
# problems the step counts are those of plain doubling, ±1), small enough that round-off in g
# along a flat direction moves x by at most _RADIUS times the last step, not by 2ᵏ.
_RADIUS = 32.0


def shifted_solver(op, grad, linear_solver: str, cg_rtol, cg_max_steps: int, energy=None):
    """Build `solve(λ) -> (d, matvecs)` with (H + λI) d ≈ −g, for an operator built once.

    - "cg": truncated CG on v ↦ Hv + λv to ‖residual‖ ≤ cg_rtol·‖g‖ (`cg_rtol` a scalar,
      possibly traced; the same for every λ). With H indefinite and λ too small, CG stops at
      negative curvature and returns its last (descent) iterate.
    - "dense": H is materialised once (n products, counted as one dense Hessian) and each λ
      costs one Cholesky factorisation; a failed factorisation gives NaNs, which the caller's
      acceptance test rejects, so λ grows until H + λI is positive definite.
    A `lx.DiagonalLinearOperator` is solved elementwise, with negative entries clipped to 0.
    Returns `(solve, counts)`; `counts` is the cost of building the solver.
    """
    if linear_solver == "dense":
        flat_g, unravel = ravel(grad)
        eye = jnp.eye(flat_g.size, dtype=flat_g.dtype)
        h = jax.vmap(lambda e: ravel(op.mv(unravel(e)))[0])(eye).astype(flat_g.dtype)
        h = 0.5 * (h + h.T)

        def solve_dense(lam):
            factor = jnp.linalg.cholesky(h + lam.astype(h.dtype) * eye)
            return unravel(jsl.cho_solve((factor, True), -flat_g)), jnp.zeros((), jnp.int32)

        return solve_dense, Counts.of(hessian=1)

    if isinstance(op, lx.DiagonalLinearOperator):
        def solve_diagonal(lam):
            def leaf(g, dg):
                denom = jnp.maximum(dg + lam, lam)
                safe = jnp.where(denom > 0, denom, 1)
                return jnp.where(denom > 0, -g / safe, 0).astype(g.dtype)

            return jtu.tree_map(leaf, grad, op.diagonal), jnp.zeros((), jnp.int32)

        return solve_diagonal, Counts()

    b = tree_neg(grad)

    def solve_cg(lam):
        cg = truncated_cg(lambda v: tree_axpy(lam, v, op.mv(v)), b, rtol=cg_rtol,
                          max_iters=cg_max_steps,
                          energy_tol=None if energy is None else energy * lam)
        return cg.x, cg.num_iters

    return solve_cg, Counts()


class _RNState(eqx.Module):
    gamma: jax.Array  # γ for the next step (adaptive variant); λ = ‖g‖/γ
    lam: jax.Array  # λ of the last accepted step
    retries: jax.Array  # rejected trials in the last step
    grad_norm: jax.Array  # ‖g‖ where the last accepted step started (for Eisenstat–Walker)
    eta: jax.Array  # the inner CG relative tolerance used there


@renamed_fields(cg_max_iters="cg_max_steps")
class RegularizedNewton(AbstractMinimizer):
    """Gradient-regularized Newton method (Algorithm 1 of Semenov, Jaggi & Doikov):

        λₖ = ‖gₖ‖ / γₖ,    xₖ₊ = xₖ − (Hₖ + λₖ I)⁻¹ gₖ,

    accepted when f(xₖ) − f(xₖ₊) ≥ ‖∇f(xₖ₊)‖² / (8λₖ); then γ ← min(2γ, 32‖xₖ₊ − xₖ‖) for
    the next step (γ bounds the step, ‖xₖ₊ − xₖ‖ ≤ γ, so this is the paper's doubling wherever
    λ limits the step). Where f fell by less than round-off γ does not grow, and it drops to
    ½‖xₖ₊ − xₖ‖ unless ‖∇f‖ fell.
    Otherwise γ ← γ/2 and the step is re-solved from xₖ with the larger λ, reusing the
    curvature operator built once per step. The test only compares f and ‖∇f‖, so Hₖ need not
    be the Hessian: with a Gauss-Newton, Fisher or diagonal approximation the method keeps a
    global (linear, for logistic and softmax regression) rate. Accepted steps never increase
    f (up to rounding: the test is relaxed by 100·eps·|f(xₖ)|, so that float32 can finish).
    Near a strict minimizer λ ∝ ‖g‖ → 0 and the steps become Newton steps (quadratic rate,
    as Levenberg–Marquardt with λ ∝ ‖F‖). The cap on γ keeps a singular Hessian (softmax
    regression with unpenalised intercepts, whose loss is flat along b + c·1) from turning
    the gradient's round-off into ever larger steps along its flat directions, as MINPACK's
    LM (Moré 1978) resets its radius to twice the step taken.

    `variant="fixed"` is the classical special case (Mishchenko 2021; Doikov & Nesterov
    2021) λₖ = √(L‖gₖ‖), with `lipschitz=L` an estimate of the Hessian's Lipschitz constant.
    It takes every step without a test: with the exact Hessian of a convex f and a true L it
    converges globally at O(1/k²), but a too-small L or an approximate / indefinite H can
    increase f. Prefer the default adaptive variant unless L is known.

    When to use it: Newton-type speed with global convergence and no line search, robust to
    inexact curvature; a good default for convex ML losses (logistic, softmax, GLMs) and for
    nonconvex problems with a Gauss-Newton / Fisher curvature.

    **Arguments:**

    - `curvature`: `curvature(fun, params, args) -> lineax operator`, with `fun(params,
      args) -> scalar`; default the exact Hessian (`jaxopt2.curvature.hessian`). A GGN, Fisher
      or `lx.DiagonalLinearOperator` (solved elementwise) work the same way.
    - `gamma0`: initial γ. A poor choice only costs retries: γ halves per rejection and
      doubles per acceptance, so it adapts geometrically in both directions.
    - `max_retries`: rejected trials allowed per step before giving up with
      `RESULTS.line_search_failed` (the iterate is then left unchanged).
    - `linear_solver`: "cg" (matrix-free truncated CG; each product counted in `num_hvp`) or
      "dense" (flatten the params, form H and Cholesky-solve; small problems only).
    - `cg_rtol`: relative residual tolerance η of the inner CG solve,
      ‖(H + λI)p + g‖ ≤ η‖g‖. `None` (default) chooses it per step by Eisenstat & Walker's
      choice 2, as in `NewtonCG`: ηₖ = 0.9 (‖gₖ‖/‖gₖ₋₁‖)², raised to 0.9 ηₖ₋₁² when that
      exceeds 0.1, clipped to [eps, 0.5] (η₀ = 0.5). Rough solves while far away, tightening
      as ‖g‖ falls, so the local rate is kept without over-solving early (the shift λ makes
      the early systems well conditioned as well). Rejected trials of a step re-solve with
      the same η. The adaptive solve also continues until ‖r‖² ≤ λ·(−gᵀp) for its residual
      r and step p, which on a quadratic guarantees the acceptance test below; otherwise a
      rough step with λ ≪ ‖H‖ would be rejected however often it is retried. A float fixes
      η alone (e.g. 1e-4, the former default). The test compares only f and ‖∇f‖, so an
      inexact solve can cost a retry but never lets f increase.
    - `cg_max_steps`: CG iteration cap; default twice the number of parameters.

    Each trial costs one inner solve and one value-and-gradient evaluation.

    References: A. Semenov, M. Jaggi, N. Doikov, "Gradient-Normalized Smoothness for
    Optimization with Approximate Hessians", arXiv:2506.13710 (2025); K. Mishchenko,
    "Regularized Newton method with global O(1/k²) convergence", SIAM J. Optim. 2023;
    N. Doikov, Yu. Nesterov, "Gradient regularization of Newton method with Bregman
    distances", Math. Program. 2024.

    ```python
    import jax, jax.numpy as jnp, jaxopt2
    X, y = jax.random.normal(jax.random.PRNGKey(0), (100, 5)), jnp.arange(100.0) % 2
    fun = lambda w, a: jnp.mean(jnp.logaddexp(0.0, a[0] @ w) - a[1] * (a[0] @ w)) + 1e-3 * w @ w
    sol = jaxopt2.minimize(fun, jnp.zeros(5), (X, y), solver=jaxopt2.RegularizedNewton())
    ```
    """

    uses_curvature: ClassVar[bool] = True  # minima are checked for negative curvature

    rtol: float | None = None
    atol: float = 0.0
    curvature: Callable = hessian
    variant: str = "adaptive"
    gamma0: float = 1.0
    lipschitz: float | None = None
    max_retries: int = 40
    linear_solver: str = "cg"
    cg_rtol: float | None = None
    cg_max_steps: int | None = None

    def __check_init__(self):
        check_inexact_newton(self)
        check_budget("max_retries", self.max_retries)
        check_positive("gamma0", self.gamma0)
        check_number("lipschitz", self.lipschitz, low=0.0, allow_none=True)  # 0: pure Newton
        if self.variant not in ("adaptive", "fixed"):
            raise ValueError(f"`variant` must be 'adaptive' or 'fixed'; got {self.variant!r}.")
        if self.variant == "fixed" and self.lipschitz is None:
            raise ValueError("variant='fixed' uses λ = √(L‖g‖) and needs `lipschitz=L` (an "
                             "estimate of the Hessian's Lipschitz constant); use "
                             "variant='adaptive' if L is unknown.")
        if self.linear_solver not in ("cg", "dense"):
            raise ValueError(f"`linear_solver` must be 'cg' or 'dense'; got "
                             f"{self.linear_solver!r}.")

    def init(self, fn, iterate: Iterate, args) -> _RNState:
        dtype = iterate.value.dtype
        return _RNState(jnp.asarray(self.gamma0, dtype), jnp.zeros((), dtype),
                        jnp.zeros((), jnp.int32), tree_norm(iterate.grad).astype(dtype),
                        jnp.asarray(EW_ETA_MAX, dtype))

    def step(self, fn, iterate: Iterate, args, state: _RNState):
        dtype = iterate.value.dtype
        op = self.curvature(lambda p, a: fn(p, a)[0], iterate.params, args)
        gnorm = tree_norm(iterate.grad).astype(dtype)
        # One η per step: every trial (retries included) solves to the same tolerance.
        eta = inner_rtol(self.cg_rtol, gnorm, state.grad_norm, state.eta, dtype)
        solve, build_counts = shifted_solver(
            op, iterate.grad, self.linear_solver, eta,
            cg_budget(iterate.params, self.cg_max_steps),
            energy=_ENERGY if self.cg_rtol is None else None)

        def trial(lam):
            d, matvecs = solve(lam)
            return evaluate(fn, tree_axpy(1.0, d, iterate.params), args), matvecs

        if self.variant == "fixed":
            lam = jnp.sqrt(jnp.asarray(self.lipschitz, dtype) * gnorm)
            new, matvecs = trial(lam)
            counts = build_counts + Counts.of(grad=1, hvp=matvecs)
            return (new, _RNState(state.gamma, lam, jnp.zeros((), jnp.int32), gnorm, eta),
                    counts, RESULTS.successful)

        # γ stays within [1/√max, √max] so that λ = ‖g‖/γ and the test never overflow.
        big = jnp.sqrt(jnp.asarray(jnp.finfo(dtype).max, dtype))
        safe_gnorm = jnp.where(gnorm > 0, gnorm, 1)
        slack = roundoff(iterate.value, iterate.params, ACCEPTANCE_ROUNDOFF)

        def attempt(gamma):
            new, matvecs = trial(gnorm / gamma)
            # ‖g₊‖²/(8λ) written with γ, so that g = 0 (a converged batch member) gives 0.
            bound = gamma * tree_dot(new.grad, new.grad).astype(dtype) / (8 * safe_gnorm)
            ok = jnp.isfinite(new.value) & (iterate.value - new.value >= bound - slack)
            return new, ok, matvecs

        # One loop for the first trial and the retries (traced once): γ is halved before
        # every trial, so it starts at 2γ.
        def cond(c):
            _, _, ok, k, _ = c
            return ~ok & (k <= self.max_retries)

        def body(c):
            gamma, _, _, k, matvecs = c
            gamma = jnp.maximum(gamma / 2, 1 / big)
            new, ok, m = attempt(gamma)
            return gamma, new, ok, k + 1, matvecs + m

        zero = jnp.zeros((), jnp.int32)
        gamma, new, ok, k, matvecs = while_loop(
            cond, body, (2 * state.gamma, iterate, jnp.array(False), zero, zero),
            max_steps=self.max_retries + 1)
        new = tree_where(ok, new, iterate)
        # γ bounds the step (‖d‖ ≤ ‖g‖/λ = γ), a trust radius. Doubling it after every
        # accepted step lets λ fall with ‖g‖ while the steps shrink; once ‖g‖ is round-off, the
        # step along a direction of zero curvature (softmax's b + c·1) is that round-off over
        # λ, of order γ: a drift that never meets the stopping rule. So, as MINPACK's LM sets
        # its radius from the step taken, γ grows to at most _RADIUS·‖d‖, and only on a
        # measurable decrease of f. Without one (f at round-off) γ is kept while ‖g‖ still
        # falls (the gradient alone drives progress there, as with an approximate H) and
        # drops to ½‖d‖ when it does not: such steps carry no evidence, and they contract.
        dnorm = tree_norm(tree_sub(new.params, iterate.params)).astype(dtype)
        measurable = iterate.value - new.value > slack
        gradient_fell = tree_norm(new.grad).astype(dtype) < gnorm
        grown = jnp.where(measurable, jnp.minimum(2 * gamma, _RADIUS * dnorm),
                          jnp.where(gradient_fell, jnp.minimum(gamma, _RADIUS * dnorm),
                                    0.5 * jnp.minimum(gamma, dnorm)))
        next_gamma = jnp.where(ok, jnp.clip(grown, 1 / big, big), gamma).astype(dtype)
        lam = jnp.where(ok, gnorm / gamma, state.lam).astype(dtype)
        # An accepted step below the rounding of x leaves it bitwise unchanged, and γ then
        # only shrinks: every later step would do the same (`newton_line_search`).
        moved = tree_changed(new.params, iterate.params)
        result = RESULTS.where(ok & moved, RESULTS.successful, RESULTS.line_search_failed)
        counts = build_counts + Counts.of(grad=k, hvp=matvecs)
        # A failed step ends the solve; keep the last accepted step's history for EW anyway.
        new_state = _RNState(next_gamma, lam, k - 1, jnp.where(ok, gnorm, state.grad_norm),
                             jnp.where(ok, eta, state.eta))
        return new, new_state, counts, result
