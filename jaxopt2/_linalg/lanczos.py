"""Lanczos tridiagonalisation with full reorthogonalisation, for extreme eigenvalues and
stochastic Lanczos quadrature.

lineax has no eigensolver; this returns the tridiagonal T (α, β) and the mask of live steps,
with breakdowns (an invariant Krylov space) masked out rather than producing NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._tree import tree_dot, tree_norm
from ..distributed import explicit_spec


def _rows(mask, leaf):
    """A mask over the basis rows, shaped to broadcast against a stacked leaf."""
    return mask.reshape(mask.shape + (1,) * leaf.ndim)


def basis_dot(basis, w):
    """Q w: the inner products of each basis row with `w` (a vector of length steps), summed
    over the leaves."""
    def one(b, x):
        if explicit_spec(b) is None and explicit_spec(x) is None:
            return jnp.tensordot(b, x, axes=x.ndim)
        # Over Explicit mesh axes a contraction over a sharded axis must name its output's
        # sharding: a product and a sum reduce locally, then all-reduce (as `tree_dot`).
        return jnp.sum(b * x[None], axis=tuple(range(1, b.ndim)))
    parts = [one(b, x) for b, x in zip(jtu.tree_leaves(basis), jtu.tree_leaves(w), strict=True)]
    return sum(parts[1:], parts[0])


def basis_combine(basis, c):
    """Qᵀ c: the combination of the basis rows with coefficients `c`, shaped like one row
    (each leaf keeps its sharding: the contraction runs over the unsharded row axis)."""
    def one(b):
        if explicit_spec(b) is None:
            return jnp.tensordot(c.astype(b.dtype), b, axes=1)
        return jnp.sum(_rows(c.astype(b.dtype), b[0]) * b, axis=0)
    return jtu.tree_map(one, basis)


def lanczos(matvec, q0, steps: int, *, return_basis: bool = False):
    """`steps` Lanczos steps from the unit vector q0 with full reorthogonalisation (shared by
    `extreme_eigenvalues`, stochastic Lanczos quadrature and the saddle check). Returns the
    diagonal α, the off-diagonal β (length steps − 1) and the mask of live steps; after a
    breakdown (β = 0: an invariant Krylov space) later steps are masked out (their basis rows
    are zero). With `return_basis`, also the orthonormal basis Q, so that Qᵀy is the Ritz
    vector of an eigenvector y of T (`basis_combine`).

    q0 may be any pytree of arrays of one floating dtype, `matvec` a map from such pytrees to
    pytrees of the same structure: the saddle check runs on the parameters as they are, whose
    leaves may be sharded differently, and never ravels them. Q is then a pytree of the same
    structure with a leading axis of `steps` rows on each leaf (steps × n for a vector)."""
    dtype = jnp.result_type(*jtu.tree_leaves(q0))
    tiny = jnp.finfo(dtype).eps
    # Rows are read and written through masks on `rows == j` rather than indexed updates:
    # the same arithmetic in a program about a third smaller (no index normalisation or
    # out-of-range handling per update; issue 20, compile time). The basis is built by
    # broadcasting q0, so each leaf's rows carry that leaf's sharding.
    rows = jnp.arange(steps)
    first = np.arange(steps) == 0  # a literal: XLA does not fold comparisons of an iota
    basis = jtu.tree_map(lambda q: jnp.where(_rows(first, q), q[None], 0).astype(q.dtype), q0)

    def project_out(basis, w):
        return jtu.tree_map(jnp.subtract, w, basis_combine(basis, basis_dot(basis, w)))

    def step(j, carry):
        basis, alphas, betas, alive, scale, q, live = carry
        here, after = rows == j, rows == j + 1
        w = matvec(q)
        alpha = tree_dot(q, w)
        # Classical Gram–Schmidt against the whole basis, twice: keeps Q orthonormal, so no
        # spurious copies of converged Ritz values distort the quadrature weights.
        w = project_out(basis, project_out(basis, w))
        beta = tree_norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        next_alive = live & (beta > tiny * scale)
        q_next = jtu.tree_map(
            lambda x: jnp.where(next_alive, x / jnp.where(next_alive, beta, 1), 0).astype(
                x.dtype), w)
        # The row after the last does not exist: those writes fall off the masks.
        basis = jtu.tree_map(lambda b, x: jnp.where(_rows(after, x), x[None], b), basis, q_next)
        alphas = jnp.where(here, jnp.where(live, alpha, 0), alphas)
        betas = jnp.where(here, jnp.where(next_alive, beta, 0), betas)
        alive = jnp.where(after, next_alive, alive)
        return basis, alphas, betas, alive, scale, q_next, next_alive

    init = (basis, jnp.zeros(steps, dtype), jnp.zeros(steps, dtype), jnp.asarray(first),
            jnp.zeros((), dtype), q0, jnp.array(True))
    basis, alphas, betas, alive, *_ = jax.lax.fori_loop(0, steps, step, init)
    if return_basis:
        return alphas, betas[:-1], alive, basis
    return alphas, betas[:-1], alive
