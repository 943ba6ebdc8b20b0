"""When a solve counts as solved: the stopping rules of every front door, in one place.

`successful` must mean solved in the problem's own scale, whatever the start and the dtype.
A test relative to the start alone (‖g‖ ≤ rtol·‖g₀‖, ‖F‖ ≤ rtol·‖F₀‖) gets looser the farther
the start, and can never pass from a start at the solution; a test on the step alone passes
wherever an iteration stalls. So each rule asks for two independent pieces of evidence, as
MINPACK and Dennis & Schnabel (Numerical Methods for Unconstrained Optimization and Nonlinear
Equations, §7.2) do. With ‖·‖ the max-norm over all leaves, x-scale s(x) = max(‖x‖, 1) (the
"typical x" of Dennis & Schnabel is 1), and eps the working precision:

**Minimizers** (`minimize`). Success at step k ≥ 1 when either

1. *gradient and step*: ‖gₖ‖ ≤ atol + rtol·‖g₀‖ **and** two estimates of the error
   ‖xₖ − x*‖ are at most rtol·s(xₖ): the step's, ‖xₖ − xₖ₋₁‖/(1 − ρ) with ρ the observed
   contraction of the steps (∞ unless the last two steps contracted), and the gradient's,
   ‖gₖ‖/L with L = ‖gₖ − gₖ₋₁‖/‖xₖ − xₖ₋₁‖ the secant curvature of the last step. So a far
   start (huge ‖g₀‖) cannot end the solve early, and neither can a quasi-Newton model that
   takes short steps where the gradient is still large. A secant distance below rtol² is
   enough on its own (so Newton on a quadratic stops after its one exact step). Invariant to
   scaling f by any constant. A solver may bring its own estimate instead of these two
   (`AbstractMinimizer.error_estimate`): GradientDescent's irregular Barzilai-Borwein step
   lengths fool the contraction estimate, so it uses ‖gₖ‖₂/μ̂, μ̂ the least secant curvature
   sᵀy/sᵀs of its run (‖x − x*‖ ≤ ‖g‖₂/μ for μ-strongly convex f). LBFGS and BFGS bring
   one *as well* (`error_estimate_confirms`): ‖gₖ‖₂/μ̂ over the last 10 accepted pairs, since
   their secant estimate reads the curvature of the last steps, larger than the flattest
   direction's (on a cond-1e4 logistic regression LBFGS stopped 2.2e-5 from x* at rtol 1e-6).
2. *a start at the solution*: the first step was accepted and moved x by at most
   10·eps·s(x₁): x cannot be improved in this dtype. This is what a warm start at (or next to)
   the solution meets, where ‖g₀‖ is round-off and no relative gradient test can pass. Only
   the first step counts (later, a quasi-Newton model left over from a far start can take
   steps that small anywhere), and only for solvers whose first step is scale-free (Newton
   type, accepted by a Wolfe line search, or GradientDescent's Cauchy step ‖g‖²/gᵀHg): a
   step length in units of 1/f (GradientDescent with a user's `step_size`) can be tiny
   anywhere on a badly scaled objective, and so can a step cut to a trust-region radius
   (`AbstractMinimizer.step_cut_short`).

and at step 0 only when ‖g₀‖ ≤ atol (with the default atol = 0: an exactly zero gradient).
Solvers that use curvature also check it at the end (`curvature_check`): at a saddle they
step down along the direction of negative curvature and go on (`escape`, at most `ESCAPES`
times); `saddle_point` when no such step decreases f, and `plateau` where f, its gradient and
its curvature are all flat (nothing certifies a minimum there); `ill_conditioned` where a
lower bound on the Newton step ‖H⁻¹g‖ (from the same Lanczos steps, run from g too) exceeds
rtol·s(x): along a direction of tiny curvature a small gradient is not a small error.
First-order solvers run the same check wherever they succeed (where f has Hessian-vector
products): at an exactly zero gradient it finds saddles and plateaus, elsewhere the Newton-step
bound backs up their gradient-based estimates.

**Divergence** (`diverged`): the objective is −inf, the parameters overflow, or both the
parameters grew past D·s(x₀) and the objective fell by more than D·(|f(x₀)| + 1), with
D = max(1/√eps, 10⁸) (10⁸ in float32 and float64): a descent that large and that far from the
start is taken as unbounded below (f = −x ends this way; a minimizer at 10⁴·x₀ with
f* = −10⁹ does not, nor a float32 quadratic of condition 10⁵ started at 0, whose minimizer
lies 10⁴–10⁵ out).

**Root finding and fixed points.** The solver's residual test (‖F‖ ≤ atol + rtol·‖F₀‖) must be
confirmed by the step: with Δₖ = ‖yₖ − yₖ₋₁‖ and the observed contraction ρₖ = Δₖ/Δₖ₋₁, the
error estimate Δₖ/(1 − ρₖ) (Banach's a-posteriori bound; ∞ when ρₖ ≥ 1) must be at most
max(rtol, √eps)·s(yₖ). A map drifting to infinity (y + 1/(1 + y²)) or a function whose root is
at infinity (e^{−y}) has ρ → 1 and never passes, however small its residual gets. A step
moving y by at most 10·eps·s(y) as the first step also ends the solve successfully (a start
at the root).
For Newton steps (NewtonRaphson, NewtonKrylov) and plain fixed-point iteration, whose steps are
themselves error estimates, that estimate alone also certifies a root, taken for the full step
(a step the line search cut to t counts as ‖Δy‖/t: on y² + 1 = 0 the cut steps shrink
geometrically at y ≈ 0 while the full Newton steps are huge, and no root exists): the residual test
relative to ‖F₀‖ can sit below F's round-off (the Bratu problem in float32, whose terms are
10⁶ times its residual), and a Newton step ≈ J⁻¹F measures F in its own scale.
Least squares keeps MINPACK's tests (relative reduction, relative step, scaled gradient).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from . import distributed
from ._base import Iterate, default_rtol
from ._linalg.lanczos import basis_combine, lanczos
from ._loops import while_loop
from ._results import RESULTS
from ._tree import (
    result_dtype,
    tree_axpy,
    tree_dot,
    tree_inf_norm,
    tree_norm,
    tree_size,
    tree_sub,
    tree_where,
)

STALL = 10.0  # a step of at most STALL·eps·s(x) cannot change x in this dtype


def x_scale(x):
    return jnp.maximum(tree_inf_norm(x), 1.0)


def _eps(x) -> float:
    return float(jnp.finfo(result_dtype(x)).eps)


class Progress(eqx.Module):
    """What the step tests remember: the last accepted step ‖xₖ − xₖ₋₁‖ (relative to s(xₖ)),
    the contraction ρ observed at that step, and the error estimate it gave."""

    step: jax.Array
    rho: jax.Array
    error: jax.Array
    secant: jax.Array  # minimizers: ‖g‖/L with L = ‖Δg‖/‖Δx‖ of the last accepted step

    @staticmethod
    def none(dtype) -> Progress:
        inf = jnp.asarray(jnp.inf, dtype)
        return Progress(inf, jnp.zeros((), dtype), inf, inf)

    def update(self, step, accepted) -> Progress:
        """After a step of relative size `step`: ρ = step / previous step, and the error
        estimate step·1/(1 − max(ρ, previous ρ)) (∞ unless both ratios are below 1: one
        lucky short step after a run of ρ ≈ 1 proves nothing)."""
        step = step.astype(self.step.dtype)
        rho = jnp.where(jnp.isinf(self.step), 0.0,
                        step / jnp.where(self.step > 0, self.step, jnp.inf))
        rho = jnp.where((self.step == 0) & (step > 0), jnp.inf, rho)
        worst = jnp.maximum(rho, self.rho)
        error = jnp.where(worst < 1, step / jnp.maximum(1 - worst, jnp.finfo(step.dtype).eps),
                          jnp.inf)
        # A step of exactly zero (F(y) = 0 in floating point) confirms convergence after a
        # contracting step, not after slow progress (ρ ≈ 1): that is a stall at round-off.
        error = jnp.where(step == 0, jnp.where(self.rho <= 0.5, 0.0, jnp.inf), error)
        new = Progress(step, rho, error, self.secant)
        # Repeated zero steps carry no new information: keep what the last one said.
        keep = ~accepted | ((step == 0) & (self.step == 0))
        return jax.tree_util.tree_map(lambda a, b: jnp.where(keep, b, a), new, self)


class MinimizerRule(eqx.Module):
    """The minimizers' rule (module docstring), with what it needs from the start."""

    atol: float
    rtol: float
    grad_tol: jax.Array  # atol + rtol·‖g₀‖
    value0: jax.Array
    scale0: jax.Array  # s(x₀)
    eps: float
    first_step_counts: bool = eqx.field(static=True, default=True)
    # the solver's own error estimate confirms the shared ones instead of replacing them
    own_error_confirms: bool = eqx.field(static=True, default=False)

    @staticmethod
    def start(solver, it0: Iterate) -> MinimizerRule:
        rtol = solver.rtol if solver.rtol is not None else default_rtol(result_dtype(it0.params))
        grad_tol = solver.atol + rtol * tree_inf_norm(it0.grad)
        return MinimizerRule(solver.atol, rtol, grad_tol, it0.value, x_scale(it0.params),
                             _eps(it0.params), solver.first_step_scale_free,
                             getattr(solver, "error_estimate_confirms", False))

    def no_step(self, it0: Iterate) -> Progress:
        return Progress.none(result_dtype(it0.params))

    def converged_at_start(self, it0: Iterate):
        return tree_inf_norm(it0.grad) <= self.atol

    def converged(self, old: Iterate, new: Iterate, result: RESULTS, progress: Progress,
                  num_steps, own_error=None, cut=False):
        """(converged, progress) after step `num_steps` from `old` to `new`, which reported
        `result`. `own_error`: the solver's own estimate of ‖xₖ − x*‖∞
        (`AbstractMinimizer.error_estimate`), which then replaces the two shared ones.
        `cut`: the step was cut to a trust-region radius (`AbstractMinimizer.step_cut_short`),
        so even a negligible first step is no sign of a start at the solution."""
        step = tree_inf_norm(tree_sub(new.params, old.params)) / x_scale(new.params)
        # A step that moved nothing (a rejected trust-region step) is not evidence.
        accepted = (result == RESULTS.successful) & (step > 0)
        stalled = (self.first_step_counts & (num_steps == 1) & ~jnp.asarray(cut)
                   & _stalled(progress, step, accepted, self.eps))
        progress = progress.update(step, accepted)
        gnorm = tree_inf_norm(new.grad)
        # ‖g‖ over the secant curvature of the step: the distance to the minimizer that the
        # gradient implies. A quasi-Newton model left over from a far start takes short,
        # shrinking steps where the gradient is still far from zero; this catches them.
        dg = tree_inf_norm(tree_sub(new.grad, old.grad))
        dx = step * x_scale(new.params)
        secant = jnp.where(dg > 0, gnorm * dx / jnp.where(dg > 0, dg, 1), jnp.inf)
        secant = (secant / x_scale(new.params)).astype(progress.secant.dtype)
        progress = eqx.tree_at(lambda p: p.secant, progress,
                               jnp.where(accepted, secant, progress.secant))
        # A secant distance below rtol² (an exact Newton step on a quadratic) is evidence
        # enough on its own; otherwise both estimates must agree.
        by_gradient = (gnorm <= self.grad_tol) & (
            ((progress.error <= self.rtol) & (progress.secant <= self.rtol))
            | (progress.secant <= self.rtol**2))
        if own_error is not None:
            own = own_error <= self.rtol * x_scale(new.params)
            by_gradient = by_gradient & own if self.own_error_confirms else (
                (gnorm <= self.grad_tol) & own)
        return (gnorm <= self.atol) | by_gradient | stalled, progress

    def shortfall(self, it: Iterate, progress: Progress, own_error=None):
        """How far the two tests of `converged` were from passing at `it`: an array
        `[‖g‖∞ / (atol + rtol·‖g₀‖∞), error estimate / (rtol·s(x))]`, each ≤ 1 where that test
        passed. The second is the least factor that would have let either branch of the
        error test pass (both estimates within rtol, or the secant one within rtol²); it is
        ∞ where no estimate exists yet (no accepted step, or steps that did not contract).
        What the failure message of `max_steps_reached` reports."""
        gnorm = tree_inf_norm(it.grad)
        by_grad = jnp.where(self.grad_tol > 0, gnorm / jnp.where(self.grad_tol > 0,
                                                                 self.grad_tol, 1),
                            jnp.where(gnorm > 0, jnp.inf, 0.0))
        shared = jnp.minimum(jnp.maximum(progress.error, progress.secant) / self.rtol,
                             progress.secant / self.rtol**2)
        by_error = shared
        if own_error is not None:
            by_error = own_error / (self.rtol * x_scale(it.params))
            if self.own_error_confirms:
                by_error = jnp.maximum(by_error, shared)
        return jnp.stack([by_grad.astype(jnp.float32), jnp.asarray(by_error, jnp.float32)])

    def diverged(self, it: Iterate):
        # at least 1e8: in float32 1/√eps ≈ 2.9e3, and a convex quadratic of condition 1e4
        # started at 0 has its minimizer that far out and that deep (every minimizer said
        # `diverged` there)
        far = max(1 / self.eps**0.5, 1e8)
        return ((tree_inf_norm(it.params) > far * self.scale0)
                & (it.value < self.value0 - far * (jnp.abs(self.value0) + 1)))


