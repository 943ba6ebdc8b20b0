"""Restarted, right-preconditioned GMRES(m) on pytrees.

Why not `lineax.GMRES`: ours keeps the Krylov basis as pytree leaves with a leading axis
(never concatenated or ravelled), starts from a given x₀ with its known residual r₀ (a
preconditioned start costs no extra product), stops on the true 2-norm residual
‖b − A x‖ ≤ rtol·‖b‖ (the inexact-Newton condition, with a traced forcing term), returns the
residual vector b − A x from the Arnoldi relation without an extra product (the line search's
slope needs it), and treats an exhausted budget as a normal outcome (its best iterate is used).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._loops import while_loop
from .._tree import tree_axpy, tree_norm, tree_zeros_like


class GMRESResult(eqx.Module):
    """What `gmres` returns; `converged` is False when the budget ran out or the Arnoldi
    process broke down first (x is then the best iterate found)."""

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
        # The Givens rotations so far, accumulated into one orthogonal matrix: applying them
        # to a new column is one product instead of a loop over m rotations.
        turn = jnp.eye(m + 1, dtype=dtype)

        def inner_cond(c):
            j, _, _, _, g, _, breakdown = c
            return (j < m) & (k + j < max_iters) & (jnp.abs(_pick(g, j)) > tol) & ~breakdown

        def inner_body(c):
            j, basis, hess, rot, g, turn, _ = c
            vj = jax.tree_util.tree_map(lambda big: _pick(big, j), basis)
            w = matvec(apply_m(vj))
            h = basis_dot(basis, w)
            w = tree_axpy(-1.0, basis_combine(basis, h, w), w)
            h2 = basis_dot(basis, w)
            w = tree_axpy(-1.0, basis_combine(basis, h2, w), w)
            h = h + h2
            w_norm = tree_norm(w).astype(dtype)
            breakdown = w_norm <= jnp.finfo(dtype).eps * jnp.maximum(jnp.linalg.norm(h), tiny)
            vnext = jax.tree_util.tree_map(lambda leaf: leaf / jnp.maximum(w_norm, tiny), w)
            basis = jax.tree_util.tree_map(lambda big, v: _put(big, j + 1, v), basis, vnext)
            col = _put(h, j + 1, w_norm)
            hess = _put(hess.T, j, col).T
            col = turn @ col
            a, bb = _pick(col, j), _pick(col, j + 1)
            denom = jnp.hypot(a, bb)
            safe = jnp.where(denom > 0, denom, 1.0)
            c_j, s_j = jnp.where(denom > 0, a / safe, 1.0), jnp.where(denom > 0, bb / safe, 0.0)
            col = _put(_put(col, j, denom), j + 1, jnp.zeros((), dtype))
            rot = _put(rot.T, j, col).T
            gj = _pick(g, j)
            g = _put(_put(g, j, c_j * gj), j + 1, -s_j * gj)
            tj, tj1 = _pick(turn, j), _pick(turn, j + 1)
            turn = _put(_put(turn, j, c_j * tj + s_j * tj1), j + 1, -s_j * tj + c_j * tj1)
            return j + 1, basis, hess, rot, g, turn, breakdown

        init = (jnp.zeros((), jnp.int32), basis, hess, rot, g, turn, jnp.array(False))
        j, basis, hess, rot, g, _, breakdown = while_loop(inner_cond, inner_body, init,
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


# Rows at a traced index are read and written through masks on the leading axis rather than
# indexed reads and updates: the same values (a sum of one row and zeros), in a smaller
# program (no index normalisation or out-of-range handling per access; issue 20).
def _rows(a, i):
    rows = jnp.arange(a.shape[0]).reshape((-1,) + (1,) * (a.ndim - 1))
    return rows == i


def _pick(a, i):
    return jnp.sum(jnp.where(_rows(a, i), a, 0), axis=0)


def _put(a, i, value):
    return jnp.where(_rows(a, i), jnp.asarray(value, a.dtype), a)
