"""Trace-time input validation with messages that say what to fix."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .distributed import explicit_spec, mesh_in_context, on_mesh


def _name(root: str, path) -> str:
    return root + jtu.keystr(path)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


@jax.jit
def _all_finite(x):
    return jnp.all(jnp.isfinite(x))


def _in_host_memory(x) -> bool:
    """A jax.Array whose every shard is in this process's CPU memory: NumPy reads it in place."""
    return x.is_fully_addressable and all(d.platform == "cpu" for d in x.devices())


def _has_nonfinite(x) -> bool:
    """True if a concrete array holds NaN/inf; evaluated eagerly even inside a `jit` trace.
    Data in host memory is read by NumPy in place: no device program to compile (op by op,
    `isfinite` and `all` were two programs per shape and dtype, 0.1–0.2 s each at a front
    door's first call). Data on an accelerator is checked there, by one cached program per
    shape and dtype, rather than copied to the host at every call."""
    if isinstance(x, np.ndarray) or (isinstance(x, jax.Array) and _in_host_memory(x)):
        return not bool(np.isfinite(np.asarray(x)).all())
    with jax.ensure_compile_time_eval():
        return not bool(_all_finite(x))


def check_params(params0, root: str = "params0"):
    """Every leaf must be a floating-point array; returns the params with leaves as arrays.
    Concrete leaves are also checked for NaN/inf."""
    leaves, treedef = jtu.tree_flatten_with_path(params0)
    if not leaves:
        raise ValueError(f"`{root}` has no array leaves; pass the initial parameters as a pytree "
                         "of floating-point arrays.")
    out = []
    for path, leaf in leaves:
        if isinstance(leaf, (jax.Array, np.ndarray)) and leaf.size == 0:
            if all(getattr(x, "size", 1) == 0 for _, x in leaves):
                raise ValueError(
                    f"`{root}` has no entries (every leaf has size 0, e.g. `{_name(root, path)}` "
                    f"has shape {leaf.shape}): there is nothing to solve for. Pass at least one "
                    "parameter, or skip the solve when the problem is empty.")
        name = _name(root, path)
        if isinstance(leaf, (bool, int)) or not hasattr(jnp.asarray(leaf), "dtype"):
            raise TypeError(f"`{name}` is a Python {type(leaf).__name__}; every leaf of `{root}` "
                            "must be a floating-point array, e.g. jnp.asarray(x, jnp.float32).")
        try:
            arr = jnp.asarray(leaf)
        except TypeError as e:
            raise TypeError(f"`{name}` of type {type(leaf).__name__} is not an array; every leaf "
                            f"of `{root}` must be a floating-point array.") from e
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(
                f"`{name}` has dtype {arr.dtype}; solvers need floating-point parameters. "
                f"Convert it with jnp.asarray(..., jnp.float32) (or float64), or move it from "
                f"`{root}` into `args` if it is data rather than a parameter."
            )
        if _is_concrete(arr) and _has_nonfinite(arr):
            raise ValueError(f"`{name}` contains NaN or infinity; start from finite values.")
        out.append(on_mesh(arr))
    return jtu.tree_unflatten(treedef, out)


def check_args(args) -> None:
    """Concrete floating-point leaves of `args` must be finite; data sharded over Explicit
    mesh axes needs the mesh set around the call."""
    for path, leaf in jtu.tree_flatten_with_path(args)[0]:
        if eqx.is_array(leaf) and explicit_spec(leaf) is not None and not mesh_in_context():
            # Without a mesh in context JAX cannot type the contractions over the sharded
            # axis in the derivatives of `fun` (a ShardingTypeError deep inside the solve).
            raise ValueError(
                f"`{_name('args', path)}` is sharded over Explicit mesh axes "
                f"({jax.typeof(leaf).sharding.spec}); call the solver inside "
                "`with jax.set_mesh(mesh):` (around the jit call or the jitted function), "
                "or use a mesh with AxisType.Auto axes.")
        if isinstance(leaf, (jax.Array, np.ndarray)) and _is_concrete(leaf):
            if jnp.issubdtype(leaf.dtype, jnp.inexact) and _has_nonfinite(leaf):
                raise ValueError(f"`{_name('args', path)}` contains NaN or infinity; clean the "
                                 "data (e.g. drop or impute missing values) before solving.")


def wrap_objective(fun, has_aux: bool):
    """Normalise `fun` to return `(value, aux)`."""
    if has_aux:
        return fun
    return lambda params, args: (fun(params, args), None)