# The accepted steps whose least secant curvature μ̂ bounds the distance to x* that the
# gradient implies (`secant_window`: LBFGS, BFGS, ProximalNewton(inner="fista");
# ProximalGradient keeps a longer window).
CURVATURE_WINDOW = 10


def secant_window(window, sy, ss, accept):
    """The secant curvatures sᵀy/sᵀs of the last len(window) accepted steps (inf where no
    step yet), with the newest pushed in where `accept` (the oldest drops out). Its least
    entry μ̂ estimates f's least curvature over the directions the steps explored
    (`secant_distance`)."""
    q = jnp.where(accept, sy / jnp.where(ss > 0, ss, 1), jnp.inf).astype(window.dtype)
    return jnp.where(accept, jnp.concatenate([q[None], window[:-1]]), window)


def secant_distance(window, gnorm, scale=0.0):
    """(1 + scale·L̂)·gnorm/μ̂, with μ̂ and L̂ the least and largest entries of a
    `secant_window`: the distance to x* implied by a gradient of 2-norm `gnorm` (scale = 0:
    ‖x − x*‖₂ ≤ ‖g‖₂/μ for a μ-strongly convex f) or by a gradient mapping G_s (scale = s:
    ‖x − x*‖₂ ≤ (1 + sL)‖G_s(x)‖₂/μ, by monotonicity of ∂h). ∞ where no positive curvature
    has been measured."""
    mu = jnp.min(window)
    top = jnp.max(jnp.where(jnp.isfinite(window), window, 0))
    known = jnp.isfinite(mu) & (mu > 0)
    distance = (1 + scale * top) * gnorm / jnp.where(known, mu, 1)
    return jnp.where(known, distance, jnp.inf).astype(window.dtype)


