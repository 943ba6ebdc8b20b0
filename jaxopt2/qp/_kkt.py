"""The reduced KKT system of a QP, factored once and solved many times.

Every Newton system of the interior point, and the linearised KKT conditions that give the
derivatives of the solution, reduce (after eliminating the inequality multipliers and slacks,
whose blocks are diagonal) to the same symmetric saddle-point system

    [H  Aᵀ] [dx]   [rx]
    [A  0 ] [dy] = [ry],     H = Q + Gᵀ diag(w) G + diag(d),   w, d ≥ 0,

with w = z/s for Gx ≤ h and d = z_l/s_l + z_u/s_u for the bounds. It is solved by the Schur
complement: a Cholesky factor of H + ρI and one of A(H + ρI)⁻¹Aᵀ + ρI. The regularisation ρ
makes both factorizations exist when H is only semidefinite (an LP, a free variable) or A has
dependent rows; a few steps of iterative refinement against the unregularised matrix then
remove its bias, so the Newton directions are those of the true system wherever it is
nonsingular (the primal-dual regularisation of Friedlander & Orban, Math. Prog. Comp. 4, 2012;
refinement as in OSQP and Clarabel).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_solve

_ULPS = 10.0


class ReducedKKT(eqx.Module):
    """[H Aᵀ; A 0] with its regularised factors. `solve(rx, ry)` returns (dx, dy)."""

    H: jax.Array
    A: jax.Array
    scale: jax.Array
    L: jax.Array
    LS: jax.Array | None
    reg: jax.Array
    refine: int = eqx.field(static=True, default=2)

    @classmethod
    def factor(cls, Q, G, w, d, A, reg, refine: int = 2) -> ReducedKKT:
        n = Q.shape[0]
        eye = jnp.eye(n, dtype=Q.dtype)
        H = Q + (G.T * w) @ G + d * eye
        # Regularised by ρ and by a few ulps of each diagonal entry, then scaled to a unit
        # diagonal (Jacobi): near the solution z/s spans ~1/μ, and without the scaling the
        # rounding of the largest entries alone makes the Cholesky factorization fail in
        # float32 long before the tolerance is met.
        diag = jnp.diagonal(H) + reg + _ULPS * jnp.finfo(Q.dtype).eps * jnp.abs(jnp.diagonal(H))
        scale = 1.0 / jnp.sqrt(diag)
        Hs = scale[:, None] * (H - jnp.diag(jnp.diagonal(H))) * scale[None, :] + eye
        L = jnp.linalg.cholesky(Hs)
        LS = None
        if A.shape[0]:
            M = scale[:, None] * cho_solve((L, True), scale[:, None] * A.T)
            S = A @ M + reg * jnp.eye(A.shape[0], dtype=Q.dtype)
            LS = jnp.linalg.cholesky(S)
        return cls(H, A, scale, L, LS, reg, refine)

    def _h_solve(self, r):
        return self.scale * cho_solve((self.L, True), self.scale * r)

    def _regularised_solve(self, rx, ry):
        # [H+R  Aᵀ; A  −ρI] [dx; dy] = [rx; ry], by the Schur complement on dy.
        t = self._h_solve(rx)
        if self.LS is None:
            return t, ry
        dy = cho_solve((self.LS, True), self.A @ t - ry)
        dx = t - self._h_solve(self.A.T @ dy)
        return dx, dy

    def solve(self, rx, ry):
        # From (0, 0) the first pass is the plain regularised solve; each further one a step
        # of refinement. A loop, not unrolled: one copy of the solve in the compiled program
        # (the interior point calls `solve` four times a step).
        def refine(_, d):
            dx, dy = d
            cx, cy = self._regularised_solve(rx - self.H @ dx - self.A.T @ dy,
                                             ry - self.A @ dx)
            return dx + cx, dy + cy

        zero = (jnp.zeros_like(rx), jnp.zeros_like(ry))
        return lax.fori_loop(0, self.refine + 1, refine, zero)

    def ok(self):
        """False where a factorization failed (NaN): H + ρI was not positive definite."""
        good = jnp.all(jnp.isfinite(self.L))
        if self.LS is not None:
            good = good & jnp.all(jnp.isfinite(self.LS))
        return good
