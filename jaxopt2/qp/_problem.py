"""The data of a convex QP, checked once and laid out in one canonical form.

    minimize ½xᵀQx + cᵀx  subject to  Ax = b,  Gx ≤ h,  lower ≤ x ≤ upper.

Absent blocks become empty (0 × n) arrays and absent bounds ±∞ with a 0/1 mask, so the
interior point, its derivative and ADMM never branch on what the user passed: a missing
constraint costs a few O(n) operations, not a second compiled program. Q is symmetrised,
(Q + Qᵀ)/2, since only that part enters the objective (its derivative is then symmetric).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

_NAMES = ("Q", "c", "A", "b", "G", "h", "lower", "upper")


class QPData(eqx.Module):
    """One QP in canonical form. `lower`/`upper` hold 0 where the mask is False (no bound),
    so that every arithmetic on them stays finite; `has_lower`/`has_upper` are float 0/1."""

    Q: jax.Array
    c: jax.Array
    A: jax.Array
    b: jax.Array
    G: jax.Array
    h: jax.Array
    lower: jax.Array
    upper: jax.Array
    has_lower: jax.Array
    has_upper: jax.Array
    # Whether any lower/upper bound was passed at all (static: the derivative's linear
    # system drops a bound block that cannot be active).
    any_lower: bool = eqx.field(static=True, default=True)
    any_upper: bool = eqx.field(static=True, default=True)

    @property
    def n(self) -> int:
        return self.c.shape[0]

    def scale(self):
        """A positive scalar ≈ the size of the data, for relative tolerances and the
        regularisation (never 0: a zero QP still has scale 1)."""
        parts = [jnp.max(jnp.abs(self.Q), initial=0.0), jnp.max(jnp.abs(self.c), initial=0.0)]
        return jnp.maximum(1.0, jnp.max(jnp.stack(parts)))


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _nonfinite(x) -> bool:
    with jax.ensure_compile_time_eval():
        return not bool(jnp.all(jnp.isfinite(x)))


def _as_float(name, value, dtype):
    arr = jnp.asarray(value)
    if arr.dtype == bool or not (jnp.issubdtype(arr.dtype, jnp.floating)
                                 or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise TypeError(f"`{name}` has dtype {arr.dtype}; pass a real floating-point array.")
    return arr.astype(dtype)


def make_qp(Q, c, A, b, G, h, lower, upper, *, check_convex: bool = True) -> QPData:
    """Check shapes, dtypes and (when concrete) finiteness, feasibility of the bounds and
    convexity; return the canonical `QPData`. Raises ValueError/TypeError saying what to fix."""
    if Q is None or c is None:
        raise ValueError("solve_qp needs Q (n × n) and c (n,); pass Q = 0 for a linear program.")
    if (A is None) != (b is None):
        raise ValueError("Pass A and b together (equality constraints Ax = b), or neither.")
    if (G is None) != (h is None):
        raise ValueError("Pass G and h together (inequality constraints Gx ≤ h), or neither.")
    # Python scalars (e.g. lower=0.0) are weakly typed: they never promote float32 data.
    given = [x for x in (Q, c, A, b, G, h, lower, upper)
             if x is not None and not isinstance(x, (int, float))]
    dtypes = [jnp.asarray(x).dtype for x in given]
    floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
    if dtype in (jnp.float16, jnp.bfloat16):
        dtype = jnp.float32  # an interior point needs more than 3 digits; float16 data is upcast

    Q = _as_float("Q", Q, dtype)
    c = _as_float("c", c, dtype)
    if c.ndim != 1:
        raise ValueError(f"`c` must be a vector (n,); got shape {c.shape}.")
    n = c.shape[0]
    if n == 0:
        raise ValueError("The QP has no variables (c has shape (0,)).")
    if Q.shape != (n, n):
        raise ValueError(f"`Q` must be n × n = {n} × {n} to match c of shape ({n},); got shape "
                         f"{Q.shape}.")

    def block(M, v, mname, vname, what):
        if M is None:
            return jnp.zeros((0, n), dtype), jnp.zeros((0,), dtype)
        M, v = _as_float(mname, M, dtype), _as_float(vname, v, dtype)
        if M.ndim != 2 or M.shape[1] != n:
            raise ValueError(f"`{mname}` must be a matrix with n = {n} columns ({what}); got "
                             f"shape {M.shape}.")
        if v.shape != (M.shape[0],):
            raise ValueError(f"`{vname}` must have shape ({M.shape[0]},), one entry per row of "
                             f"`{mname}`; got shape {v.shape}.")
        return M, v

    A, b = block(A, b, "A", "b", "equality constraints Ax = b")
    G, h = block(G, h, "G", "h", "inequality constraints Gx ≤ h")

    def bound(v, name, sign):
        if v is None:
            return jnp.zeros((n,), dtype), jnp.zeros((n,), dtype)
        if _concrete(v):
            raw = np.asarray(v, np.float64)
            if np.any(np.isnan(raw)):
                raise ValueError(f"`{name}` contains NaN; use {sign}inf for an absent bound.")
            if np.any(raw == (np.inf if sign == "-" else -np.inf)):
                bad = "+inf" if sign == "-" else "-inf"
                raise ValueError(f"`{name}` contains {bad}: no x satisfies that bound.")
        v = _as_float(name, v, dtype)
        if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != n):
            raise ValueError(f"`{name}` must be a scalar or have shape ({n},); got shape "
                             f"{v.shape}.")
        v = jnp.broadcast_to(v, (n,))
        mask = jnp.isfinite(v)
        return jnp.where(mask, v, 0.0), mask.astype(dtype)

    lo, has_lo = bound(lower, "lower", "-")
    up, has_up = bound(upper, "upper", "+")
    if (lower is not None and upper is not None and _concrete(lower) and _concrete(upper)):
        raw_lo = np.broadcast_to(np.asarray(lower, np.float64), (n,))
        raw_up = np.broadcast_to(np.asarray(upper, np.float64), (n,))
        if np.any(raw_lo > raw_up):
            i = int(np.argmax(raw_lo > raw_up))
            raise ValueError(f"lower > upper at index {i} ({raw_lo[i]} > {raw_up[i]}): the "
                             "bounds admit no x. Swap or fix them.")

    for name, arr in (("Q", Q), ("c", c), ("A", A), ("b", b), ("G", G), ("h", h)):
        if _concrete(arr) and _nonfinite(arr):
            raise ValueError(f"`{name}` contains NaN or infinity; the QP data must be finite "
                             "(use `lower`/`upper` = ±inf for absent bounds).")
    Q = 0.5 * (Q + Q.T)
    if check_convex and _concrete(Q):
        with jax.ensure_compile_time_eval():
            Qn = np.asarray(Q, np.float64)
            lam = np.linalg.eigvalsh(Qn)
            tol = 100 * float(jnp.finfo(dtype).eps) * max(1.0, float(np.max(np.abs(lam))))
            if lam[0] < -tol:
                raise ValueError(
                    f"Q is not positive semidefinite (smallest eigenvalue {lam[0]:.3g}): "
                    "solve_qp solves convex QPs only. Check the sign of Q, or add a multiple of "
                    "the identity (Q + τI with τ ≥ −λ_min).")
    return QPData(Q, c, A, b, G, h, lo, up, has_lo, has_up, lower is not None,
                  upper is not None)
