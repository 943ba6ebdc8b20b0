"""Lanczos tridiagonalisation with full reorthogonalisation, for extreme eigenvalues and
stochastic Lanczos quadrature.

lineax has no eigensolver; this returns the tridiagonal T (α, β) and the mask of live steps,
with breakdowns (an invariant Krylov space) masked out rather than producing NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lanczos(matvec, q0, steps: int, *, return_basis: bool = False):
    """`steps` Lanczos steps from the unit vector q0 with full reorthogonalisation (shared by
    `extreme_eigenvalues`, stochastic Lanczos quadrature and the saddle check). Returns the
    diagonal α, the off-diagonal β (length steps − 1) and the mask of live steps; after a
    breakdown (β = 0: an invariant Krylov space) later steps are masked out (their basis rows
    are zero). With `return_basis`, also the orthonormal basis Q (steps × n), so that Q̃ᵀy is
    the Ritz vector of an eigenvector y of T."""
    n, dtype = q0.size, q0.dtype
    tiny = jnp.finfo(dtype).eps
    # Rows are read and written through masks on `rows == j` rather than indexed updates:
    # the same arithmetic in a program about a third smaller (no index normalisation or
    # out-of-range handling per update; issue 20, compile time).
    rows = jnp.arange(steps)
    basis = jnp.where((rows == 0)[:, None], q0, jnp.zeros((steps, n), dtype))

    def step(j, carry):
        basis, alphas, betas, alive, scale, q, live = carry
        here, after = rows == j, rows == j + 1
        w = matvec(q)
        alpha = jnp.vdot(q, w)
        # Classical Gram–Schmidt against the whole basis, twice: keeps Q orthonormal, so no
        # spurious copies of converged Ritz values distort the quadrature weights.
        w = w - basis.T @ (basis @ w)
        w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        next_alive = live & (beta > tiny * scale)
        q_next = jnp.where(next_alive, w / jnp.where(next_alive, beta, 1), 0)
        # The row after the last does not exist: those writes fall off the masks.
        basis = jnp.where(after[:, None], q_next, basis)
        alphas = jnp.where(here, jnp.where(live, alpha, 0), alphas)
        betas = jnp.where(here, jnp.where(next_alive, beta, 0), betas)
        alive = jnp.where(after, next_alive, alive)
        return basis, alphas, betas, alive, scale, q_next, next_alive

    init = (basis, jnp.zeros(steps, dtype), jnp.zeros(steps, dtype), rows == 0,
            jnp.zeros((), dtype), q0, jnp.array(True))
    basis, alphas, betas, alive, *_ = jax.lax.fori_loop(0, steps, step, init)
    if return_basis:
        return alphas, betas[:-1], alive, basis
    return alphas, betas[:-1], alive
