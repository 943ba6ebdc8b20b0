"""Anderson acceleration (Anderson mixing) for fixed-point problems."""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax import lax

from .._base import (
    AbstractFixedPointSolver,
    Counts,
    Point,
    evaluate_point,
    residual_converged,
)
from .._results import RESULTS
from .._tree import result_dtype, tree_all_finite, tree_inf_norm, tree_sub, tree_where
from .._validate import check_budget, check_number, check_tolerances, check_unit_interval

_HIGHEST = lax.Precision.HIGHEST  # no TF32/bf16 shortcuts: the Gram matrix is ill-conditioned


class _State(eqx.Module):
    dy: Any  # ring buffer of Δy_i = y_{i+1} − y_i: each leaf has a leading axis of size m
    df: Any  # ring buffer of ΔF_i = F_{i+1} − F_i, where F = g(y) − y
    gram: jax.Array  # (m, m): ⟨ΔF_i, ΔF_j⟩
    y_prev: Any  # y_{k−1} and F_{k−1}, to form the next differences
    f_prev: Any
    k: jax.Array  # steps taken so far
    residual0: jax.Array  # max|g(y0) − y0|
    residual: jax.Array  # max|g(y) − y| at the current point
    accelerated: jax.Array  # whether the last step used the Anderson mixture (False: fallback)


def _buffer_dots(buf, x):
    """⟨buf_i, x⟩ for every slot i: a vector of size m, summed over the leaves."""
    parts = [jnp.tensordot(b, v, axes=v.ndim, precision=_HIGHEST)
             for b, v in zip(jtu.tree_leaves(buf), jtu.tree_leaves(x), strict=True)]
    return sum(parts[1:], parts[0])


def _combine(coef, buf):
    """Σ_i coef_i buf_i, keeping each leaf's dtype."""
    return jtu.tree_map(
        lambda b: jnp.tensordot(coef.astype(b.dtype), b, axes=1, precision=_HIGHEST), buf)


