"""Inexact (truncated) Newton: matrix-free CG on the curvature, globalised by a line search or
a Steihaug trust region."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._base import AbstractMinimizer, Counts, Iterate, default_rtol, evaluate, roundoff
from .._curvature import hessian
from .._jacobi import AUTO_PROBES, auto_inverse_diagonal, scaling
from .._linalg import EW_ETA_MAX, eisenstat_walker, truncated_cg
from .._linesearch import LINE_SEARCH_ROUNDOFF, newton_line_search
from .._results import RESULTS
from .._tree import (
    result_dtype,
    tree_add,
    tree_changed,
    tree_dot,
    tree_inf_norm,
    tree_norm,
    tree_scale,
    tree_size,
)
from .._trust_region import bands, reduction_ratio, update_radius
from .._validate import (
    check_budget,
    check_line_search_solver,
    check_positive,
    check_unit_interval,
    renamed_fields,
)
from ..distributed import explicit_spec

_ETA_MAX = EW_ETA_MAX  # every forcing term is capped here (early steps need a rough direction)
# Trust region (Nocedal & Wright, Alg. 4.1): accept when ρ > _ACCEPT; the radius follows the
# shared bands (`jaxopt2._trust_region`): ‖p‖/4 when ρ < 1/4 or rejected, doubled when ρ > 3/4
# and the step reached the boundary.
_ACCEPT = 0.1
_MAX_RADIUS = 1e10
# preconditioner="auto": Jacobi once a step's CG took more than _AUTO_CG iterations, from
# AUTO_PROBES coloured probes (the exact diagonal up to that many unknowns). On the
# benchmarks' logistic problems plain CG took about 9 (breast cancer), 19 (digits) and 66-95
# (cond 1e4) iterations a step; Jacobi-16 cut the last to 0.13-0.28x the time. The first step
# under the diagonal is judged against the plain steps before it, in CG iterations per digit
# of residual reduction (steps ask for different forcing terms): unless it needed at most
# _AUTO_GAIN of the plain rate, the diagonal is dropped (softmax regression's Hessian is not
# diagonally dominant, and Jacobi there cost 1.5x plain CG), and tried again only if plain CG
# then runs out of its budget (on an ill-conditioned ridge problem a loose early step misjudged
# it, and plain CG could never certify its last step).
_AUTO_CG = 25
_AUTO_GAIN = 0.5
# The default CG budget, min(2n, _CG_CAP), doubles after a certifying solve (the one that must
# estimate the Newton step once the gradient test passes) runs out of it, up to
# min(max(10n, _CG_CAP), _CG_GROWN). In floating point CG needs several times n on an
# ill-conditioned spectrum (curvatures 1 … 1e4, log-spaced: 180 iterations to 1.5e-8 at n = 60,
# 583 at n = 240), and at the fixed budget such a problem spun to `max_steps` (50,000 products
# at n = 240) with x right to 1e-12. Doubling keeps the products of the failed attempts below
# those of the last one; the ceiling bounds a step's cost where no budget certifies.
_CG_CAP = 200
_CG_GROWN = 8 * _CG_CAP
# The loosest certifying residual test under which two whole steps' contraction estimates the
# distance left (`NewtonCG._error`): the float64 default rtol.
_CONTRACTION_ETA = 1e-6
_PLAIN, _JACOBI, _OFF, _RETRY, _FINAL = 0, 1, 2, 3, 4


class _Auto(eqx.Module):
    """preconditioner="auto"'s memory: M⁻¹ in use (ones while plain), the mode (_PLAIN;
    _JACOBI; _OFF, dropped; _RETRY, tried again after plain CG ran out; _FINAL) and the
    plain CG's iterations per digit when the diagonal was built."""
    inv_diag: Any
    mode: jax.Array
    plain_rate: jax.Array


def _cg_rate(cg_steps, eta):
    """CG iterations per decade of residual reduction asked for (η ≤ 0.5: at least 0.3)."""
    digits = jnp.maximum(-jnp.log10(eta), 0.25)
    return cg_steps.astype(eta.dtype) / digits