def equation_converged(y_old, y_new, solver_done, accepted, progress: Progress, rtol,
                       num_steps, steps_estimate_error: bool = False, step_fraction=1.0):
    """The step confirmation of root finding and fixed points (module docstring). Returns
    (converged, progress). `step_fraction`: the part t of its full step the last step took;
    the steps certify on their own only through the full step's estimate, error/t."""
    eps = _eps(y_new)
    # The solver's own rtol (√eps by default) when the steps certify on their own; no
    # stricter than √eps when they only confirm a residual test that passed.
    own_rtol = rtol if rtol is not None else eps**0.5
    rtol = max(rtol if rtol is not None else 0.0, eps**0.5)
    step = tree_inf_norm(tree_sub(y_new, y_old)) / x_scale(y_new)
    stalled = (num_steps == 1) & _stalled(progress, step, accepted, eps)
    progress = progress.update(step, accepted)
    # A cut step that moved nothing says nothing about the full step it came from.
    full_error = jnp.where((step == 0) & (step_fraction < 1), jnp.inf,
                           progress.error / step_fraction)
    confirmed = ((solver_done & (progress.error <= rtol))
                 | (steps_estimate_error & (full_error <= own_rtol)))
    return confirmed | stalled, progress


def _stalled(progress: Progress, step, accepted, eps: float):
    """An accepted step below the resolution of x after contracting steps (ρ ≤ ½ now and
    before): x cannot be improved in this dtype. After slow progress (ρ ≈ 1: a map drifting
    away, where g(y) = y holds in floating point only) it is a stall, not a solution."""
    rho = step / jnp.where(progress.step > 0, progress.step, jnp.inf)
    rho = jnp.where(jnp.isinf(progress.step), 0.0, rho)
    return accepted & (step > 0) & (step <= STALL * eps) & (jnp.maximum(rho, progress.rho) <= 0.5)