def check_objective(fn, params0, args, what: str = "fun") -> None:
    """Trace `fn(params0, args)` once (no FLOPs) and check it returns a real scalar."""
    raw = []

    def traced(params, args):
        out = fn(params, args)
        raw.append(out[0] if isinstance(out, tuple) and len(out) == 2 else out)
        return out

    try:
        out = jax.eval_shape(traced, params0, args)
    except Exception as e:  # re-raised with the structure the user passed
        structure = jtu.tree_structure(params0)
        shapes = jtu.tree_map(lambda x: f"{x.dtype}{list(x.shape)}", params0)
        raise ValueError(
            f"Calling `{what}(params0, args)` failed while tracing: {type(e).__name__}: {e}\n"
            f"params0 has structure {structure} with leaves {shapes}. Check that params0 has the "
            f"pytree structure and leaf shapes that `{what}` expects, and that `args` is passed "
            f"as one pytree."
        ) from e
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"With has_aux=True, `{what}` must return a pair (value, aux); got {out}.")
    value = out[0]
    if raw and isinstance(raw[0], (bool, int, float, complex, np.generic, np.ndarray)):
        raise TypeError(
            f"`{what}` returned a {type(raw[0]).__name__}, a constant that does not depend on "
            f"the parameters, so there is nothing to minimize. Compute the objective from "
            f"`params` with jax.numpy (e.g. `return jnp.sum((params - a) ** 2)`), and do not "
            f"convert it with float(), .item() or NumPy.")
    if not isinstance(value, jax.ShapeDtypeStruct):
        raise TypeError(f"`{what}` must return a JAX scalar; got {type(value).__name__}.")
    if value.shape != ():
        raise ValueError(
            f"`{what}` must return a scalar objective; got shape {value.shape}. Reduce it (e.g. "
            "jnp.mean of per-example losses), or use a least-squares solver for residual vectors."
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"`{what}` returned dtype {value.dtype}; the objective must be a "
                        "real floating-point scalar.")


def check_vector_output(fn, y0, args, what: str, square: bool) -> None:
    """Trace `fn(y0, args)` once and check it returns `(f, aux)` with `f` a pytree of real
    floating-point arrays; with `square=True`, `f` must match `y0`'s structure and shapes
    (root finding and fixed points map a point to a point)."""
    try:
        out = jax.eval_shape(fn, y0, args)
    except Exception as e:
        shapes = jtu.tree_map(lambda x: f"{x.dtype}{list(x.shape)}", y0)
        raise ValueError(
            f"Calling `{what}(y0, args)` failed while tracing: {type(e).__name__}: {e}\n"
            f"The initial point has leaves {shapes}. Check that it has the pytree structure and "
            f"leaf shapes that `{what}` expects, and that `args` is passed as one pytree."
        ) from e
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"With has_aux=True, `{what}` must return a pair (output, aux); got "
                        f"{out}.")
    f = out[0]
    for path, leaf in jtu.tree_flatten_with_path(f)[0]:
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            raise TypeError(f"`{what}` output{jtu.keystr(path)} is a {type(leaf).__name__}; "
                            "it must be a JAX array.")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"`{what}` output{jtu.keystr(path)} has dtype {leaf.dtype}; it must "
                            "be real floating point.")
    if not jtu.tree_leaves(f):
        raise ValueError(f"`{what}` returned no arrays; it must return residuals.")
    if square:
        y_shapes = jtu.tree_map(lambda x: x.shape, y0)
        f_shapes = jtu.tree_map(lambda x: x.shape, f)
        if jtu.tree_structure(f) != jtu.tree_structure(y0) or y_shapes != f_shapes:
            raise ValueError(
                f"`{what}` must return a pytree with the same structure and leaf shapes as the "
                f"initial point (a square system); got {f_shapes} for a point with "
                f"{y_shapes}. For over- or under-determined systems use "
                "jaxopt2.least_squares."
            )
        y_dtypes = jtu.tree_map(lambda x: x.dtype, y0)
        f_dtypes = jtu.tree_map(lambda x: x.dtype, f)
        if y_dtypes != f_dtypes:
            raise TypeError(
                f"`{what}` must return the dtypes of the initial point; got {f_dtypes} for a "
                f"point with {y_dtypes}. A float64 constant or a NumPy scalar in `{what}` "
                "probably promoted it: cast the output (or the constants) to the point's dtype."
            )
