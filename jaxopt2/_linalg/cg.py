"""Truncated conjugate gradients on pytrees for Newton-type inner solves.

Solves A x = b for symmetric A given only `matvec`, stopping at the first of: the residual test
‖r‖ ≤ max(rtol·‖b‖, atol); negative (or zero) curvature pᵀAp ≤ 0; the trust-region boundary
‖x‖ = radius (Steihaug–Toint); `max_iters`. Unlike a plain linear solve this never fails: with
indefinite A it returns the last useful iterate, which for A = ∇²f, b = −∇f is still a descent
direction (every CG iterate is, since x₀ = 0).

Why not `lineax.CG`: lineax's CG solves a positive (semi)definite system and reports a
failure on a breakdown or when `max_steps` runs out. A Newton inner solve needs the opposite:
the Steihaug truncation at a trust-region boundary, an exit at negative curvature that
returns a descent direction, a budget whose exhaustion is a normal outcome (the partial
iterate is the step), an energy-norm stopping test, and a traced relative tolerance that
changes every outer step (the Eisenstat–Walker forcing term).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._loops import while_loop
from .._tree import (
    tree_add,
    tree_axpy,
    tree_dot,
    tree_neg,
    tree_norm,
    tree_size,
    tree_where,
    tree_zeros_like,
)


class CGResult(eqx.Module):
    """What `truncated_cg` returns: the iterate and which exit ended the solve (none of the
    three flags when the budget ran out)."""

    x: object
    num_iters: jax.Array  # = number of matvecs
    converged: jax.Array
    negative_curvature: jax.Array
    hit_boundary: jax.Array


def truncated_cg(matvec, b, *, rtol, atol=0.0, max_iters: int, precond=None, radius=None,
                 energy_tol=None, give_up_after: int | None = None, limit=None):
    """Preconditioned truncated CG from x₀ = 0.

    `precond(r)` applies M⁻¹ (symmetric positive definite) or is None. With `radius`, the
    iterates are confined to ‖x‖ ≤ radius (Euclidean), stepping to the boundary along the
    current direction on negative curvature or when a step would leave the region.
    On negative curvature at the first iteration (x still 0) the result is b itself, scaled to
    the boundary when a radius is given, so callers always get a descent direction for b = −g.
    With `energy_tol` = τ, the residual test additionally requires ‖r‖² ≤ τ·bᵀx (bᵀx = xᵀAx
    for a CG iterate: the residual small against the energy of the step taken so far).
    With `give_up_after` = m, from iteration m on CG stops (not converged) as soon as the mean
    rate at which the residual has fallen so far would need more than `max_iters` iterations
    in all to reach the tolerance: a caller with a cheaper fallback does not spend the whole
    budget on a solve that cannot finish within it.
    `limit` (traced, at most `max_iters`) caps this call's iterations below the static
    `max_iters`, which stays the bound of an unrolled loop: a budget that a caller adapts from
    step to step without recompiling.
    """
    budget = max_iters if limit is None else jnp.minimum(limit, max_iters)
    apply_m = (lambda r: r) if precond is None else precond
    x0 = tree_zeros_like(b)
    z0 = apply_m(b)
    rz0 = tree_dot(b, z0)
    b_norm = jnp.sqrt(tree_dot(b, b))
    tol = jnp.maximum(rtol * b_norm, atol)
    false = jnp.array(False)

    def to_boundary(x, p):
        # largest τ ≥ 0 with ‖x + τ p‖ = radius
        xp, pp, xx = tree_dot(x, p), tree_dot(p, p), tree_dot(x, x)
        disc = jnp.maximum(xp * xp + pp * (radius * radius - xx), 0.0)
        return (-xp + jnp.sqrt(disc)) / jnp.where(pp > 0, pp, 1.0)

    def cond(c):
        _, r, _, _, k, stop, *_ = c
        return ~stop & (k < budget)

    def body(c):
        x, r, p, rz, k, _, conv, neg, bnd = c
        ap = matvec(p)
        pap = tree_dot(p, ap)
        negative = pap <= 0
        alpha = rz / jnp.where(negative, 1.0, pap)
        x_new = tree_axpy(alpha, p, x)
        if radius is not None:
            outside = tree_dot(x_new, x_new) >= radius * radius
            leave = negative | outside
            x_new = jax.tree_util.tree_map(
                lambda a, b: jnp.where(leave, a, b), tree_axpy(to_boundary(x, p), p, x), x_new)
            hit = leave
        else:
            # without a region, stop at the last iterate; at k = 0 fall back to b
            first = k == 0
            x_new = jax.tree_util.tree_map(
                lambda a, bb, xn: jnp.where(negative, jnp.where(first, bb, a), xn), x, b, x_new)
            hit = false
        r_new = tree_axpy(-alpha, ap, r)
        z_new = apply_m(r_new)
        rz_new = tree_dot(r_new, z_new)
        p_new = tree_axpy(rz_new / jnp.where(rz == 0, 1.0, rz), p, z_new)
        rr = tree_dot(r_new, r_new)
        converged = jnp.sqrt(rr) <= tol
        if energy_tol is not None:
            converged = converged & (rr <= energy_tol * tree_dot(b, x_new))
        stop = negative | hit | converged
        if give_up_after is not None:
            # (k + 1)·log(tol/‖b‖)/log(‖r‖/‖b‖) iterations in all at the rate so far (a
            # residual that grew, or a NaN one, needs infinitely many)
            tiny = jnp.finfo(rr.dtype).tiny
            slow = ((k + 1) * jnp.log(jnp.maximum(tol, tiny) / b_norm)
                    < budget * jnp.log(jnp.maximum(jnp.sqrt(rr), tiny) / b_norm))
            slow = slow | ~jnp.isfinite(rr)
            stop = stop | ((k + 1 >= give_up_after) & slow)
        return (x_new, r_new, p_new, rz_new, k + 1, stop, converged & ~negative & ~hit,
                negative, hit)

    init = (x0, b, z0, rz0, jnp.zeros((), jnp.int32), b_norm <= tol, b_norm <= tol, false, false)
    x, _, _, _, k, _, conv, neg, bnd = while_loop(cond, body, init, max_steps=max_iters)
    return CGResult(x, k, conv, neg, bnd)


def damped_cg(matvec, g, lam, *, rtol, max_steps, x0=None):
    """Truncated CG for (C + λI) p = −g, optionally warm-started from x0.

    Returns (p, iterations). The stopping test is ‖(C + λI)p + g‖ ≤ rtol·‖g‖ whatever the
    warm start. A warm start is only used when its quadratic model value
    φ(x0) = ½x0ᵀ(C + λI)x0 + gᵀx0 is negative, i.e. it beats p = 0: CG from x0 only ever
    decreases φ, so a bad start (a stale direction after the landscape turned) could
    otherwise leave p worse than no step at all.
    """
    def damped(v):
        return tree_axpy(lam, v, matvec(v))

    atol = rtol * tree_norm(g)
    if x0 is None:
        cg = truncated_cg(damped, tree_neg(g), rtol=0.0, atol=atol, max_iters=max_steps)
        return cg.x, cg.num_iters
    ax0 = damped(x0)
    use = 0.5 * tree_dot(x0, ax0) + tree_dot(g, x0) < 0
    x0 = tree_where(use, x0, tree_zeros_like(x0))
    ax0 = tree_where(use, ax0, tree_zeros_like(ax0))
    # Solve for the correction d = p − x0: (C + λI) d = −g − (C + λI) x0.
    cg = truncated_cg(damped, tree_neg(tree_add(g, ax0)), rtol=0.0, atol=atol,
                      max_iters=max_steps)
    return tree_add(x0, cg.x), cg.num_iters + 1


def cg_budget(params, cg_max_steps: int | None) -> int:
    """Default CG iteration cap: twice the number of parameters (CG is exact in n steps in
    exact arithmetic; the slack absorbs rounding), never below 10."""
    return cg_max_steps if cg_max_steps is not None else max(2 * tree_size(params), 10)