class _NewtonCGState(eqx.Module):
    grad_norm: jax.Array  # ‖∇f‖ at the last accepted step (for Eisenstat–Walker)
    eta: jax.Array  # the forcing term used there
    radius: jax.Array  # trust-region radius (unused with the line search)
    cg_steps: jax.Array  # CG iterations taken at the last step (diagnostic)
    error: jax.Array  # ‖d‖∞ of the last CG step where it certifies ‖x − x*‖ (else ∞)
    grad_tol: jax.Array  # the stopping rule's atol + rtol·‖g₀‖∞: below it, solve CG tightly
    cut: jax.Array  # the last step was cut to the trust-region radius
    cg_limit: jax.Array  # int32: the last step's CG budget (doubled after a certifying run-out)
    full_step: jax.Array  # ‖d‖∞ of the last CG direction where it was taken whole (else 0)
    auto: _Auto | None = None  # preconditioner="auto" only


def _with_auto(state: _NewtonCGState, auto) -> _NewtonCGState:
    if auto is None:
        return state
    return eqx.tree_at(lambda s: s.auto, state, auto, is_leaf=lambda x: x is None)


@renamed_fields(max_cg_steps="cg_max_steps")
class NewtonCG(AbstractMinimizer):
    """Inexact Newton with conjugate gradients (truncated Newton, Newton-CG).

    Each step solves H pₖ = −gₖ approximately, H = `curvature(f, xₖ, args)` (the Hessian by
    default), by preconditioned CG stopped at the relative residual ‖H p + g‖ ≤ ηₖ‖g‖, at
    negative curvature, or after `cg_max_steps` products. Every CG iterate is a descent
    direction, and on negative curvature at the first CG step the direction is −g, so an
    indefinite H (a saddle region of a non-convex f) never produces an ascent step.

    The forcing term ηₖ (`forcing`) decides how accurately to solve:

    - `"eisenstat_walker"` (default), choice 2 of Eisenstat & Walker (1996):
      ηₖ = 0.9 (‖gₖ‖/‖gₖ₋₁‖)², raised to 0.9 ηₖ₋₁² when that exceeds 0.1 (so η does not drop
      abruptly after one lucky step), capped at 0.5. It is scale-invariant: loose solves while
      far away, tightening as the gradient falls quadratically, which gives superlinear local
      convergence without over-solving early.
    - `"sqrt"`: ηₖ = min(0.5, √‖gₖ‖) (Nocedal & Wright, §7.1); simple but depends on the
      scale of f.
    - a float: a constant ηₖ (linear local convergence at that rate).

    Globalisation: by default Armijo backtracking from the full step pₖ (taken outright when
    its predicted decrease is below the rounding of f and f does not measurably rise). With
    `trust_region=True`, CG is the Steihaug–Toint method confined to ‖p‖ ≤ Δₖ (stepping to
    the boundary on negative curvature), and the step is accepted when the ratio
    ρ = (f(xₖ) − f(xₖ + p)) / (−gᵀp − ½pᵀHp) of actual to predicted reduction exceeds 0.1;
    Δ shrinks to ‖p‖/4 when ρ < 1/4 and doubles when ρ > 3/4 on the boundary. A rejected step
    keeps the iterate and costs one objective evaluation (the gradient is only evaluated at
    accepted points). Prefer the trust region on non-convex problems with large indefinite
    regions; the line search is cheaper per step on convex ones. A trust region that shrinks
    to nothing (no decrease possible) is reported as `RESULTS.line_search_failed`.

    Stopping: besides the gradient test, the error ‖xₖ − x*‖∞ is estimated by the last CG
    step ‖dₖ₋₁‖∞ ≈ ‖H⁻¹g‖∞ (the Newton step; near x* it bounds the distance left), which must
    be at most rtol·s(x). It counts only where CG met a residual test of max(rtol, √eps)
    (at most 0.1), not cut short by the radius or negative curvature: CG iterates grow in norm
    towards H⁻¹g (Steihaug 1983, Thm 2.1), so a loose solve underestimates it. Once the
    gradient test passes, the forcing term is tightened to that, which costs one accurate
    solve at the end; the adaptive forcing terms never go below it (Eisenstat–Walker's fell
    to 1e-13 on the last step, buying digits that no test asks for). This replaces the
    shared step-contraction and secant estimates (`jaxopt2._stopping`), which loose,
    irregular CG steps fool.

    **Arguments:**

    - `curvature`: `curvature(fun, params, args) -> lineax operator` with `fun(params, args)`
      the scalar objective; built once per step and used through its `mv`. Default
      `jaxopt2.curvature.hessian` (exact Hessian-vector products). For f(x) = L(m(x)) a
      Gauss–Newton operator is positive semidefinite and often cheaper, e.g.
      `lambda f, p, a: jaxopt2.curvature.gauss_newton(model_fn, loss_fn, p, a)`.
    - `preconditioner`: `"auto"` (default), `None` (plain CG), or
      `preconditioner(fun, params, args, operator) -> (r -> M⁻¹r)`, M symmetric positive
      definite (`jaxopt2.curvature.JacobiPreconditioner()`,
      `jaxopt2.sketch.NystromPreconditioner(rank)`, …), built once per step. `"auto"` decides
      from the CG iterations it has seen: plain CG until a step's CG takes more than 25
      iterations; then the Jacobi diagonal M = diag(H) from 16 products (two at a time) with
      signed, coloured probes (the exact diagonal up to 16 unknowns), reused while CG stays
      within 25 iterations and rebuilt when not; and if the first step under M did not at
      least halve CG's iterations per digit of residual reduction, plain CG again, with the
      diagonal tried once more only if plain CG then runs out of `cg_max_steps`.
      Well-conditioned problems never pay for it (CG stays short); on the cond-1e4 logistic
      benchmark (20,000 × 500) it took 0.18x plain CG's time, on softmax regression, whose
      Hessian is not diagonally dominant, about 1.25x (one build and one step under M).
      Under `vmap` the build runs for every problem whenever one needs it; with parameters
      sharded over Explicit mesh axes, or products in a lower precision (`MixedPrecision`,
      where CG's iteration count reflects their rounding), it is plain CG. The probes are
      counted in `num_hvp`.
    - `cg_max_steps`: CG budget per step; `None` means min(2n, 200) for n parameters (exact
      arithmetic needs at most n; the cap bounds the cost per step on large problems, where
      the forcing term usually stops CG much earlier), doubled each time a certifying solve
      (the accurate one after the gradient test passes) runs out of it, up to
      min(max(10n, 200), 1600) (in floating point CG needs several times n on ill-conditioned
      spectra): such a problem is then certified instead of spinning to `max_steps`. An
      integer is a fixed budget.
    - `initial_radius`: the first trust-region radius (only with `trust_region=True`).

    Counts: every CG product is one `num_hvp` (plus one per trust-region step, for the
    predicted reduction); the line search or trust-region trials add `num_fun`/`num_grad`.

    References: R. S. Dembo and T. Steihaug, "Truncated-Newton algorithms for large-scale
    unconstrained optimization", Math. Prog. 26 (1983); S. C. Eisenstat and H. F. Walker,
    "Choosing the forcing terms in an inexact Newton method", SIAM J. Sci. Comput. 17 (1996);
    T. Steihaug, "The conjugate gradient method and trust regions in large scale
    optimization", SIAM J. Numer. Anal. 20 (1983); Nocedal & Wright, Numerical Optimization,
    2nd ed., §7.1.

    ```python
    import jax.numpy as jnp, jaxopt2
    rosen = lambda p, a: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
    sol = jaxopt2.minimize(rosen, jnp.array([-1.2, 1.0]), solver=jaxopt2.NewtonCG())
    sol = jaxopt2.minimize(rosen, jnp.array([-1.2, 1.0]),
                           solver=jaxopt2.NewtonCG(trust_region=True))
    ```
    """

    uses_curvature: ClassVar[bool] = True  # minima are checked for negative curvature

    rtol: float | None = None
    atol: float = 0.0
    curvature: Callable | None = None
    preconditioner: Callable | str | None = "auto"
    trust_region: bool = False
    cg_max_steps: int | None = None
    forcing: str | float = "eisenstat_walker"
    initial_radius: float = 1.0
    c1: float = 1e-4
    max_backtracks: int = 30

    def __check_init__(self):
        check_line_search_solver(self)
        check_budget("cg_max_steps", self.cg_max_steps, allow_none=True)
        if isinstance(self.forcing, str):
            if self.forcing not in ("eisenstat_walker", "sqrt"):
                raise ValueError(f"`forcing` must be 'eisenstat_walker', 'sqrt' or a float in "
                                 f"(0, 1); got {self.forcing!r}.")
        else:
            check_unit_interval("forcing", self.forcing)
        check_positive("initial_radius", self.initial_radius)
        if isinstance(self.preconditioner, str) and self.preconditioner != "auto":
            raise ValueError("`preconditioner` must be None, 'auto' or a callable "
                             "(fun, params, args, operator) -> (r -> M⁻¹r); got "
                             f"{self.preconditioner!r}.")

    def init(self, fn, iterate: Iterate, args) -> _NewtonCGState:
        state = self._start(iterate)
        if not isinstance(self.preconditioner, str):
            return state
        dtype = state.eta.dtype
        return _with_auto(state, _Auto(jax.tree_util.tree_map(jnp.ones_like, iterate.params),
                                       jnp.asarray(_PLAIN, jnp.int32),
                                       jnp.asarray(jnp.inf, dtype)))

    def _start(self, iterate: Iterate) -> _NewtonCGState:
        dtype = iterate.value.dtype
        rtol = self.rtol if self.rtol is not None else default_rtol(result_dtype(iterate.params))
        return _NewtonCGState(
            grad_norm=tree_norm(iterate.grad).astype(dtype),
            eta=jnp.asarray(_ETA_MAX, dtype),
            radius=jnp.asarray(self.initial_radius, dtype),
            cg_steps=jnp.zeros((), jnp.int32),
            error=jnp.asarray(jnp.inf, dtype),
            grad_tol=(self.atol + rtol * tree_inf_norm(iterate.grad)).astype(dtype),
            cut=jnp.array(False),
            cg_limit=jnp.asarray(self._cg_budget(tree_size(iterate.params))[0], jnp.int32),
            full_step=jnp.zeros((), dtype),
        )

    def _cg_budget(self, n: int) -> tuple[int, int]:
        """(first, largest) CG budget per step: fixed where the user set `cg_max_steps`."""
        if self.cg_max_steps is not None:
            return self.cg_max_steps, self.cg_max_steps
        return min(2 * n, _CG_CAP), min(max(10 * n, _CG_CAP), _CG_GROWN)

    def _certifying_forcing(self, params) -> float:
        """The forcing term of a step that may certify convergence: max(rtol, √eps), at most
        0.1. A CG residual that small leaves ‖d‖ within a few per cent of ‖H⁻¹g‖ on all but
        badly conditioned Hessians (there the final curvature check still has the last word)."""
        dtype = result_dtype(params)
        rtol = self.rtol if self.rtol is not None else default_rtol(dtype)
        # Products computed in a lower precision (`MixedPrecision`) resolve no residual below
        # their own rounding: CG could never certify, and the solve would burn its budget.
        floor = getattr(self.curvature, "forcing_floor", 0.0)
        return min(max(rtol, float(jnp.finfo(dtype).eps) ** 0.5, floor), 0.1)

    def _error(self, cg, eta, eta_certify, state, full, grad_norm, new_grad):
        """(error estimate, new `full_step`). Where CG met a residual test at most
        `eta_certify`, with no radius or negative curvature cutting it short, ‖d‖∞ estimates
        the Newton step ‖H⁻¹g‖∞, the distance from x to x*; else ∞. CG iterates grow in norm
        towards H⁻¹g (Steihaug 1983, Thm 2.1), so a loosely solved d is a gross
        underestimate: a 2-step CG at η = 0.22 on the 4-D Rosenbrock valley gave ‖d‖ = 1e-3
        where ‖H⁻¹g‖ = 0.09.

        Where such a step and the one before were both taken whole (`full`) and the residual
        test was at most _CONTRACTION_ETA, the distance left *after* the step is estimated
        instead, as (ρ/(1 − ρ) + √η)·‖d‖∞ with ρ ≤ ½ the larger of ‖dₖ‖/‖dₖ₋₁‖ and
        ‖gₖ₊₁‖/‖gₖ‖ (`grad_norm` = ‖gₖ‖₂, `new_grad` = gₖ₊₁). A loose dₖ₋₁ is short, so ρ
        errs high; √η covers the error CG's residual leaves, ‖H⁻¹r‖ ≤ η·κ·‖d‖, for κ up to
        1/√η. Without it the solve
        needed one more certified step at the new point, whose gradient is often at
        round-off there: on softmax regression (a null direction) that solve could not
        converge, and the solve took 8 more steps and 1,900 products to certify a point
        already right. With a looser residual (float32, products in bfloat16) η·κ nears 1
        on ordinary problems (the 4-D Rosenbrock minimum in float32: κ = 2,300, η = 1e-3,
        the step left 1.2e-3 of error where ρ promised 6e-5), so there it is not used."""
        dtype = state.eta.dtype
        ok = cg.converged & (eta <= eta_certify)
        norm = tree_inf_norm(cg.x).astype(dtype)
        prev = state.full_step
        rho = jnp.where(prev > 0, norm / jnp.where(prev > 0, prev, 1), jnp.inf)
        new_norm = tree_norm(new_grad).astype(dtype)
        rho = jnp.maximum(rho, new_norm / jnp.where(grad_norm > 0, grad_norm, 1))
        contracted = ok & full & (rho <= 0.5) & (eta <= _CONTRACTION_ETA)
        factor = rho / (1 - jnp.minimum(rho, 0.5)) + jnp.sqrt(eta)
        error = jnp.where(contracted, factor * norm, jnp.where(ok, norm, jnp.inf))
        return error.astype(dtype), jnp.where(full, norm, 0).astype(dtype)

    def error_estimate(self, state: _NewtonCGState):
        return state.error

    def step_cut_short(self, state: _NewtonCGState):
        return state.cut

    def _forcing_term(self, state: _NewtonCGState, grad_norm):
        dtype = state.eta.dtype
        if not isinstance(self.forcing, str):
            return jnp.asarray(self.forcing, dtype)
        if self.forcing != "sqrt":
            return eisenstat_walker(grad_norm, state.grad_norm, state.eta, dtype)
        # below eps the CG residual test cannot be met and would only burn the budget
        eps = jnp.finfo(dtype).eps
        return jnp.clip(jnp.sqrt(grad_norm), eps, _ETA_MAX).astype(dtype)

    def _preconditioning(self, objective, params, args, operator, state, n: int,
                         ran_out):
        """`(auto state to keep or None, r ↦ M⁻¹r or None, products spent building it)`."""
        if not isinstance(self.preconditioner, str):
            precond = (None if self.preconditioner is None
                       else self.preconditioner(objective, params, args, operator))
            # what building it cost, where the preconditioner says (JacobiPreconditioner)
            built = getattr(self.preconditioner, "num_products", lambda n: 0)(n)
            return None, precond, built
        auto = state.auto
        if any(explicit_spec(leaf) is not None for leaf in jax.tree_util.tree_leaves(params)):
            # Parameters sharded over Explicit mesh axes: a user's `out_sharding=` product
            # cannot be vmapped over probes, so "auto" is plain CG there.
            return auto, None, 0
        if getattr(self.curvature, "forcing_floor", 0.0) > 0:
            # Products in a lower precision (`MixedPrecision`): CG stalls at their rounding
            # and runs long whatever the conditioning, so its iteration count is no evidence.
            return auto, None, 0
        # the evidence: the last step's CG, under the diagonal then in use
        long = state.cg_steps > _AUTO_CG
        rate = _cg_rate(state.cg_steps, state.eta)
        on = (auto.mode == _JACOBI) | (auto.mode == _RETRY)
        useless = on & (rate > _AUTO_GAIN * auto.plain_rate)
        # dropped, but plain CG ran out of its budget: try the diagonal once more (judged
        # anew; dropped for good if it fails again)
        exhausted = (auto.mode == _OFF) & ran_out
        need = long & ~useless & (on | (auto.mode == _PLAIN) | exhausted)
        keep = ~useless & ~need
        ones = jax.tree_util.tree_map(jnp.ones_like, auto.inv_diag)
        inv = lax.cond(need, lambda: auto_inverse_diagonal(operator),
                       lambda: jax.tree_util.tree_map(
                           lambda d, o: jnp.where(keep, d, o), auto.inv_diag, ones))
        dropped = jnp.where(auto.mode == _RETRY, _FINAL, _OFF)
        built = jnp.where(exhausted, _RETRY, jnp.where(on, auto.mode, _JACOBI))
        mode = jnp.where(useless, dropped, jnp.where(need, built, auto.mode))
        # the plain rate is recorded when the diagonal is built after plain steps (a
        # rebuild under the diagonal keeps it)
        plain_rate = jnp.where(need & ~on, rate, auto.plain_rate)
        new = _Auto(inv, mode.astype(jnp.int32), plain_rate.astype(auto.plain_rate.dtype))
        return new, scaling(inv), jnp.where(need, min(n, AUTO_PROBES), 0)

    def step(self, fn, iterate: Iterate, args, state: _NewtonCGState):
        def objective(p, a):
            return fn(p, a)[0]

        curvature = hessian if self.curvature is None else self.curvature
        operator = curvature(objective, iterate.params, args)
        n = tree_size(iterate.params)
        # Once the gradient test passes, the stopping rule asks for this step's norm as the
        # error estimate (`error_estimate`), so CG must solve accurately enough to give it.
        eta_certify = self._certifying_forcing(iterate.params)
        _, max_cg = self._cg_budget(n)
        ran_out = state.cg_steps >= state.cg_limit
        # the last step was a certifying solve that ran out of its budget: double it
        grow = ran_out & (state.eta <= eta_certify) & ~jnp.isfinite(state.error)
        limit = jnp.where(grow, jnp.minimum(2 * state.cg_limit, max_cg),
                          state.cg_limit).astype(jnp.int32)
        auto, precond, built = self._preconditioning(objective, iterate.params, args,
                                                     operator, state, n, ran_out)
        grad_norm = tree_norm(iterate.grad).astype(state.eta.dtype)
        eta = self._forcing_term(state, grad_norm)
        if isinstance(self.forcing, str):
            # No adaptive solve tighter than a certifying one: after the quadratic drop in ‖g‖
            # of the last steps the Eisenstat–Walker term reached 1e-13 (digits: 87 CG
            # iterations where the 65 of η = 1.5e-8 certify).
            eta = jnp.maximum(eta, eta_certify)
        eta = jnp.where(tree_inf_norm(iterate.grad) <= state.grad_tol,
                        jnp.minimum(eta, eta_certify), eta).astype(state.eta.dtype)
        # CG solves for −g/‖g‖∞ and the step is scaled back (CG is linear in its right-hand
        # side): with a gradient near the underflow threshold, as at a float32 minimizer along
        # curvatures of 1e−10, pᵀHp of the unscaled g rounds to 0 and reads as negative
        # curvature, so no Newton step (and no error estimate) could ever be formed.
        gscale = tree_inf_norm(iterate.grad).astype(state.eta.dtype)
        gscale = jnp.where(gscale > 0, gscale, 1)
        radius = None
        if self.trust_region:
            # the radius in the scaled units, capped so that CG's squares of it stay finite
            cap = float(jnp.finfo(state.eta.dtype).max) ** 0.25
            radius = jnp.minimum(state.radius / gscale, cap)
        cg = truncated_cg(operator.mv, tree_scale(-1 / gscale, iterate.grad), rtol=eta,
                          max_iters=max_cg, limit=limit, precond=precond, radius=radius)
        cg = eqx.tree_at(lambda c: c.x, cg, tree_scale(gscale, cg.x))
        if self.trust_region:
            new, new_state, counts, result = self._trust_region_step(
                fn, iterate, args, state, operator, cg, grad_norm, eta, eta_certify, limit)
            return new, _with_auto(new_state, auto), counts + Counts.of(hvp=built), result
        new, counts, result, t = newton_line_search(fn, iterate, cg.x, args, self.c1,
                                                    self.max_backtracks, with_step=True)
        error, full_step = self._error(cg, eta, eta_certify, state, t == 1, grad_norm,
                                       new.grad)
        new_state = _NewtonCGState(grad_norm, eta, state.radius, cg.num_iters, error,
                                   state.grad_tol, jnp.array(False), limit, full_step)
        new_state = _with_auto(new_state, auto)
        return new, new_state, counts + Counts.of(hvp=cg.num_iters + built), result

    def _trust_region_step(self, fn, iterate, args, state, operator, cg, grad_norm, eta,
                           eta_certify, limit):
        dtype = state.radius.dtype
        p = cg.x
        predicted = -(tree_dot(iterate.grad, p) + 0.5 * tree_dot(p, operator.mv(p)))
        trial = tree_add(iterate.params, p)
        value = fn(trial, args)[0]
        actual = iterate.value - value
        # Near the minimizer both reductions fall below the rounding of f and ρ is noise;
        # an interior step (the model's own minimizer) is then trustworthy, so take it
        # (Conn, Gould & Toint, Trust-Region Methods, §17.4.2). A boundary step of a collapsed
        # radius is not: it must keep shrinking until the failure is reported.
        noise = roundoff(iterate.value, iterate.params, LINE_SEARCH_ROUNDOFF)
        tiny = ~cg.hit_boundary & (jnp.abs(actual) <= noise) & (predicted <= noise)
        rho = jnp.where(tiny, 1.0, reduction_ratio(actual, predicted))
        accept = jnp.isfinite(value) & (tiny | (rho > _ACCEPT))  # ρ = 0 unless predicted > 0
        step_norm = tree_norm(p).astype(dtype)
        poor, good = bands(rho)
        radius = update_radius(state.radius, ~accept | poor, good & cg.hit_boundary,
                               shrunk=0.25 * step_norm,
                               grown=jnp.minimum(2 * state.radius, _MAX_RADIUS))
        new = lax.cond(accept, lambda: evaluate(fn, trial, args), lambda: iterate)
        # A radius that no longer moves x in this precision means no decrease can be found.
        x_norm = tree_norm(iterate.params).astype(dtype)
        stuck = ~accept & (radius <= jnp.finfo(dtype).eps * jnp.maximum(x_norm, 1.0))
        # an accepted noise-level step below the rounding of x: the next one would be the same
        stuck = stuck | (accept & tiny & ~tree_changed(trial, iterate.params))
        result = RESULTS.where(stuck, RESULTS.line_search_failed, RESULTS.successful)
        # an interior step, accepted, is taken whole (a rejected one keeps ‖d‖ as the estimate)
        error, full_step = self._error(cg, eta, eta_certify, state, accept & ~cg.hit_boundary,
                                       grad_norm, new.grad)
        new_state = _NewtonCGState(
            grad_norm=jnp.where(accept, grad_norm, state.grad_norm),
            eta=jnp.where(accept, eta, state.eta),
            radius=radius,
            cg_steps=cg.num_iters,
            # a rejected step leaves x where d was computed: its estimate holds there too
            error=error,
            grad_tol=state.grad_tol,
            cut=cg.hit_boundary,
            cg_limit=limit,
            full_step=jnp.where(accept, full_step, state.full_step),
        )
        counts = Counts.of(fun=1, grad=accept.astype(jnp.int32), hvp=cg.num_iters + 1)
        return new, new_state, counts, result