CURVATURE_STEPS = 10  # Lanczos steps of the saddle check (Hessian-vector products)
ESCAPES = 3  # saddles a solve may escape from before it reports `saddle_point`
ESCAPE_TRIALS = 40  # halvings of the escape step, from s(x) down to about 1e-12·s(x)


class Curvature(eqx.Module):
    """What the saddle check found: the (possibly changed) result, a unit direction along
    which f decreases to second order (`saddle_point`) and the curvature vᵀHv ≤ 0 along it,
    and what the check cost."""

    result: RESULTS
    direction: Any
    curvature: jax.Array
    num_hvp: jax.Array
    num_fun: jax.Array


# How far beyond the requested error in x the lower bound on the Newton step must be before
# `curvature_check` refuses a success as `ill_conditioned`.
ILL_CONDITIONED_MARGIN = 10.0


def curvature_check(value_fn, hvp, it: Iterate, result: RESULTS, rtol=None,
                    atol=0.0, *, _raveled: bool = False) -> Curvature:
    """`saddle_point` instead of `successful` when the Hessian at the final point has a
    clearly negative eigenvalue: the smallest Ritz value of min(n, 10) Lanczos steps from a
    fixed start with no zero entry and no pattern below −√eps·|largest|. A Ritz value is vᵀHv
    for a unit v, so a negative one proves a direction of negative curvature (no false alarm
    beyond round-off); such a start, like a random one, misses a negative eigenvector only in
    adversarial constructions. The Ritz vector is returned as the
    direction to escape along (`escape`).

    Where the gradient is exactly zero and the Hessian vanishes on the whole Krylov space
    (a plateau, where f is constant in this dtype, or a flat minimum such as x⁴ at 0), second
    derivatives decide nothing: f is compared at x ± h·q (h = eps^¼·s(x), q the Lanczos
    start). Equal on both sides: `plateau` (no minimum can be certified); lower on one side:
    `saddle_point` along that side; higher on both: a minimum.

    The same products, run from g as well (the two Lanczos runs batched), also bound the
    distance left along directions of tiny curvature, which no test on ‖g‖ sees (a quadratic
    with curvatures 1 … 1e−10 stops at ‖g‖ = 5e−11·‖g₀‖ half a unit from x*). For any
    symmetric nonsingular H and any s, sᵀg = (Hs)ᵀH⁻¹g, so ‖H⁻¹g‖ ≥ |sᵀg|/‖Hs‖; over s in the
    Krylov space K = span Q from g, where HQ = Q₊T (Lanczos' relation, T the (k+1) × k
    tridiagonal), the largest ratio is ‖(TᵀT)^{−½}Qᵀg‖ = Σᵢ (vᵢᵀQᵀg)²/σᵢ² over the singular
    pairs of T: a lower bound on the Newton step ‖H⁻¹g‖, which near x* is the error ‖x − x*‖
    (the bound a CG solve from g would certify, without forming its iterates). Singular values
    below 10·eps·σ₁ are dropped: there H's own round-off decides (a null direction of the
    objective, such as a softmax's common shift of the logits, where g is round-off too).
    Where that bound exceeds 10·max(rtol, √eps)·s(x) and ‖g‖∞ > atol (a gradient within the
    user's absolute tolerance is what was asked for), `ill_conditioned` replaces `successful`.

    Costs up to 20 Hessian-vector products in 10 batched pairs (and 2 evaluations of f on a
    flat point), counted in `num_hvp`/`num_fun`. The caller runs it only where the solve
    succeeded.

    Example: DampedNewton stops early on that quadratic in float32, and says so:

    ```python
    import jax.numpy as jnp, jaxopt2
    D = jnp.logspace(0, -10, 20)
    sol = jaxopt2.minimize(lambda x, D: 0.5 * jnp.sum(D * (x - 1) ** 2), jnp.zeros(20), D,
                           solver=jaxopt2.DampedNewton(), max_steps=2000, throw=False)
    assert jaxopt2.status_name(sol.status) == "ill_conditioned"
    ```"""
    if not _raveled and not distributed.mesh_in_context():
        # On one device the parameters are raveled into one vector: fewer, larger operations
        # than one set per leaf (76 fewer instructions on a {w, b} logistic regression).
        # Under a mesh the leaves stay as they are, each with its own sharding.
        flat, unravel = jax.flatten_util.ravel_pytree(it.params)
        found = curvature_check(
            lambda x: value_fn(unravel(x)),
            lambda v: jax.flatten_util.ravel_pytree(hvp(unravel(v)))[0].astype(flat.dtype),
            Iterate(flat, it.value, jax.flatten_util.ravel_pytree(it.grad)[0].astype(flat.dtype),
                    None), result, rtol, atol, _raveled=True)
        return eqx.tree_at(lambda c: c.direction, found, unravel(found.direction))
    params = it.params
    n, dtype = tree_size(params), result_dtype(params)
    eps = _eps(params)
    steps = min(n, CURVATURE_STEPS)

    def work(tree):  # every leaf in the working dtype, as the Lanczos arithmetic needs
        return jtu.tree_map(lambda x: x.astype(dtype), tree)

    def matvec(q):
        # The product named with the parameters' shardings (a no-op without Explicit axes).
        return work(distributed.like(hvp(jtu.tree_map(lambda x, p: x.astype(p.dtype), q, params)),
                                     params))

    q0 = _start(params, dtype)
    g = work(it.grad)
    gnorm = tree_norm(g)
    qg = jtu.tree_map(lambda x, q: jnp.where(gnorm > 0, x / jnp.where(gnorm > 0, gnorm, 1), q),
                      g, q0)
    # One trace of the loop and of `hvp` for both runs: a second sequential run would double
    # the compiled size (issue 20); batched, the products also run as pairs.
    # Under Explicit mesh axes a user's product may name its output's sharding
    # (`out_sharding=`), which `vmap` does not support: there the runs go one after the other.
    run = jax.vmap if not distributed.explicit_mesh() else _one_by_one
    starts = jtu.tree_map(lambda a, b: jnp.stack([a, b]), q0, qg)
    runs = run(lambda q: lanczos(matvec, q, steps, return_basis=True))(starts)
    first = [jtu.tree_map(lambda r: r[0], r) for r in runs]
    second = [jtu.tree_map(lambda r: r[1], r) for r in runs]
    alphas, betas, alive, basis = first
    ritz, vectors, newton = _ritz_and_newton_bound(alphas, betas, alive, second[:3],
                                                   gnorm.astype(dtype),
                                                   full=steps == n)
    low, high = ritz[0], ritz[-1]
    v = basis_combine(basis, vectors[:, 0])
    vnorm = tree_norm(v)
    v = jtu.tree_map(lambda x, q: jnp.where(vnorm > 0, x / jnp.where(vnorm > 0, vnorm, 1), q),
                     v, q0)
    saddle = low < -(eps**0.5) * jnp.maximum(jnp.abs(high), jnp.abs(low))
    # A flat point: zero gradient and no curvature anywhere Lanczos looked.
    flat_point = (tree_inf_norm(it.grad) == 0) & (low == 0) & (high == 0)
    h = eps**0.25 * x_scale(params)
    f0 = it.value
    # f at x ± h·q: one trace of `fun` (batched over the two points, which is a smaller
    # program than a two-trip loop), evaluated only on a flat point
    sides = jax.lax.cond(
        flat_point,
        lambda: run(lambda sign: value_fn(tree_axpy(sign * h, q0, params)).astype(dtype))(
            jnp.array([1.0, -1.0], dtype)),
        lambda: jnp.stack([f0, f0]).astype(dtype))
    f_plus, f_minus = sides[0], sides[1]
    lower_side = jnp.minimum(f_plus, f_minus) < f0
    level = flat_point & (f_plus == f0) & (f_minus == f0)
    q_side = jtu.tree_map(lambda q: jnp.where(f_plus <= f_minus, q, -q), q0)
    v = tree_where(flat_point & lower_side, q_side, v)
    saddle = saddle | (flat_point & lower_side)
    # The error allowed in x: rtol·s(x), but never below √eps·s(x) (as close as a gradient
    # can place x* in any case), with a margin of ILL_CONDITIONED_MARGIN: the in-loop error
    # estimates that certified the solve are good to small factors, and this check is there
    # to catch the gross misses (0.5 off where 1e-6 was asked), not to second-guess those
    # (SubspaceNewton on a 1000-variable GLM in float64 at rtol 1e-6: Newton step 5e-6 against
    # 2.2e-6, well solved). A gradient within the user's own absolute tolerance (‖g‖∞ ≤ atol)
    # is what was asked for: the user set the scale, so no error in x refuses it
    # (warm-started inner solves with rtol = 0 and atol > 0 stop at their start).
    rtol = rtol if rtol is not None else default_rtol(dtype)
    tol = ILL_CONDITIONED_MARGIN * max(rtol, float(jnp.finfo(dtype).eps) ** 0.5)
    far = (newton > tol * x_scale(params)) & (tree_inf_norm(it.grad) > atol)
    new = RESULTS.where(saddle, RESULTS.saddle_point,
                        RESULTS.where(level, RESULTS.plateau,
                                      RESULTS.where(far, RESULTS.ill_conditioned,
                                                    RESULTS.successful)))
    curvature = jnp.where(flat_point, 0.0, low).astype(dtype)
    num_fun = jnp.where(flat_point, 2, 0).astype(jnp.int32)
    num_hvp = jnp.asarray(2 * steps, jnp.int32)
    direction = jtu.tree_map(lambda x, p: x.astype(p.dtype), v, params)
    return Curvature(RESULTS.where(result == RESULTS.successful, new, result), direction,
                     curvature, num_hvp, num_fun)


