"""Precision and size policy shared by the front doors (`minimize`, `least_squares`,
`root_find`, `fixed_point`), applied by the `solver_inputs` decorator before any tracing.

**Half precision (float16, bfloat16).** LAPACK has no half-precision factorizations, and a
half-precision stopping test cannot resolve a gradient or residual to a useful accuracy (bfloat16
keeps 8 bits). So unless the solver's class says `supports_half_precision = True` (only
`Bisection`, whose bracket is its own error bound), the front door runs the whole solve in
float32: the half-precision leaves of the initial point are cast to float32, so `fun` sees
float32 parameters (float16/bfloat16 data in `args` promotes to float32 inside it), the
factorizations, stopping test and implicit derivatives are float32, and `Solution.params`
comes back in the dtypes of the initial point (rounded once, at the end). `Solution.value`,
`aux` and `state` stay in float32. Derivatives flow through both casts. See docs/precision.md.

**Dense matrices.** Solvers that form an n×n matrix (`Newton`, `BFGS`, `NewtonRaphson`,
`Broyden`, and `LevenbergMarquardt`/`GaussNewton` with `linear_solver="dense"`) refuse at trace
time a problem whose matrix would exceed `DENSE_LIMIT_BYTES`, naming the matrix-free
alternative, instead of failing in XLA's allocator.
"""

from __future__ import annotations

import functools
import inspect

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu

HALF_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))

# 2 GiB: an n×n matrix beyond this (n ≈ 16,000 in float64, 23,000 in float32) is better served
# by a matrix-free solver, and one factorization would already take minutes on a CPU.
DENSE_LIMIT_BYTES = 2 * 1024**3

# What to use instead of a dense solver on a large problem.
_MATRIX_FREE = {
    "minimize": "jaxopt2.NewtonCG() (Hessian-vector products, no n×n matrix) or "
                "jaxopt2.LBFGS()",
    "least_squares": 'linear_solver="cg" (or "auto")',
    "root_find": "jaxopt2.NewtonKrylov() (Jacobian-vector products, no n×n matrix)",
    "fixed_point": "jaxopt2.Anderson() or jaxopt2.NewtonKrylov()",
}


def is_half(dtype) -> bool:
    return jnp.dtype(dtype) in HALF_DTYPES


def _leaves(tree):
    return [x for x in jtu.tree_leaves(tree) if hasattr(x, "dtype") and hasattr(x, "shape")]


def check_dense_size(solver, params0, door: str) -> None:
    """Raise a ValueError if `solver` would form an n×n matrix of more than
    `DENSE_LIMIT_BYTES` for parameters `params0` (concrete or traced; only shapes are read)."""
    dense = getattr(type(solver), "forms_dense_matrix", False) or (
        getattr(solver, "linear_solver", None) == "dense")
    if not dense:
        return
    leaves = _leaves(params0)
    if not leaves:
        return
    n = sum(int(x.size) for x in leaves)
    itemsize = max(jnp.dtype(x.dtype).itemsize for x in leaves)
    if is_half(jnp.result_type(*leaves)):
        itemsize = 4  # computed in float32
    size = n * n * itemsize
    if size > DENSE_LIMIT_BYTES:
        raise ValueError(
            f"{type(solver).__name__} forms a dense {n}×{n} matrix ({size / 1024**3:.1f} GiB) "
            f"for these {n} parameters, over the {DENSE_LIMIT_BYTES / 1024**3:.0f} GiB limit of "
            f"dense solvers. Use a matrix-free solver instead: {_MATRIX_FREE[door]}.")


def upcast_half(params0):
    """`params0` with float16/bfloat16 leaves cast to float32, and a function that casts a
    pytree of that structure back to the original dtypes (the identity if nothing was cast)."""
    leaves, treedef = jtu.tree_flatten(params0)
    dtypes = [getattr(x, "dtype", None) for x in leaves]
    if not any(d is not None and is_half(d) for d in dtypes):
        return params0, lambda tree: tree
    up = [jnp.asarray(x, jnp.float32) if d is not None and is_half(d) else x
          for x, d in zip(leaves, dtypes, strict=True)]

    def restore(tree):
        out = jtu.tree_leaves(tree)
        if len(out) != len(dtypes):
            return tree
        return jtu.tree_unflatten(treedef, [
            y.astype(d) if d is not None and is_half(d) else y
            for y, d in zip(out, dtypes, strict=True)])

    return jtu.tree_unflatten(treedef, up), restore


def solver_inputs(door: str):
    """Decorator for a front door `door(fun, params0, args=None, *, solver, ...)`: refuses
    dense solvers on problems too large for them, and runs half-precision problems in float32
    for solvers without `supports_half_precision` (see the module docstring)."""

    def decorate(func):
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return func(*args, **kwargs)  # let the door report the bad call
            names = list(signature.parameters)
            point_name = names[1]
            params0 = bound.arguments.get(point_name)
            solver = bound.arguments.get("solver")
            if params0 is None or solver is None:
                return func(*args, **kwargs)
            check_dense_size(solver, params0, door)
            if getattr(type(solver), "supports_half_precision", False):
                return func(*args, **kwargs)
            params0, restore = upcast_half(params0)
            bound.arguments[point_name] = params0
            sol = func(*bound.args, **bound.kwargs)
            return eqx.tree_at(lambda s: s.params, sol, restore(sol.params))

        return wrapper

    return decorate

