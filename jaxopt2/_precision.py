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

**Mixed precision, per solver** (`MixedPrecision`). A curvature callable for the solvers that
take one (`NewtonCG`, `DampedNewton`, `RegularizedNewton`): the curvature products (and what
is built from them: CG's products, the Nyström sketch, the Jacobi probes) evaluate the model
in a low `compute_dtype` on low-precision copies of the parameters, the direction and the
data, and come back in the parameters' dtype, where CG, the sketch's factorizations, the line
search, the stopping test, the final curvature check and the implicit derivatives accumulate.
The value and the gradient stay in the parameters' dtype: the stopping test reads them, and a
bfloat16 gradient cannot be driven below its own rounding (see docs/precision.md).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from ._curvature import _structure, _Symmetric, hessian
from .distributed import like

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



def _cast_floating(tree, dtype):
    """`tree` with every real floating-point array leaf cast to `dtype` (integers, booleans,
    keys and non-arrays untouched)."""
    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x).astype(dtype)
        return x
    return jtu.tree_map(cast, tree)


def pow2_scale(tree):
    """The power of two nearest below max|tree| (1 for a zero or non-finite tree), in the
    tree's result dtype: dividing by it is exact and brings the largest entry into [1, 2)."""
    leaves = [x for x in jtu.tree_leaves(tree) if hasattr(x, "dtype")]
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    big = jnp.zeros((), dtype)
    for x in leaves:
        if x.size:
            big = jnp.maximum(big, jnp.max(jnp.abs(x)).astype(dtype))
    ok = jnp.isfinite(big) & (big > 0)
    return jnp.where(ok, jnp.exp2(jnp.floor(jnp.log2(jnp.where(ok, big, 1.0)))), 1.0
                     ).astype(dtype)


class _TwoPrecisions(eqx.Module):
    """An objective closure-converted twice: at the parameters' dtypes (`full`, what the
    solver evaluates) and at `compute` (`low`, what `MixedPrecision`'s products evaluate),
    chosen by the dtype of the parameters it is called with."""

    full: Callable
    low: Callable
    compute: Any = eqx.field(static=True)

    def __call__(self, params, args):
        leaves = [x for x in jtu.tree_leaves(params) if hasattr(x, "dtype")]
        if leaves and all(jnp.dtype(x.dtype) == self.compute for x in leaves
                          if jnp.issubdtype(x.dtype, jnp.floating)):
            return self.low(params, args)
        return self.full(params, args)