class Anderson(AbstractFixedPointSolver):
    """Anderson acceleration (type II) for y = g(y).

    With F(y) = g(y) − y and the last m differences Δy_i = y_{i+1} − y_i, ΔF_i = F_{i+1} − F_i
    (Walker & Ni's difference form), each step solves the small regularized least-squares
    problem

        γ = argmin ‖F_k − Σ γ_i ΔF_i‖² + λ‖γ‖²,    λ = ridge · tr(ΔFᵀΔF),

    through its m × m normal equations (the Gram matrix is built from pytree dot products and
    updated by one new row per step, so the user's pytree is never flattened), then mixes

        y_{k+1} = y_k + β F_k − Σ γ_i (Δy_i + β ΔF_i),

    which is Σ α_i [(1 − β) y_i + β g(y_i)] over the last m + 1 iterates with Σ α_i = 1.
    The first step (empty history) is the plain damped step y + β F. One evaluation of g per
    step; memory 2m copies of y.

    When to use it: any fixed-point iteration that converges slowly (deep-equilibrium layers,
    SCF loops, proximal/splitting methods). On an affine map with β = 1 and unlimited history it
    is equivalent to GMRES, so it needs about √κ-times fewer evaluations of g than plain
    iteration on well-conditioned contractions; it needs no Jacobian of g. It is a local
    method: on strongly nonlinear maps a smaller history or β < 1 can help. For an averaged but
    non-contractive map (e.g. a reflection) use β < 1, as for `FixedPointIteration`.

    Safeguard: if the mixing coefficients or the mixed point are not finite (a breakdown of
    the small solve), that step falls back to the plain damped step, per problem under `vmap`.

    **Arguments:**

    - `history`: m, the number of past differences kept (5 is the usual choice; larger helps
      on near-linear problems, smaller on strongly nonlinear ones).
    - `damping`: β ∈ (0, 1], the mixing parameter (1: undamped).
    - `ridge`: Tikhonov regularization relative to the Gram matrix's trace, so a singular or
      repeated history (e.g. once the affine subspace is exhausted) cannot break the solve;
      never less than the working dtype's eps.
    - `rtol`, `atol`: stop when max|g(y) − y| ≤ atol + rtol · max|g(y₀) − y₀|; `rtol=None` is
      √eps of the working dtype.

    Reference: D. G. Anderson, "Iterative procedures for nonlinear integral equations", J. ACM
    12 (1965); H. F. Walker and P. Ni, "Anderson acceleration for fixed-point iterations",
    SIAM J. Numer. Anal. 49 (2011).
    """

    # Linearly (if fast) convergent, and stalls on hard maps: a quasi-Newton budget.
    default_max_steps: ClassVar[int] = 1000

    history: int = 5
    damping: float = 1.0
    ridge: float = 1e-10
    rtol: float | None = None
    atol: float = 0.0

    def __check_init__(self):
        check_budget("history", self.history)
        check_unit_interval("damping", self.damping, high_open=False)
        check_number("ridge", self.ridge, low=0.0)  # e.g. 1e-10
        check_tolerances(self)

    def _done(self, residual, residual0, y):
        return residual_converged(residual, residual0, self.rtol, self.atol, result_dtype(y))

    def init(self, fn, point: Point, args):
        m = self.history
        f = tree_sub(point.f, point.y)
        r = tree_inf_norm(f)
        buf = jtu.tree_map(lambda x: jnp.zeros((m,) + x.shape, x.dtype), point.y)
        dtype = result_dtype(point.y)
        # y_prev = y0, F_prev = F0: the first step then writes a zero difference into a slot
        # that stays masked out until it is overwritten, so no branch is needed.
        state = _State(buf, buf, jnp.zeros((m, m), dtype), point.y, f,
                       jnp.zeros((), jnp.int32), r, r, jnp.array(False))
        return state, Counts(), self._done(r, r, point.y), RESULTS.successful

    def step(self, fn, point: Point, args, state: _State):
        m, beta = self.history, self.damping
        y = point.y
        f = tree_sub(point.f, y)
        dtype = result_dtype(y)

        # Push the newest difference into slot (k − 1) mod m and refresh its Gram row/column.
        slot = jnp.mod(state.k - 1, m)
        new_dy = tree_sub(y, state.y_prev)
        new_df = tree_sub(f, state.f_prev)
        dy = jtu.tree_map(lambda b, v: b.at[slot].set(v), state.dy, new_dy)
        df = jtu.tree_map(lambda b, v: b.at[slot].set(v), state.df, new_df)
        row = _buffer_dots(df, new_df).astype(dtype)
        gram = state.gram.at[slot, :].set(row).at[:, slot].set(row)
        rhs = _buffer_dots(df, f).astype(dtype)

        # Slots 0 … min(k, m) − 1 hold real differences; the others get an identity block and a
        # zero right-hand side, so their γ_i is exactly 0 and shapes stay fixed under jit.
        active = jnp.arange(m) < jnp.minimum(state.k, m)
        both = active[:, None] & active[None, :]
        scale = jnp.sum(jnp.where(active, jnp.diag(gram), 0))
        scale = jnp.where(scale > 0, scale, 1)
        lam = max(self.ridge, float(jnp.finfo(dtype).eps))
        eye = jnp.eye(m, dtype=dtype)
        system = jnp.where(both, gram / scale, 0) + jnp.where(active, lam, 1) * eye
        gamma = jnp.linalg.solve(system, jnp.where(active, rhs / scale, 0))

        plain = jtu.tree_map(lambda a, b: (a + beta * b).astype(a.dtype), y, f)
        correction = _combine(gamma, jtu.tree_map(lambda a, b: a + beta * b, dy, df))
        mixed = tree_sub(plain, correction)
        ok = jnp.all(jnp.isfinite(gamma)) & tree_all_finite(mixed)
        y_new = tree_where(ok, mixed, plain)

        new = evaluate_point(fn, y_new, args)
        r = tree_inf_norm(tree_sub(new.f, new.y))
        state = _State(dy, df, gram, y, f, state.k + 1, state.residual0, r, ok)
        done = self._done(r, state.residual0, y_new)
        return new, state, Counts.of(fun=1), done, RESULTS.successful
