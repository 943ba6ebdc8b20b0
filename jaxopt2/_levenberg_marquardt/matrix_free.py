"""Levenberg–Marquardt, matrix-free path: the λ-form with damped (preconditioned) CGLS.

J is never formed: each step linearizes r once, scales by D (column norms estimated from Jᵀu
products), solves min ‖J D⁻¹ z + r‖² + λ‖z‖² by CGLS to the Eisenstat–Walker tolerance (or
by preconditioned CG on the damped normal equations), and updates λ by Nielsen's rule
(`jaxopt2._trust_region.nielsen_damping`). Moré's secular equation has no cheap solution
here, so λ itself is the trust-region parameter. Reference: K. Madsen, H. B. Nielsen and
O. Tingleff, "Methods for non-linear least squares problems", IMM, DTU (2004), §3.2.
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
from .._linalg import EW_ETA_MAX, eisenstat_walker
from .._results import RESULTS
from .._tree import tree_add, tree_dot, tree_norm, tree_where, tree_zeros_like
from ._common import ACCEPT, use_geodesic

LAMBDA0 = 1e-3  # λ₀ = 1e-3 · ‖J g‖²/‖g‖² (Nielsen's τ = 1e-3)


class FreeState(eqx.Module):
    diag: Any  # D, a pytree like y (0 before the first step)
    lam: jax.Array  # damping λ (< 0 until the first step sets its scale)
    nu: jax.Array  # Nielsen's growth factor on rejection
    eta: jax.Array  # last Eisenstat-Walker forcing term
    gnorm: jax.Array  # ‖Jᵀr‖ at the last step (for the forcing term)
    rnorm0: jax.Array
    cos: jax.Array  # gradient cosine estimate at the last linearization
    # With a preconditioner only (None otherwise, which leaves that program as it was, and
    # as GaussNewton reports it): the preconditioned CG iterations summed over the solve.
    pcg_iters: jax.Array | None = None


def init(solver: Any, fn, point: Point, args):
    dtype = lsq.working_dtype(point.y, point.f)
    rnorm = tree_norm(point.f).astype(dtype)  # no concatenation: sharded leaves stay so
    one = jnp.ones((), dtype)
    iters = None if solver.preconditioner is None else jnp.zeros((), jnp.int32)
    state = FreeState(tree_zeros_like(point.y), -one, 2 * one, jnp.asarray(EW_ETA_MAX, dtype),
                      rnorm, rnorm, one, iters)
    return state, Counts(), lsq.at_floor(rnorm, dtype), RESULTS.successful


def step(solver: Any, fn, point: Point, args, state: FreeState):
    dtype = state.lam.dtype
    ftol, xtol, gtol = lsq.tolerances(solver, dtype)
    eps = jnp.finfo(dtype).eps
    tmap = jax.tree_util.tree_map
    # Work in z = D p: CGLS on J D⁻¹ is Jacobi-preconditioned, and the damping λ‖D p‖² is
    # Marquardt's scale-invariant one.
    lin = lsq.scaled_linearization(fn, point.y, args, state.diag, solver.scale, dtype,
                                   solver.precision)
    r, jvp, vjp, diag, g = lin.r, lin.jvp, lin.vjp, lin.diag, lin.g
    rnorm, gnorm, jnorm, cos = lin.rnorm, lin.gnorm, lin.jnorm, lin.cos
    stationary = (gnorm == 0) | (cos <= gtol)
    lam = jnp.where(state.lam < 0, LAMBDA0 * jnorm**2, state.lam)
    lam = jnp.where(lam > 0, lam, 1.0).astype(dtype)
    eta = eisenstat_walker(gnorm, state.gnorm, state.eta, dtype)
    eta = lsq.precision_floor(eta, solver.precision)
    n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(point.y))
    max_iters = lsq.cg_budget(solver, n)
    preconditioned = solver.preconditioner is not None

    def attempt():
        # The preconditioner (if any) is built here, not at a stationary point, once per
        # step: A = J D⁻¹ and λ are both fixed within a step (a rejection re-linearizes).
        solve, sketch = lsq.inner_solver(solver.preconditioner, fn, point.y, args, lin, lam,
                                         rtol=eta, max_iters=max_iters, dtype=dtype)
        cg, broken = solve(r, g)
        z, pred, extra, iters = cg.x, rnorm**2 - cg.residual_sq, Counts(), cg.num_iters
        if solver.precision is not None:
            # ‖r‖² − ‖r + Az‖² = −gᵀz + λ‖z‖² for every CG iterate z (zᵀ(AᵀA + λ)z = −gᵀz),
            # from the full-precision gradient: CGLS's residual, accumulated from low-
            # precision products, leaves a difference of nearly equal numbers that rounding
            # can make negative near the solution, and the signed ratio would then accept a
            # step that raised ‖r‖.
            pred = (-tree_dot(g, z) + lam * tree_dot(z, z)).astype(dtype)
        if solver.geodesic:
            z, extra, geo_cg, broken_geo = _geodesic(fn, point.y, args, jvp, vjp, solve, z,
                                                     diag)
            model = tree_add(r, jvp(z))
            pred = rnorm**2 - tree_norm(model).astype(dtype) ** 2
            if preconditioned:
                iters, broken = iters + geo_cg, broken | broken_geo
        y_new = tree_add(point.y, tmap(jnp.divide, z, diag))
        f_new, aux_new = fn(y_new, args)
        counts = Counts.of(fun=1, jvp=cg.num_iters, vjp=cg.num_iters) + extra
        out = (Point(y_new, f_new, aux_new), tree_norm(z).astype(dtype), pred, counts)
        if not preconditioned:
            return out
        return out[:3] + (counts + sketch, broken, iters)

    def skip():
        out = (point, jnp.zeros((), dtype), jnp.zeros((), dtype), Counts.of(fun=0))
        if not preconditioned:
            return out
        return out + (jnp.array(False), jnp.zeros((), jnp.int32))

    trial, pnorm, pred, counts, *pcg = lax.cond(stationary, skip, attempt)
    rnorm_new = tree_norm(trial.f).astype(dtype)
    actual, predicted, ratio = lsq.reductions(rnorm, rnorm_new, pred)
    accept = ~stationary & (ratio >= ACCEPT) & jnp.isfinite(rnorm_new)
    if preconditioned:
        # A broken preconditioner leaves no usable step: keep the point and stop with
        # linear_solve_failed (below), rather than let the λ loop chase a NaN step or a
        # truncated one pass the xtol test.
        broken, iters = pcg
        accept = accept & ~broken
    new = tree_where(accept, trial, point)
    lam_next, nu = tr.nielsen_damping(lam, state.nu, ratio, accept)
    rnorm_now = jnp.where(accept, rnorm_new, rnorm)
    ynorm = tree_norm(tmap(jnp.multiply, diag, point.y)).astype(dtype)

    tried = ~stationary
    converged = stationary | lsq.at_floor(rnorm_now, dtype) | (tried & (
        lsq.ftol_test(actual, predicted, ratio, ftol) | (pnorm <= xtol * ynorm)))
    stalled = tried & (lsq.ftol_test(actual, predicted, ratio, eps) | (pnorm <= eps * ynorm))
    ok = converged | lsq.stalled_success(cos, rnorm_now, state.rnorm0, dtype)
    done = converged | stalled
    result = RESULTS.where(done & ~ok, RESULTS.line_search_failed, RESULTS.successful)
    pcg_iters = None
    if preconditioned:
        done = done | broken
        result = RESULTS.where(broken, RESULTS.linear_solve_failed, result)
        pcg_iters = state.pcg_iters + iters
    new_state = FreeState(diag, lam_next, nu, eta, gnorm, state.rnorm0, cos, pcg_iters)
    return new, new_state, counts + lin.counts, done, result


def _geodesic(fn, y, args, jvp, vjp, solve, z, diag):
    """The matrix-free geodesic correction, by `solve` (the step's damped inner solve, with
    its preconditioner if any). Returns the step, its counts, its inner iterations and
    whether the preconditioner broke (None without one)."""
    v = jax.tree_util.tree_map(jnp.divide, z, diag)

    def directional(q):
        return jax.jvp(lambda u: fn(u, args)[0], (q,), (v,))[1]

    rvv = jax.jvp(directional, (y,), (v,))[1]
    cg, broken = solve(rvv, vjp(rvv))
    a = cg.x
    use = use_geodesic(tree_norm(a), tree_norm(z), jnp.isfinite(tree_norm(a)))
    step = tree_where(use, jax.tree_util.tree_map(lambda u, w: u + 0.5 * w, z, a), z)
    counts = Counts.of(fun=1, jvp=3 + cg.num_iters, vjp=1 + cg.num_iters)
    return step, counts, cg.num_iters, broken