def _one_by_one(fn):
    """`fn` mapped over the leading axis of its argument (of length 2) by two calls: `vmap`
    without batching, for functions that cannot be batched."""
    def mapped(x):
        outs = [fn(jtu.tree_map(lambda a, i=i: a[i], x)) for i in range(2)]
        return jtu.tree_map(lambda a, b: jnp.stack([a, b]), *outs)
    return mapped


LITERAL_START = 4096  # up to this many parameters the check's start is a literal (32 KB)


def _start(params, dtype):
    """The saddle check's fixed start, shaped like `params`: the golden-angle sequence
    cos(1 + 2.4k) over the leaves in order (k counts on across leaves), normalised; no zero
    entry and no pattern, as good as a random vector at missing no eigenvector, without the
    few hundred ops of a PRNG draw in every compiled solve. Each leaf is given its
    parameter's sharding (a local slice of the replicated sequence, no communication)."""
    leaves, treedef = jtu.tree_flatten(params)
    if tree_size(params) <= LITERAL_START and not distributed.mesh_in_context():
        # A literal of the program on small problems: XLA does not fold the sequence and its
        # norm, which cost two kernels of their own (issue 20: compile time).
        k = np.arange(tree_size(params), dtype=np.float64)
        flat = np.cos(1.0 + 2.399963 * k)
        flat = (flat / np.linalg.norm(flat)).astype(dtype)
        parts, offset = [], 0
        for leaf in leaves:
            parts.append(jnp.asarray(flat[offset:offset + leaf.size].reshape(leaf.shape)))
            offset += leaf.size
        return jtu.tree_unflatten(treedef, parts)
    parts, offset = [], 0
    for leaf in leaves:
        k = jnp.arange(offset, offset + leaf.size, dtype=dtype)
        parts.append(jnp.cos(1.0 + 2.399963 * k).reshape(leaf.shape))
        offset += leaf.size
    q0 = jtu.tree_unflatten(treedef, parts)
    norm = tree_norm(q0)
    return distributed.like(jtu.tree_map(lambda q: q / norm, q0), params)


