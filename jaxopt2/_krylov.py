"""Truncated conjugate gradients on pytrees for Newton-type inner solves.

Solves A x = b for symmetric A given only `matvec`, stopping at the first of: the residual test
‖r‖ ≤ max(rtol·‖b‖, atol); negative (or zero) curvature pᵀAp ≤ 0; the trust-region boundary
‖x‖ = radius (Steihaug–Toint); `max_iters`. Unlike a plain linear solve this never fails: with
indefinite A it returns the last useful iterate, which for A = ∇²f, b = −∇f is still a descent
direction (every CG iterate is, since x₀ = 0).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._loops import while_loop
from ._tree import tree_axpy, tree_dot, tree_zeros_like


class CGResult(eqx.Module):
    x: object
    num_iters: jax.Array  # = number of matvecs
    converged: jax.Array
    negative_curvature: jax.Array
    hit_boundary: jax.Array


def truncated_cg(matvec, b, *, rtol, atol=0.0, max_iters: int, precond=None, radius=None,
                 energy_tol=None):
    """Preconditioned truncated CG from x₀ = 0.

    `precond(r)` applies M⁻¹ (symmetric positive definite) or is None. With `radius`, the
    iterates are confined to ‖x‖ ≤ radius (Euclidean), stepping to the boundary along the
    current direction on negative curvature or when a step would leave the region.
    On negative curvature at the first iteration (x still 0) the result is b itself, scaled to
    the boundary when a radius is given, so callers always get a descent direction for b = −g.
    With `energy_tol` = τ, the residual test additionally requires ‖r‖² ≤ τ·bᵀx (bᵀx = xᵀAx
    for a CG iterate: the residual small against the energy of the step taken so far).
    """
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
        return ~stop & (k < max_iters)

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
        return (x_new, r_new, p_new, rz_new, k + 1, stop, converged & ~negative & ~hit,
                negative, hit)

    init = (x0, b, z0, rz0, jnp.zeros((), jnp.int32), b_norm <= tol, b_norm <= tol, false, false)
    x, _, _, _, k, _, conv, neg, bnd = while_loop(cond, body, init, max_steps=max_iters)
    return CGResult(x, k, conv, neg, bnd)


EW_ETA_MAX = 0.5  # forcing terms are capped here: early steps need only a rough direction
_EW_GAMMA, _EW_ALPHA = 0.9, 2.0  # Eisenstat–Walker choice 2


def eisenstat_walker(grad_norm, prev_grad_norm, prev_eta, dtype):
    """Forcing term ηₖ for an inexact Newton solve, choice 2 of Eisenstat & Walker (1996):

        ηₖ = 0.9 (‖gₖ‖ / ‖gₖ₋₁‖)²,   raised to 0.9 ηₖ₋₁² when that exceeds 0.1,

    then clipped to [eps, 0.5]. The inner solve stops at ‖H p + g‖ ≤ ηₖ‖gₖ‖. It is
    scale-invariant, loose far from the minimizer (η = 0.5 while ‖g‖ does not fall) and
    tightens as ‖g‖ falls quadratically, which keeps superlinear local convergence without
    over-solving early; the safeguard stops η from dropping abruptly after one lucky step.
    Below eps the residual test cannot be met and would only burn the CG budget.
    A zero `prev_grad_norm` is treated as 1. Start with prev_grad_norm = ‖g₀‖ and
    prev_eta = 0.5, which gives η₀ = 0.5.
    """
    ratio = grad_norm / jnp.where(prev_grad_norm > 0, prev_grad_norm, 1.0)
    eta = _EW_GAMMA * ratio**_EW_ALPHA
    floor = _EW_GAMMA * prev_eta**_EW_ALPHA
    eta = jnp.where(floor > 0.1, jnp.maximum(eta, floor), eta)
    eps = jnp.finfo(dtype).eps
    return jnp.clip(eta, eps, EW_ETA_MAX).astype(dtype)
