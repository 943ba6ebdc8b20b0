"""Pieces shared by the root finders (NewtonRaphson, NewtonKrylov, Broyden): the backtracking
line search on the merit function φ(y) = ½‖F(y)‖², a damped dense fallback for singular
Jacobians, and restarted right-preconditioned GMRES on pytrees."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._base import Point
from .._loops import while_loop
from .._tree import tree_axpy, tree_dot, tree_norm, tree_where, tree_zeros_like


class Backtrack(eqx.Module):
    point: Point  # the accepted point (the input point when `ok` is False)
    step_size: jax.Array
    ok: jax.Array
    num_fun: jax.Array  # evaluations of fn spent


def backtrack(fn, point: Point, direction, args, *, phi0, slope, decrease, c1: float,
              max_trials) -> Backtrack:
    """Backtracking from t = 1 on φ(t) = ½‖F(y + t·p)‖².

    Accepts the first t with φ(t) ≤ φ(0) + c₁·t·`decrease` and φ(t) < φ(0). For an exact
    Newton direction `decrease` = slope = −‖F‖²; for an inexact one with relative linear
    residual η it is −(1 − η)‖F‖², which makes the test the Dembo–Eisenstat–Steihaug condition
    ‖F(y + tp)‖ ≤ (1 − c₁t(1 − η))‖F(y)‖ to first order (Eisenstat & Walker, SIAM J. Optim. 4,
    1994). The next t minimizes the quadratic through φ(0), φ'(0) = `slope` and φ(t), kept in
    [t/10, t/2] (Dennis & Schnabel, §6.3.2); a non-finite trial halves t. Each trial is one
    evaluation of fn, and the accepted one is returned with its aux, so nothing is evaluated
    twice. `max_trials` may be traced.
    """
    dtype = jnp.result_type(phi0)
    phi0 = jnp.asarray(phi0, dtype)
    slope = jnp.asarray(slope, dtype)
    decrease = jnp.asarray(decrease, dtype)

    def accept(t, phi):
        return jnp.isfinite(phi) & (phi <= phi0 + c1 * t * decrease) & (phi < phi0)

    def cond(c):
        t, _, phi, k = c
        return (k == 0) | (~accept(t, phi) & (k < max_trials))

    def body(c):
        t, _, phi, k = c
        curvature = phi - phi0 - slope * t
        t_quad = -slope * t * t / (2 * jnp.where(curvature > 0, curvature, 1.0))
        t_next = jnp.where(jnp.isfinite(phi) & (curvature > 0),
                           jnp.clip(t_quad, 0.1 * t, 0.5 * t), 0.5 * t)
        t = jnp.where(k == 0, jnp.ones_like(t), t_next)
        y = tree_axpy(t, direction, point.y)
        f, aux = fn(y, args)
        return t, Point(y, f, aux), (0.5 * tree_dot(f, f)).astype(dtype), k + 1

    init = (jnp.ones((), dtype), point, jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32))
    t, trial, phi, k = while_loop(cond, body, init, max_steps=max_trials)
    ok = accept(t, phi)
    return Backtrack(tree_where(ok, trial, point), jnp.where(ok, t, 0.0), ok, k)


def damped_solve(jac, rhs, f_norm):
    """(JᵀJ + μI)⁻¹Jᵀ·rhs with μ = ‖F‖ + eps·‖J‖²_F: the Levenberg step used when J is
    singular. μ ~ ‖F‖ keeps the fast local convergence of the Levenberg–Marquardt method
    without nonsingularity (Fan & Yuan, Computing 74, 2005); the eps term keeps it positive
    definite at a root. Its direction is a descent direction for ½‖F‖² whenever JᵀF ≠ 0."""
    dtype = jac.dtype
    mu = f_norm + jnp.finfo(dtype).eps * jnp.sum(jac * jac)
    mu = jnp.maximum(mu, jnp.finfo(dtype).tiny)
    gram = jac.T @ jac + mu * jnp.eye(jac.shape[1], dtype=dtype)
    return jnp.linalg.solve(gram, jac.T @ rhs)


def newton_solve(jac, rhs, f_norm):
    """J⁻¹·rhs by LU, or the damped solve when that is not finite (J singular)."""
    x = jnp.linalg.solve(jac, rhs)
    bad = ~jnp.all(jnp.isfinite(x))
    return lax.cond(bad, lambda: damped_solve(jac, rhs, f_norm), lambda: x)


class GMRESResult(eqx.Module):
    x: object
    residual: object  # b − A x (from the Arnoldi relation, no extra product)
    residual_norm: jax.Array
    num_iters: jax.Array  # = number of products with A
    converged: jax.Array


def gmres(matvec, b, *, rtol, max_iters: int, restart: int, precond=None, x0=None,
          r0=None) -> GMRESResult:
    """Restarted GMRES(m) with right preconditioning, on pytrees, from x₀ = 0 or from a given
    `x0` with residual `r0` = b − A x0 (no iteration at all if r0 already meets the test).

    Minimises ‖b − A M⁻¹ u‖ over Krylov spaces of A M⁻¹ and returns x = M⁻¹u. Right
    preconditioning makes the residual that GMRES minimises the true one, so the stopping test
    ‖b − A x‖ ≤ rtol·‖b‖ is exactly the inexact-Newton condition. Arnoldi uses classical
    Gram–Schmidt applied twice (as accurate as modified Gram–Schmidt, and two dense products
    instead of a loop); the residual norm after every product comes from Givens rotations of
    the Hessenberg matrix, so the iteration stops as soon as it is met. The basis is kept as
    pytree leaves with a leading axis of size m + 1: leaves are never concatenated.
    """
    apply_m = (lambda v: v) if precond is None else precond
    leaves = jax.tree_util.tree_leaves(b)
    dtype = jnp.result_type(*leaves)
    m = restart
    b_norm = tree_norm(b).astype(dtype)
    tol = rtol * b_norm
    tiny = jnp.finfo(dtype).tiny

    def basis_dot(basis, w):
        parts = [jnp.tensordot(v, x, axes=x.ndim) for v, x in
                 zip(jax.tree_util.tree_leaves(basis), jax.tree_util.tree_leaves(w),
                     strict=True)]
        return sum(parts[1:], parts[0]).astype(dtype)

    def basis_combine(basis, coeffs, like):
        return jax.tree_util.tree_map(
            lambda v, x: jnp.tensordot(coeffs.astype(v.dtype), v, axes=1).astype(x.dtype),
            basis, like)

    def cycle(carry):
        x, r, r_norm, k, _ = carry
        basis = jax.tree_util.tree_map(
            lambda leaf: jnp.zeros((m + 1,) + leaf.shape, leaf.dtype), r)
        v0 = jax.tree_util.tree_map(lambda leaf: leaf / jnp.maximum(r_norm, tiny), r)
        basis = jax.tree_util.tree_map(lambda big, v: big.at[0].set(v), basis, v0)
        g = jnp.zeros(m + 1, dtype).at[0].set(r_norm)
        hess = jnp.zeros((m + 1, m), dtype)  # the Arnoldi Hessenberg matrix H̄
        rot = jnp.zeros((m + 1, m), dtype)  # H̄ after the Givens rotations (upper triangular)
        cs = jnp.zeros(m, dtype)
        sn = jnp.zeros(m, dtype)

        def inner_cond(c):
            j, _, _, _, g, _, _, breakdown = c
            return (j < m) & (k + j < max_iters) & (jnp.abs(g[j]) > tol) & ~breakdown

        def inner_body(c):
            j, basis, hess, rot, g, cs, sn, _ = c
            vj = jax.tree_util.tree_map(lambda big, like: big[j], basis, b)
            w = matvec(apply_m(vj))
            h = basis_dot(basis, w)
            w = tree_axpy(-1.0, basis_combine(basis, h, w), w)
            h2 = basis_dot(basis, w)
            w = tree_axpy(-1.0, basis_combine(basis, h2, w), w)
            h = h + h2
            w_norm = tree_norm(w).astype(dtype)
            breakdown = w_norm <= jnp.finfo(dtype).eps * jnp.maximum(jnp.linalg.norm(h), tiny)
            vnext = jax.tree_util.tree_map(lambda leaf: leaf / jnp.maximum(w_norm, tiny), w)
            basis = jax.tree_util.tree_map(lambda big, v: big.at[j + 1].set(v), basis, vnext)
            col = h.at[j + 1].set(w_norm)
            hess = hess.at[:, j].set(col)

            def apply_rotation(i, col):
                a, bb = col[i], col[i + 1]
                rotated = jnp.where(i < j, jnp.stack([cs[i] * a + sn[i] * bb,
                                                      -sn[i] * a + cs[i] * bb]),
                                    jnp.stack([a, bb]))
                return lax.dynamic_update_slice(col, rotated, (i,))

            col = lax.fori_loop(0, m, apply_rotation, col)
            a, bb = col[j], col[j + 1]
            denom = jnp.hypot(a, bb)
            safe = jnp.where(denom > 0, denom, 1.0)
            c_j, s_j = jnp.where(denom > 0, a / safe, 1.0), jnp.where(denom > 0, bb / safe, 0.0)
            col = col.at[j].set(denom).at[j + 1].set(0.0)
            rot = rot.at[:, j].set(col)
            gj = g[j]
            g = g.at[j].set(c_j * gj).at[j + 1].set(-s_j * gj)
            return j + 1, basis, hess, rot, g, cs.at[j].set(c_j), sn.at[j].set(s_j), breakdown

        init = (jnp.zeros((), jnp.int32), basis, hess, rot, g, cs, sn, jnp.array(False))
        j, basis, hess, rot, g, _, _, breakdown = while_loop(inner_cond, inner_body, init,
                                                             max_steps=m)
        # Solve the j×j triangular system, padded to m×m with a unit diagonal.
        active = jnp.arange(m) < j
        r_mat = jnp.where(active[:, None] & active[None, :], rot[:m], 0.0)
        r_mat = r_mat + jnp.diag(jnp.where(active, 0.0, 1.0).astype(dtype))
        coeff = jax.scipy.linalg.solve_triangular(r_mat, jnp.where(active, g[:m], 0.0))
        coeff = jnp.where(active & jnp.isfinite(coeff), coeff, 0.0)
        dx = apply_m(basis_combine(jax.tree_util.tree_map(lambda big: big[:m], basis), coeff,
                                   x))
        x = jax.tree_util.tree_map(jnp.add, x, dx)
        # r = V_{j+1}(βe₁ − H̄ y): the new residual without another product with A.
        small = jnp.zeros(m + 1, dtype).at[0].set(r_norm) - hess @ coeff
        r = basis_combine(basis, small, r)
        r_norm = tree_norm(r).astype(dtype)
        stop = (r_norm <= tol) | breakdown | (j == 0)
        return x, r, r_norm, k + j, stop

    def outer_cond(carry):
        _, _, r_norm, k, stop = carry
        return ~stop & (r_norm > tol) & (k < max_iters)

    if x0 is None:
        x0, r0 = tree_zeros_like(b), b
    init = (x0, r0, tree_norm(r0).astype(dtype), jnp.zeros((), jnp.int32), jnp.array(False))
    x, r, r_norm, k, _ = while_loop(outer_cond, cycle, init,
                                    max_steps=max(1, -(-max_iters // m)) + 1)
    return GMRESResult(x, r, r_norm, k, r_norm <= tol)
