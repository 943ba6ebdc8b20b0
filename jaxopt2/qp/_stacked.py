"""The QP with all its constraints in one block l ≤ Cx ≤ u, as ADMM reads it: from the
canonical dense `QPData`, or from linear operators (matrix-free: functions x ↦ Qx, x ↦ Ax,
x ↦ Gx or lineax operators)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from ._admm import StackedQP
from ._problem import QPData, _as_float


def is_operator(M) -> bool:
    return callable(M) or isinstance(M, lx.AbstractLinearOperator)


def _sides(qp_b, qp_h, lower, upper, has_lower, has_upper, bounds: bool):
    dtype = qp_h.dtype
    inf = jnp.asarray(jnp.inf, dtype)
    l_parts = [qp_b, jnp.full(qp_h.shape, -inf)]
    u_parts = [qp_b, qp_h]
    if bounds:
        l_parts.append(jnp.where(has_lower > 0, lower, -inf))
        u_parts.append(jnp.where(has_upper > 0, upper, inf))
    return jnp.concatenate(l_parts), jnp.concatenate(u_parts)


def stack_dense(qp: QPData) -> tuple[StackedQP, bool]:
    bounds = qp.any_lower or qp.any_upper
    n = qp.n
    blocks = [qp.A, qp.G] + ([jnp.eye(n, dtype=qp.c.dtype)] if bounds else [])
    C = jnp.concatenate(blocks, axis=0)
    l, u = _sides(qp.b, qp.h, qp.lower, qp.upper, qp.has_lower, qp.has_upper, bounds)
    P = qp.Q
    return StackedQP(qp.c, l, u, P, C, lambda x: P @ x, lambda x: C @ x,
                     lambda y: C.T @ y), bounds


def _matvec(M, name, x):
    if M is None:
        return lambda v: jnp.zeros((0,), x.dtype)
    if isinstance(M, lx.AbstractLinearOperator):
        return M.mv
    if callable(M):
        return M
    arr = jnp.asarray(M)
    if arr.ndim != 2 or arr.shape[1] != x.shape[0]:
        raise ValueError(f"`{name}` must be a matrix with n = {x.shape[0]} columns or a linear "
                         f"function x ↦ {name}x; got shape {arr.shape}.")
    arr = arr.astype(x.dtype)
    return lambda v: arr @ v


def stack_operators(Q, c, A, b, G, h, lower, upper):
    """Matrix-free form. Returns (StackedQP, n, p, m, has_lower, has_upper, bounds)."""
    if (A is None) != (b is None):
        raise ValueError("Pass A and b together (equality constraints Ax = b), or neither.")
    if (G is None) != (h is None):
        raise ValueError("Pass G and h together (inequality constraints Gx ≤ h), or neither.")
    c = jnp.asarray(c)
    dtype = c.dtype if jnp.issubdtype(c.dtype, jnp.floating) else jnp.result_type(float)
    c = _as_float("c", c, dtype)
    if c.ndim != 1 or c.shape[0] == 0:
        raise ValueError(f"`c` must be a nonempty vector (n,); got shape {c.shape}.")
    n = c.shape[0]
    P_mv, A_mv, G_mv = (_matvec(M, name, c) for M, name in ((Q, "Q"), (A, "A"), (G, "G")))

    def out(mv, name, v, vname):
        shape = jax.eval_shape(mv, c)
        if name == "Q" and shape.shape != (n,):
            raise ValueError(f"`Q` applied to x of shape ({n},) must return shape ({n},); got "
                             f"{shape.shape}.")
        if shape.dtype != dtype:
            raise TypeError(f"`{name}` applied to x of dtype {dtype} returns dtype "
                            f"{shape.dtype}; return the dtype of c.")
        if v is None:
            return jnp.zeros((0,), dtype)
        v = _as_float(vname, v, dtype)
        if v.shape != shape.shape:
            raise ValueError(f"`{vname}` must have the shape of {name}x, {shape.shape}; got "
                             f"{v.shape}.")
        return v

    out(P_mv, "Q", None, None)
    b = out(A_mv, "A", b, "b")
    h = out(G_mv, "G", h, "h")

    def bound(v, name):
        if v is None:
            return jnp.zeros((n,), dtype), jnp.zeros((n,), dtype)
        if not isinstance(v, jax.core.Tracer) and np.any(np.isnan(np.asarray(v, np.float64))):
            raise ValueError(f"`{name}` contains NaN; use ±inf for an absent bound.")
        v = jnp.broadcast_to(_as_float(name, v, dtype), (n,))
        mask = jnp.isfinite(v)
        return jnp.where(mask, v, 0.0), mask.astype(dtype)

    lo, has_lo = bound(lower, "lower")
    up, has_up = bound(upper, "upper")
    bounds = lower is not None or upper is not None
    l, u = _sides(b, h, lo, up, has_lo, has_up, bounds)
    p, m = b.shape[0], h.shape[0]

    def C_mv(x):
        parts = [A_mv(x), G_mv(x)] + ([x] if bounds else [])
        return jnp.concatenate(parts)

    def CT_mv(y):
        return jax.linear_transpose(C_mv, c)(y)[0]

    return (StackedQP(c, l, u, None, None, P_mv, C_mv, CT_mv), n, p, m, has_lo, has_up,
            bounds)