def _tridiagonal(alphas, betas):
    """The symmetric tridiagonal matrix with diagonal α and off-diagonal β, as α and β times
    constant 0/1 band masks (the masks are literals of the program: fewer instructions than
    comparing index grids, and than `jnp.diag` with an offset, which costs a pad and a select
    per diagonal)."""
    k = alphas.size
    upper = np.eye(k, k=1, dtype=alphas.dtype)
    off = jnp.pad(betas, (0, k - betas.size))
    return (alphas[:, None] * np.eye(k, dtype=alphas.dtype) + off[:, None] * upper
            + off[None, :] * upper.T)


def _ritz_and_newton_bound(alphas, betas, alive, second, gnorm, full: bool):
    """The Ritz pairs of the run from q0 (α, β, live mask) and the lower bound on ‖H⁻¹g‖ of
    `curvature_check` from the run from g (`second`: its α, β and live mask; `gnorm` = ‖g‖₂).

    The run starts at g/‖g‖ and keeps its basis Q orthonormal (full reorthogonalisation), so
    Qᵀg = ‖g‖e₁ up to round-off: the bound needs no product with Q (one contraction over the
    parameters, and the second run's basis, fewer in the program; issue 20).

    Without the last β (not returned) only the first m = k − 1 basis vectors of the second
    run have their products inside span Q: H Q₍ₘ₎ = Q T[:, :m]. Where the run spans the whole
    space (`full`, k = n) the k × k T is exact and m = k. The singular pairs of B = T[:, :m]
    come from the symmetric eigenproblem of the augmented matrix [[0, B], [Bᵀ, 0]]
    (eigenvalues ±σᵢ, eigenvectors [uᵢ; vᵢ]/√2): as accurate as an SVD, where an SVD inside
    the check's `cond` crashed XLA:CPU's compiler intermittently (a segfault in two full test
    runs). (One batched call on the first run's tridiagonal padded to the augmented size was
    a larger program than two calls: the padding costs more than a call.)"""
    k = alphas.size
    m = k if full else k - 1
    # As in `extreme_eigenvalues`: decoupled dead steps take α₀, inside the live spectrum.
    vectors, ritz = jax.lax.linalg.eigh(_tridiagonal(jnp.where(alive, alphas, alphas[0]), betas),
                                        symmetrize_input=False)
    alphas2, betas2, alive2 = second
    b = _tridiagonal(jnp.where(alive2, alphas2, 0), betas2)[:, :m]
    upper = jnp.pad(b, ((0, m), (k, 0)))  # B in the top-right block, zeros elsewhere
    vecs, w = jax.lax.linalg.eigh(upper + upper.T, symmetrize_input=False)
    dtype = alphas.dtype
    c = jnp.sqrt(2.0).astype(dtype) * gnorm * vecs[k, :]
    keep = w > 10 * jnp.finfo(dtype).eps * jnp.max(jnp.abs(w))
    terms = jnp.where(keep, c / jnp.where(keep, w, 1), 0)
    return ritz, vectors, jnp.linalg.norm(terms)


