"""The checks of the `jaxopt2.optimizers` transformations: their hyperparameters when they
are built, the parameters `init` gets and the pytrees `update` gets.

Hyperparameters are checked when they are Python numbers (or concrete arrays) and let through
when they are traced: `optax.inject_hyperparams` rebuilds the transformation inside every
`update` from hyperparameters kept as arrays in its state.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._validate import check_number as check_number

CURVATURES = ("ggn", "hessian")


def _is_integer(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return (isinstance(value, (jax.Array, np.ndarray)) and value.shape == ()
            and jnp.issubdtype(value.dtype, jnp.integer))


def check_int(name: str, value, *, low: int = 1):
    """An int ≥ `low`: a Python int, or an integer 0-d array (checked when concrete, let
    through when traced, as `optax.inject_hyperparams` passes it)."""
    if _is_integer(value) and (isinstance(value, jax.core.Tracer) or int(value) >= low):
        return
    raise ValueError(f"`{name}` must be an int ≥ {low}; got {value!r}.")


def static_int(optimizer: str, name: str, value) -> int:
    """`value` as a Python int where it fixes an array shape (only `init` reads it)."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{optimizer}: `{name}` fixes the shape of the state, so it must be a concrete int "
            f"when `init` runs; got a traced value. With `optax.inject_hyperparams`, call "
            f"`init` outside `jax.jit`, or pass static_args=({name!r},).")
    return operator.index(value)


def check_learning_rate(name: str, value, *, allow_none: bool = False):
    """A positive number (Python, or a 0-d array, possibly traced) or an optax schedule (a
    callable of the step count)."""
    if value is None and allow_none:
        return
    if callable(value):
        return
    check_number(name, value, low=0.0, low_open=True)


def check_curvature(optimizer: str, curvature, model_fn, loss_fn) -> str:
    """Resolve `curvature` (None: "ggn" with model_fn/loss_fn, else "hessian")."""
    if (model_fn is None) != (loss_fn is None):
        raise ValueError(f"{optimizer}: pass both `model_fn(params, batch) -> outputs` and "
                         f"`loss_fn(outputs, batch) -> scalar`, or neither.")
    for name, fn in (("model_fn", model_fn), ("loss_fn", loss_fn)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{optimizer}: `{name}` must be callable; got {fn!r}.")
    if curvature is None:
        return "ggn" if model_fn is not None else "hessian"
    if curvature not in CURVATURES:
        raise ValueError(f"{optimizer}: `curvature` must be 'ggn' (Gauss-Newton), 'hessian' or "
                         f"None (GGN when model_fn/loss_fn are given); got {curvature!r}.")
    if curvature == "ggn" and model_fn is None:
        raise ValueError(f"{optimizer}: curvature='ggn' needs the split of the loss into model "
                         f"and loss: pass `model_fn(params, batch) -> outputs` and "
                         f"`loss_fn(outputs, batch) -> scalar` to {optimizer}(...), or use "
                         f"curvature='hessian' (Hessian products of `value_fn`).")
    return curvature


def check_cg(cg_max_steps, cg_rtol) -> None:
    """The inner CG solve's budget and relative tolerance."""
    check_int("cg_max_steps", cg_max_steps)
    check_number("cg_rtol", cg_rtol, low=0.0, high=1.0, high_open=True)


def check_init_params(optimizer: str, params, *, half_precision: bool = True) -> None:
    """`init`'s check: `params` must be a non-empty pytree of floating-point arrays (integer
    parameters cannot take a fractional step; half precision only where the optimizer has no
    factorization, which LAPACK lacks in float16/bfloat16)."""
    leaves = jtu.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError(f"{optimizer}.init: `params` has no array leaves; pass the model's "
                         "parameters as a pytree of floating-point arrays.")
    for path, leaf in leaves:
        dtype = getattr(leaf, "dtype", None) or np.asarray(leaf).dtype
        name = "params" + jtu.keystr(path)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{optimizer}.init: `{name}` has dtype {dtype}; parameters must be "
                            "floating point. Cast them, e.g. jnp.asarray(x, jnp.float32).")
        if not half_precision and jnp.dtype(dtype) in (jnp.dtype(jnp.float16),
                                                       jnp.dtype(jnp.bfloat16)):
            raise TypeError(f"{optimizer}.init: `{name}` has dtype {dtype}, but {optimizer} "
                            "factorizes its sketch (eigh/QR), which has no float16/bfloat16 "
                            "kernel. Keep float32 master parameters for this optimizer (cast "
                            "params to jnp.float32), or use hessian_free / diag_newton.")


def check_grads(optimizer: str, grads, params) -> None:
    """`update`'s check that `grads` matches `params` (structure and leaf shapes)."""
    check_like(optimizer, "grads", grads, params,
               "pass the gradient of the loss with respect to the same params pytree (e.g. "
               "jax.grad(loss)(params, batch))")


def check_state(optimizer: str, name: str, tree, params) -> None:
    """`update`'s check that a params-shaped field of the state (`name`, e.g.
    "state.momentum") matches `params`: a state made by `init` for other parameters would
    otherwise fail deep inside a tree_map, or be silently broadcast."""
    check_like(optimizer, name, tree, params,
               f"make the state with {optimizer}(...).init(params) for these params")


def check_like(optimizer: str, name: str, tree, params, fix: str, expected=None) -> None:
    """`tree` (called `name` in the message) has the structure of `params` and, leaf by leaf,
    the shapes `expected` (a list, one per parameter leaf; None where no shape fits), by
    default the parameters' own."""
    if jtu.tree_structure(tree) != jtu.tree_structure(params):
        raise ValueError(f"{optimizer}.update: `{name}` has structure "
                         f"{jtu.tree_structure(tree)} but `params` has "
                         f"{jtu.tree_structure(params)}; {fix}.")
    leaves = jtu.tree_leaves(params)
    if expected is None:
        expected = [jnp.shape(p) for p in leaves]
    for (path, leaf), p, want in zip(jtu.tree_leaves_with_path(tree), leaves, expected,
                                     strict=True):
        if jnp.shape(leaf) == want:
            continue
        where = f"{optimizer}.update: `{name}{jtu.keystr(path)}` has shape {jnp.shape(leaf)}"
        if want == jnp.shape(p):
            raise ValueError(f"{where} but the parameter has shape {jnp.shape(p)}; {fix}.")
        raise ValueError(f"{where}, which `init` does not give a parameter of shape "
                         f"{jnp.shape(p)}; {fix}.")
