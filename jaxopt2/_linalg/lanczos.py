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
    basis = jnp.zeros((steps, n), dtype).at[0].set(q0)

    def step(j, carry):
        basis, alphas, betas, alive, scale = carry
        w = matvec(basis[j])
        alpha = jnp.vdot(basis[j], w)
        # Classical Gram–Schmidt against the whole basis, twice: keeps Q orthonormal, so no
        # spurious copies of converged Ritz values distort the quadrature weights.
        w = w - basis.T @ (basis @ w)
        w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        next_alive = alive[j] & (beta > tiny * scale)
        q_next = jnp.where(next_alive, w / jnp.where(next_alive, beta, 1), 0)
        basis = basis.at[j + 1].set(q_next, mode="drop")
        alphas = alphas.at[j].set(jnp.where(alive[j], alpha, 0))
        betas = betas.at[j].set(jnp.where(next_alive, beta, 0))
        alive = alive.at[j + 1].set(next_alive, mode="drop")
        return basis, alphas, betas, alive, scale

    init = (
        basis,
        jnp.zeros(steps, dtype),
        jnp.zeros(steps, dtype),
        jnp.zeros(steps, bool).at[0].set(True),
        jnp.zeros((), dtype),
    )
    basis, alphas, betas, alive, _ = jax.lax.fori_loop(0, steps, step, init)
    if return_basis:
        return alphas, betas[:-1], alive, basis
    return alphas, betas[:-1], alive
