"""Levenberg–Marquardt, dense path: Moré's scaled trust region on the SVD of J D⁻¹
(MINPACK's `lmder`).

Each step forms J (once per accepted point), factors J D⁻¹ = U S Vᵀ, finds λ ≥ 0 with
‖D p(λ)‖ ≈ Δ by Moré's safeguarded Newton iteration on the secular equation (closed form in
the SVD: p(λ) = −D⁻¹ V S(S² + λ)⁻¹ Uᵀr), and updates Δ by MINPACK's rule. A rejected step
reuses the factorization. Reference: J. J. Moré, "The Levenberg-Marquardt algorithm:
implementation and theory", Lecture Notes in Mathematics 630 (1978).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .. import _least_squares as lsq
from .. import _trust_region as tr
from .._base import Counts, Point
from .._results import RESULTS
from .._tree import ravel, tree_where
from .._xla_cpu import one_kernel
from ._common import ACCEPT, use_geodesic


class DenseState(eqx.Module):
    svd: lsq.ScaledSVD  # of J D⁻¹ at the current point
    diag: jax.Array  # D
    delta: jax.Array  # trust-region radius Δ (in the D-norm)
    lam: jax.Array  # last λ, the starting guess of the next secular-equation solve
    first: jax.Array  # no step accepted yet (Δ is then clipped to the first ‖D p‖)
    rnorm0: jax.Array
    cos: jax.Array  # gradient cosine at the current point
    stale: jax.Array  # the SVD is not yet of the current point's Jacobian (new point)
    rnorm: jax.Array  # ‖r‖ at the current point


def init(solver: Any, fn, point: Point, args):
    dtype = lsq.working_dtype(point.y, point.f)
    r = ravel(point.f)[0].astype(dtype)
    rnorm = jnp.linalg.norm(r)
    # J is formed at the start of the first step (`stale`), not here: one Jacobian and SVD
    # site in the compiled program instead of two (see `jaxopt2._xla_cpu`).
    x = ravel(point.y)[0]
    k, n = min(r.size, x.size), x.size
    svd = lsq.ScaledSVD(jnp.zeros(k, dtype), jnp.zeros((k, n), dtype), jnp.zeros(k, dtype),
                        jnp.zeros((), dtype),
                        jnp.zeros((r.size, k), dtype) if solver.geodesic else None)
    zero = jnp.zeros((), dtype)
    state = DenseState(svd, jnp.ones(n, dtype), zero, zero, jnp.array(True), rnorm,
                       jnp.ones((), dtype), jnp.array(True), rnorm)
    return state, Counts(), lsq.at_floor(rnorm, dtype), RESULTS.successful


def _diag(scale: bool, old, colnorm, first):
    """D: the largest column norms seen so far (zeros counted as 1), or I."""
    if not scale:
        return jnp.ones_like(colnorm)
    fresh = jnp.where(colnorm > 0, colnorm, 1.0)
    return jnp.where(first, fresh, jnp.maximum(old, colnorm))


def step(solver: Any, fn, point: Point, args, state: DenseState):
    dtype = state.delta.dtype
    ftol, xtol, gtol = lsq.tolerances(solver, dtype)
    eps = jnp.finfo(dtype).eps
    x, unravel, rflat = lsq.flat_problem(fn, point.y, args, dtype)
    r = ravel(point.f)[0].astype(dtype)
    rnorm = state.rnorm
    n, factor = x.size, solver.factor

    def refresh():
        """J, D, the SVD of J D⁻¹ and the gradient cosine at the current point."""
        jac = lsq.dense_jacobian(rflat, x, r.size)
        cos, colnorm = lsq.column_cosine(jac, r, rnorm)
        diag = _diag(solver.scale, state.diag, colnorm, first=state.first)
        return lsq.scaled_svd(jac, diag, r, keep_u=solver.geodesic), diag, cos

    svd, diag, cos = lax.cond(state.stale, refresh,
                              lambda: (state.svd, state.diag, state.cos))
    xnorm = jnp.linalg.norm(diag * x)  # ‖D y‖

    # Δ₀ = factor·‖D y₀‖, once D is known (the first step).
    delta0 = jnp.where(xnorm > 0, factor * xnorm, factor)
    delta = jnp.where(state.first & state.stale, delta0, state.delta).astype(dtype)
    # λ with the step's norm and model decrease, packed in one vector by `lm_solve`.
    lm = lsq.lm_solve(svd.s, svd.c, svd.rank_tol, n, delta, state.lam)
    lam = lm[lsq.LM_LAM]
    b = lsq.svd_coefficients(svd, lam)
    extra = Counts()
    if solver.geodesic:
        b, extra = _geodesic(rflat, x, svd, diag, lam, b)
        # ‖D p‖ (V has orthonormal columns), the model decrease and ‖S b‖² of the new b,
        # in place of those of the λ-step (whose norm still clips the first Δ).
        lm = jnp.concatenate([lm, jnp.stack([jnp.linalg.norm(b), lsq.model_decrease(svd, b),
                                             jnp.sum((svd.s * b) ** 2)])])
    geo = 7 if solver.geodesic else 0
    p = (svd.vt.T @ b) / diag

    x_new = x + p
    y_new = unravel(x_new)
    f_new, aux_new = fn(y_new, args)
    r_new = ravel(f_new)[0].astype(dtype)
    rnorm_new = jnp.linalg.norm(r_new)
    xnorm_new = jnp.linalg.norm(diag * x_new)

    def after(lm, first, rnorm, rnorm_new, delta, xnorm, xnorm_new, cos, rnorm0):
        lam, znorm = lm[lsq.LM_LAM], lm[lsq.LM_NORM]
        if geo:
            pnorm, decrease, sb2 = lm[geo], lm[geo + 1], lm[geo + 2]
        else:
            pnorm, decrease, sb2 = znorm, lm[lsq.LM_DECREASE], lm[lsq.LM_SB2]
        stationary = (cos <= gtol) | lsq.at_floor(rnorm, dtype)
        # MINPACK clips the (generous) initial radius to the first step's length.
        delta = jnp.where(first, jnp.minimum(delta, znorm), delta)
        actual, predicted, ratio = lsq.reductions(rnorm, rnorm_new, decrease)
        safe_r = jnp.where(rnorm > 0, rnorm, 1.0)
        dirder = -(sb2 + lam * pnorm**2) / safe_r**2
        # Radius update (Moré 1978, §4 and MINPACK): shrink by a factor in [0.1, 0.5]
        # found by interpolating the actual reduction, expand to 2‖D p‖ on a good step
        # (or a Gauss-Newton one, λ = 0); λ, the next secular solve's first guess,
        # moves inversely.
        shrink = tr.more_shrink(actual, dirder, rnorm, rnorm_new)
        poor, good = tr.bands(ratio)
        good = ~poor & ((lam == 0) | good)
        delta = tr.update_radius(delta, poor, good,
                                 shrunk=shrink * jnp.minimum(delta, 10.0 * pnorm),
                                 grown=2.0 * pnorm)
        lam = jnp.where(poor, lam / shrink, jnp.where(good, 0.5 * lam, lam)).astype(dtype)
        accept = ~stationary & (ratio >= ACCEPT) & jnp.isfinite(rnorm_new)
        rnorm_now = jnp.where(accept, rnorm_new, rnorm)
        xnorm = jnp.where(accept, xnorm_new, xnorm)
        tried = ~stationary
        converged = stationary | lsq.at_floor(rnorm_now, dtype) | (tried & (
            lsq.ftol_test(actual, predicted, ratio, ftol) | (delta <= xtol * xnorm)))
        stalled = tried & (lsq.ftol_test(actual, predicted, ratio, eps)
                           | (delta <= eps * xnorm))
        ok = converged | lsq.stalled_success(cos, rnorm_now, rnorm0, dtype)
        done = converged | stalled
        result = RESULTS.where(done & ~ok, RESULTS.line_search_failed, RESULTS.successful)
        return accept, delta, lam, rnorm_now, done, result

    # All the scalar work after the trial evaluation, as one kernel on XLA:CPU.
    accept, delta, lam, rnorm_now, done, result = one_kernel(
        after, lm, state.first, rnorm, rnorm_new, delta, xnorm, xnorm_new, cos, state.rnorm0)
    new = tree_where(accept, Point(y_new, f_new, aux_new), point)
    new_state = DenseState(svd, diag, delta, lam, state.first & ~accept, state.rnorm0, cos,
                           accept, rnorm_now)
    fresh = state.stale.astype(jnp.int32)
    counts = Counts.of(fun=1 + fresh, jac=fresh) + extra
    return new, new_state, counts, done, result


def _geodesic(rflat, x, svd, diag, lam, b):
    """v + a/2 with a the damped solution for r''(v, v) (Transtrum & Sethna 2012, §4),
    kept only when 2‖D a‖ ≤ 0.75‖D v‖."""
    v = (svd.vt.T @ b) / diag

    def directional(z):
        return jax.jvp(rflat, (z,), (v,))[1]

    rvv = jax.jvp(directional, (x,), (v,))[1]
    a = lsq.svd_coefficients(svd, lam, svd.u.T @ rvv)
    use = use_geodesic(jnp.linalg.norm(a), jnp.linalg.norm(b), jnp.all(jnp.isfinite(a)))
    return jnp.where(use, b + 0.5 * a, b), Counts.of(fun=1, jvp=2)