class MixedPrecision(eqx.Module):
    """Curvature products in a low precision, everything else in the parameters' dtype.

    Pass it as the `curvature` of `NewtonCG`, `DampedNewton` or `RegularizedNewton`, or as
    the `precision` of `LevenbergMarquardt` and `GaussNewton` (their matrix-free J v and Jᵀu
    products; `curvature` must then stay None; docs/precision.md). Each
    product H̃v evaluates the curvature (`curvature`, the exact Hessian by default, or e.g. a
    Gauss–Newton operator) at the parameters, the direction v and the floating-point leaves
    of the data all cast to `compute_dtype`, and returns it in the parameters' dtype (the
    accumulation dtype: float32 for float32 parameters). Inside a product, sums and matrix
    products of bfloat16 arrays accumulate in float32 (JAX's reductions and XLA's dots), and
    round once to `compute_dtype` at their output.

    What stays in the parameters' dtype: the value and the gradient (the stopping test reads
    them), CG's vectors and dot products, the Nyström sketch's factorizations, Lanczos in the
    final curvature check (which uses exact products, so `saddle_point`/`ill_conditioned`
    are judged at full precision), the line search and the implicit derivatives. So the
    solution is the accurate minimizer, to the solver's own tolerance, not to bfloat16's:
    an error of relative size δ ≈ 2⁻⁸ in H only makes the Newton direction inexact, which
    slows the local convergence to linear with a rate of about δ·κ(H) (Dembo, Eisenstat and
    Steihaug 1982), without moving the point where the gradient vanishes. NewtonCG's
    certifying CG solve asks for a residual no smaller than `compute_dtype` can resolve
    (`forcing_floor`); where δ·κ(H) nears 1 (condition numbers of several hundred in
    bfloat16) the solve takes several times the products, and where the steps stop
    improving it ends `max_steps_reached` rather than claim success.

    Use it where products dominate the cost (NewtonCG spends most of its passes over the data
    in CG) and the data are stored in `compute_dtype` already: then each product reads half
    the bytes of float32 and needs no float32 copy of the data.

    **Arguments:**

    - `compute_dtype`: the dtype of the products' arithmetic (`jnp.bfloat16` or `jnp.float16`;
      float16 overflows beyond 65,504, so scale the data).
    - `curvature`: `curvature(fun, params, args) -> lineax operator`, evaluated in
      `compute_dtype`; default `jaxopt2.curvature.hessian`.
    - `cast_args`: cast the floating-point leaves of `args` to `compute_dtype` too (default).
      With False, data stored in float32 promotes the products back to float32.

    ```python
    import jax, jax.numpy as jnp, jaxopt2
    from jaxopt2 import MixedPrecision
    X = jax.random.normal(jax.random.key(0), (512, 8)).astype(jnp.bfloat16)
    y = (X[:, 0] > 0).astype(jnp.float32)

    def loss(w, data):
        X, y = data
        z = X @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 1e-2 * jnp.sum(w * w)

    solver = jaxopt2.NewtonCG(curvature=MixedPrecision(jnp.bfloat16))
    sol = jaxopt2.minimize(loss, jnp.zeros(8), (X, y), solver=solver)
    ```

    Reference: R. S. Dembo, S. C. Eisenstat and T. Steihaug, "Inexact Newton methods", SIAM
    J. Numer. Anal. 19 (1982); P. Micikevicius et al., "Mixed precision training", ICLR 2018.
    """

    compute_dtype: Any = jnp.bfloat16
    curvature: Callable | None = None
    cast_args: bool = True

    def __check_init__(self):
        try:
            dtype = jnp.dtype(self.compute_dtype)
        except TypeError as error:
            raise ValueError(f"MixedPrecision: `compute_dtype` must be a floating-point dtype "
                             f"(jnp.bfloat16, jnp.float16, ...); got {self.compute_dtype!r}."
                             ) from error
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"MixedPrecision: `compute_dtype` must be a floating-point dtype "
                             f"(jnp.bfloat16, jnp.float16, ...); got {dtype}.")
        if self.curvature is not None and not callable(self.curvature):
            raise ValueError("MixedPrecision: `curvature` must be a function (fun, params, "
                             f"args) -> lineax operator, or None; got {self.curvature!r}.")

    @property
    def forcing_floor(self) -> float:
        """The smallest relative CG residual that products in `compute_dtype` can resolve
        (its machine epsilon, 7.8e-3 in bfloat16): NewtonCG's certifying solve asks for no
        less. Its step then estimates the Newton step to within a factor 1 + O(δ·κ), and the
        final curvature check (exact products) still judges the result."""
        return float(jnp.finfo(jnp.dtype(self.compute_dtype)).eps)

    def wrap_objective(self, fn, full, params0, args):
        """The solver's objective (`AbstractMinimizer.convert_objective`): `full`, the
        closure-converted `fn`, plus `fn` converted at the low-precision shapes, which a
        closure-converted function needs to be called with."""
        compute = jnp.dtype(self.compute_dtype)
        low_args = _cast_floating(args, compute) if self.cast_args else args
        low = eqx.filter_closure_convert(fn, _cast_floating(params0, compute), low_args)
        return _TwoPrecisions(full, low, compute)

    def __call__(self, fun: Callable, params: Any, args: Any = None) -> lx.AbstractLinearOperator:
        compute = jnp.dtype(self.compute_dtype)
        base = hessian if self.curvature is None else self.curvature
        low_args = _cast_floating(args, compute) if self.cast_args else args
        operator = base(fun, _cast_floating(params, compute), low_args)
        structure = _structure(params)

        def mv(vector):
            # The product is linear in the vector: cast it at a power-of-two scale (exact) so
            # that small CG directions near the solution do not underflow float16's range
            # (its smallest normal is 6e-5), which would read as zero curvature.
            scale = pow2_scale(vector)
            out = operator.mv(_cast_floating(jtu.tree_map(lambda v: v / scale, vector),
                                             compute))
            out = jtu.tree_map(lambda o, p: o.astype(p.dtype) * scale.astype(p.dtype), out,
                               structure)
            return like(out, structure)

        tags = getattr(operator, "tags", lx.symmetric_tag)
        return _Symmetric(mv, structure, tags=tags)