def escape(value_fn, it: Iterate, curvature: Curvature, when=True):
    """A step out of a saddle along its direction of negative curvature v (`curvature_check`):
    the sign of v that does not go uphill to first order (gᵀv ≤ 0), and the longest t in
    s(x), s(x)/2, s(x)/4, … with f(x + t·v) < f(x) + ¼·λ·t², λ = vᵀHv ≤ 0: at least half the
    decrease the quadratic model promises (Moré and Sorensen, "On the use of directions of
    negative curvature in a modified Newton method", Math. Prog. 1979). Starts long because a
    saddle's way down is typically long (the minima of (x² − 1)² lie a unit away from 0).

    Returns (params, found, trials): `found` is False when no trial decreased f enough (the
    saddle is then reported as `saddle_point`). Nothing is tried where `when` is False."""
    params, f0 = it.params, it.value
    dtype = result_dtype(params)
    v = jtu.tree_map(lambda x: x.astype(dtype), curvature.direction)
    g = jtu.tree_map(lambda x: x.astype(dtype), it.grad)
    uphill = tree_dot(g, v) > 0
    v = jtu.tree_map(lambda x: jnp.where(uphill, -x, x), v)
    t0 = x_scale(params).astype(dtype)
    lam = jnp.minimum(curvature.curvature, 0).astype(dtype)

    def trial(t):
        f = value_fn(tree_axpy(t, v, params))
        return jnp.isfinite(f) & (f < f0 + 0.25 * lam * t**2)

    def cond(carry):
        k, _, found = carry
        return ~found & (k < ESCAPE_TRIALS)

    def body(carry):
        k, t, _ = carry
        found = trial(t)
        return k + 1, jnp.where(found, t, 0.5 * t), found

    k0 = jnp.where(when, 0, ESCAPE_TRIALS).astype(jnp.int32)
    trials, t, found = while_loop(cond, body, (k0, t0, jnp.array(False)),
                                  max_steps=ESCAPE_TRIALS)
    trials = trials - k0
    return tree_axpy(jnp.where(found, t, 0), v, params), found, trials


def hessian_products_available(fn, params, args) -> bool:
    """Whether `fn` can be differentiated twice (forward over reverse) at trace time: a
    first-order solver's objective may hold a `custom_vjp` without a JVP rule."""
    def hvp(v):
        return jax.jvp(lambda p: jax.grad(lambda q: fn(q, args)[0])(p), (params,), (v,))[1]
    try:
        jax.eval_shape(hvp, params)
    except Exception:  # any failure to trace means: no curvature check for this objective
        return False
    return True
