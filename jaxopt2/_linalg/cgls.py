"""Damped CGLS and preconditioned CGLS on pytrees for min ‖J x + r‖² + λ‖x‖², given only
the products x ↦ J x and u ↦ Jᵀu (a linearization and its transpose).

Why not `lineax.NormalCG` / `lineax.LSMR`: ours updates the least-squares residual
q = −r − J x in residual space and returns ‖q‖², the linear model's sum of squares that the
trust-region ratio needs, without another product; the damping λ may be traced (it changes
every outer step); a preconditioner acts on the normal equations while the stopping test
stays the unpreconditioned ‖Jᵀq − λx‖ ≤ rtol·‖g‖; a breakdown of the preconditioner is
reported instead of silently returning garbage; and running out of `max_iters` is a normal
outcome (the partial iterate is a truncated Gauss–Newton step).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._loops import while_loop
from .._tree import tree_axpy, tree_dot, tree_neg, tree_zeros_like


class CGLSResult(eqx.Module):
    """What `cgls` / `pcgls` return: the iterate, the linear model's sum of squares at it and
    the iterations taken (one jvp and one vjp each)."""

    x: Any
    residual_sq: jax.Array  # ‖r + J x‖² (the linear model's sum of squares at x)
    num_iters: jax.Array


def cgls(jvp, vjp, r, g, lam, *, rtol, max_iters: int, dtype) -> CGLSResult:
    """Damped CGLS from x = 0 for min ‖J x + r‖² + λ‖x‖², i.e. (JᵀJ + λI) x = −Jᵀr = −g.

    Mathematically CG on the normal equations, but the residual q = −r − J x is updated in
    residual space, which loses less to rounding than forming JᵀJ products (Björck, Numerical
    Methods for Least Squares Problems, §7.4). Stops at ‖Jᵀq − λx‖ ≤ rtol·‖g‖, at zero
    curvature (possible only with λ = 0 and J d = 0), or after `max_iters` (one jvp and one vjp
    each). The model's sum of squares ‖q‖² comes for free, which is what the predicted
    reduction needs.
    """
    gnorm = jnp.sqrt(tree_dot(g, g)).astype(dtype)
    tol = rtol * gnorm
    s0 = tree_neg(g)
    gamma0 = (gnorm * gnorm).astype(dtype)

    def cond(c):
        *_, k, stop = c
        return ~stop & (k < max_iters)

    def body(c):
        x, q, d, gamma, k, _ = c
        t = jvp(d)
        delta = (tree_dot(t, t) + lam * tree_dot(d, d)).astype(dtype)
        flat = delta <= 0
        alpha = jnp.where(flat, 0.0, gamma / jnp.where(flat, 1.0, delta))
        x = tree_axpy(alpha, d, x)
        q = tree_axpy(-alpha, t, q)
        s = tree_axpy(-lam, x, vjp(q))
        gamma_new = tree_dot(s, s).astype(dtype)
        d = tree_axpy(gamma_new / jnp.where(gamma > 0, gamma, 1.0), d, s)
        stop = flat | (jnp.sqrt(gamma_new) <= tol)
        return x, q, d, gamma_new, k + 1, stop

    init = (tree_zeros_like(g), tree_neg(r), s0, gamma0, jnp.zeros((), jnp.int32),
            gnorm <= 0)
    x, q, _, _, k, _ = while_loop(cond, body, init, max_steps=max_iters)
    return CGLSResult(x, tree_dot(q, q).astype(dtype), k)


def pcgls(jvp, vjp, r, g, lam, precond, *, rtol, max_iters: int, dtype):
    """`cgls` with a symmetric positive definite preconditioner M on the normal equations:
    PCG on (AᵀA + λI) x = −g, each product one jvp and one vjp (preconditioned CGLS, cf.
    Björck, Numerical Methods for Least Squares Problems, ch. 7, here with a general M on the
    normal equations rather than a split one on A).

    As in `cgls` the least-squares residual q = −r − A x is updated in residual space and the
    normal-equations residual s = Aᵀq − λx recomputed from it, never recurred, so rounding does
    not accumulate in s; M only changes the search directions (d = M⁻¹s + β d). The stopping
    test is the same unpreconditioned one, ‖s‖ ≤ rtol·‖g‖, so a preconditioner changes the cost
    of a step, not its accuracy. Returns (CGLSResult, broken): `broken` when M⁻¹s came back
    non-finite or with sᵀM⁻¹s ≤ 0 (M not positive definite) while the problem's own s was
    finite; the solve then stopped and x must not be used.
    """
    gnorm = jnp.sqrt(tree_dot(g, g)).astype(dtype)
    tol = rtol * gnorm

    def unusable(gamma, live):
        # The system's own quantities are finite (a NaN problem is the outer loop's business,
        # reported as non-finite) but the preconditioned ones are not, or M is not SPD.
        return live & ~(jnp.isfinite(gamma) & (gamma > 0))

    s0 = tree_neg(g)
    z0 = precond(s0)
    gamma0 = tree_dot(s0, z0).astype(dtype)
    broken0 = unusable(gamma0, jnp.isfinite(gnorm) & (gnorm > 0))

    def cond(c):
        *_, k, stop, _ = c
        return ~stop & (k < max_iters)

    def body(c):
        x, q, d, gamma, k, _, _ = c
        t = jvp(d)
        delta = (tree_dot(t, t) + lam * tree_dot(d, d)).astype(dtype)
        flat = delta <= 0
        # an overflowing direction (M⁻¹ off by orders of magnitude) would stall silently
        overflow = ~jnp.isfinite(delta) & jnp.isfinite(gamma)
        alpha = jnp.where(flat | overflow, 0.0, gamma / jnp.where(flat, 1.0, delta))
        x = tree_axpy(alpha, d, x)
        q = tree_axpy(-alpha, t, q)
        s = tree_axpy(-lam, x, vjp(q))
        ss = tree_dot(s, s).astype(dtype)
        converged = jnp.sqrt(ss) <= tol
        z = precond(s)
        gamma_new = tree_dot(s, z).astype(dtype)
        broken = overflow | unusable(gamma_new, jnp.isfinite(ss) & ~converged)
        d = tree_axpy(gamma_new / jnp.where(gamma > 0, gamma, 1.0), d, z)
        return x, q, d, gamma_new, k + 1, flat | converged | broken, broken

    init = (tree_zeros_like(g), tree_neg(r), z0, gamma0, jnp.zeros((), jnp.int32),
            (gnorm <= 0) | broken0, broken0)
    x, q, _, _, k, _, broken = while_loop(cond, body, init, max_steps=max_iters)
    return CGLSResult(x, tree_dot(q, q).astype(dtype), k), broken
