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
refinement as in OSQP and Clarabel). M = (H + ρI)⁻¹Aᵀ, formed for the Schur complement, is
kept, so a solve costs one pair of triangular solves and two products with M, not two pairs.
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
    M: jax.Array | None
    LS: jax.Array | None
    reg: jax.Array
    refine: int = eqx.field(static=True, default=2)

    @classmethod
    def factor(cls, Q, G, w, d, A, reg, refine: int = 2) -> ReducedKKT:
        return cls._build(Q, G, w, d, A, reg, refine, None)[0]

    @classmethod
    def factor_solve(cls, Q, G, w, d, A, reg, rx, ry, refine: int = 2):
        """`factor`, and `solve(rx, ry)` with the factors: (H + ρI)⁻¹rx is computed with
        M = (H + ρI)⁻¹Aᵀ, as one more column of the same triangular solves (on CPU under
        `vmap` a triangular solve costs about as much per call as per column)."""
        kkt, t = cls._build(Q, G, w, d, A, reg, refine, rx)
        return kkt, kkt.solve(rx, ry, t)

    @classmethod
    def _build(cls, Q, G, w, d, A, reg, refine, rx):
        n, p = Q.shape[0], A.shape[0]
        on_diag = jnp.eye(n, dtype=bool)
        H = Q + G.T @ (w[:, None] * G) + jnp.where(on_diag, d, 0.0)
        # Regularised by ρ and by a few ulps of each diagonal entry, then scaled to a unit
        # diagonal (Jacobi): near the solution z/s spans ~1/μ, and without the scaling the
        # rounding of the largest entries alone makes the Cholesky factorization fail in
        # float32 long before the tolerance is met. (Masks, not `jnp.diagonal`/`jnp.diag`,
        # and no symmetrisation of an H symmetric by construction: under `vmap` on CPU those
        # lower to gathers and transposed copies that cost as much as the factorization.)
        h_diag = jnp.sum(jnp.where(on_diag, H, 0.0), axis=1)
        diag = h_diag + reg + _ULPS * jnp.finfo(Q.dtype).eps * jnp.abs(h_diag)
        scale = 1.0 / jnp.sqrt(diag)
        Hs = jnp.where(on_diag, 1.0, scale[:, None] * H * scale[None, :])
        L = lax.linalg.cholesky(Hs, symmetrize_input=False)
        cols = ([A.T] if p else []) + ([rx[:, None]] if rx is not None else [])
        M = LS = t = None
        if cols:
            X = scale[:, None] * cho_solve((L, True), scale[:, None] * jnp.concatenate(cols, 1))
            M = X[:, :p] if p else None
            t = X[:, p] if rx is not None else None
        if p:
            S = A @ M + reg * jnp.eye(p, dtype=Q.dtype)
            LS = lax.linalg.cholesky(S, symmetrize_input=False)
        return cls(H, A, scale, L, M, LS, reg, refine), t

    def _h_solve(self, r):
        return self.scale * cho_solve((self.L, True), self.scale * r)

    def _regularised_solve(self, rx, ry, t=None):
        # [H+R  Aᵀ; A  −ρI] [dx; dy] = [rx; ry], by the Schur complement on dy.
        t = self._h_solve(rx) if t is None else t
        if self.LS is None:
            return t, ry
        dy = cho_solve((self.LS, True), self.A @ t - ry)
        return t - self.M @ dy, dy

    def solve(self, rx, ry, t=None):
        """(dx, dy); `t`: (H + ρI)⁻¹rx where already known (`factor_solve`)."""
        d = self._regularised_solve(rx, ry, t)
        if self.refine == 0:
            return d

        # Steps of refinement against the unregularised matrix. A loop, not unrolled: one
        # copy of the solve in the compiled program.
        def refine(_, d):
            dx, dy = d
            cx, cy = self._regularised_solve(rx - self.H @ dx - self.A.T @ dy,
                                             ry - self.A @ dx)
            return dx + cx, dy + cy

        return lax.fori_loop(0, self.refine, refine, d)

    def ok(self):
        """False where a factorization failed: H + ρI was not positive definite (or not
        finite). A failed factor is all NaN, and NaN data reach the last diagonal entry
        (which reads every entry of the lower triangle), so that entry alone is tested."""
        good = jnp.isfinite(self.L[-1, -1])
        if self.LS is not None:
            good = good & jnp.isfinite(self.LS[-1, -1])
        return good
