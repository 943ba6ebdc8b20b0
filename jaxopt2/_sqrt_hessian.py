"""A Hessian given as ∇²f = BᵀB + R by a user's `sqrt_hessian(params, args) -> (B, R)`: the
Gauss–Newton structure of every generalized linear model and least-squares loss (B one row
per example, R the Hessian of the rest). Shared by `Newton`, which forms BᵀB in one matrix
product (`_xla_cpu.gram`: BLAS speed, about half the arithmetic of d Hessian-vector
products), and `SketchedNewton`'s Newton sketch, which forms (SB)ᵀ(SB)."""

from __future__ import annotations

import jax.numpy as jnp


def check_sqrt_hessian(sqrt_hessian, who: str) -> None:
    if sqrt_hessian is not None and not callable(sqrt_hessian):
        raise TypeError(f"{who}: `sqrt_hessian` must be a function (params, args) -> (B, R) "
                        f"with ∇²f = BᵀB + R; got {type(sqrt_hessian).__name__}.")


def check_b(b, d: int, dtype, who: str):
    """`sqrt_hessian`'s B checked to be (n, d) and cast to `dtype`."""
    b = jnp.asarray(b)
    if b.ndim != 2 or b.shape[1] != d:
        raise ValueError(f"{who}: `sqrt_hessian` must return B of shape (n, {d}) (one row per "
                         f"example, one column per parameter, in the flattened order of the "
                         f"parameters); got {b.shape}.")
    return b.astype(dtype)


def add_rest(h, rest, who: str):
    """H + R for R None (0), a scalar (R·I) or a d × d matrix."""
    if rest is None:
        return h
    d = h.shape[0]
    rest = jnp.asarray(rest, h.dtype)
    if rest.ndim == 0:
        return h + rest * jnp.eye(d, dtype=h.dtype)
    if rest.shape != (d, d):
        raise ValueError(f"{who}: `sqrt_hessian`'s R must be None, a scalar or a ({d}, {d}) "
                         f"matrix; got shape {rest.shape}.")
    return h + rest


def hessian_matrix(sqrt_hessian, who: str):
    """`ImplicitAdjoint(matrix=...)` from a solver's `sqrt_hessian`: (root, (fn, args)) ↦
    BᵀB + R at the root, for the default dense adjoint solve (one matrix product instead of
    d batched Hessian-vector products)."""
    from ._tree import ravel
    from ._xla_cpu import gram

    def matrix(root, inputs):
        _, args = inputs
        x, _ = ravel(root)
        b, rest = sqrt_hessian(root, args)
        return add_rest(gram(check_b(b, x.size, x.dtype, who)), rest, who)

    return matrix
