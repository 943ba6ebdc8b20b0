"""Leafwise helpers shared by `jaxopt2.projection`, `jaxopt2.prox` and the bounds of
`minimize`: reading `x`'s leaves, laying a parameter out like `x`, checking concrete parameter
values (and turning traced invalid ones into NaN), and the box clip whose derivative is the
0/1 mask.

Every projection and proximal operator starts the same way, so the rules (which leaves count,
how a scalar or a pytree parameter broadcasts, what error a mismatch raises) live here once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


def clip(v, lo=None, hi=None):
    """clip(v, lo, hi) entrywise (a None side unbounded), written with `where` so that the
    derivative with respect to `v` is exactly the 0/1 mask of the coordinates left free (1 at
    a tie v = lo or v = hi, where `jnp.clip`/`jnp.maximum` would split the derivative as 0.5),
    and with respect to a bound the mask of the coordinates clipped to it. An infinite bound
    never selects, so its (zero) tangent never meets inf. `lo`, `hi` in `v`'s dtype.

    ```python
    import jax, jax.numpy as jnp
    from jaxopt2._leafwise import clip
    print(jax.grad(lambda v: clip(v, 0.0, 1.0).sum())(jnp.array([-1.0, 0.0, 0.5, 2.0])))
    # [0. 1. 1. 0.]
    ```
    """
    out = v
    if hi is not None:
        out = jnp.where(v > hi, hi, out)
    if lo is not None:
        out = jnp.where(v < lo, lo, out)
    return out


def is_concrete(value) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(value))


def as_float(leaf):
    leaf = jnp.asarray(leaf)
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
        leaf = leaf.astype(jnp.result_type(float))
    return leaf


def x_leaves(x, fname: str):
    """The leaves of `x` as floating arrays, with their paths and treedef."""
    flat, treedef = jtu.tree_flatten_with_path(x)
    if not flat:
        raise ValueError(f"`{fname}`: `x` has no array leaves; pass an array or a pytree of "
                         "arrays to project.")
    paths = [p for p, _ in flat]
    return paths, [as_float(leaf) for _, leaf in flat], treedef


def like_x(value, name: str, paths, leaves, treedef, fname: str, *, groups: bool = False,
           axis=None):
    """`value` laid out like `x`: one entry per leaf of `x`, each an array that broadcasts to
    that leaf's shape, or None. `value` may be None, a scalar (or any single array, broadcast
    to every leaf), or a pytree with x's structure whose leaves may be None.

    With `groups`, `leaves` are per-group reductions of x's leaves over `axis` (dims kept), and
    an entry given without the reduced axis gets it back, so one value per group broadcasts."""
    if value is None:
        return [None] * len(leaves)
    if jtu.treedef_is_leaf(jtu.tree_structure(value)):
        values = [value] * len(leaves)
    else:
        try:
            values = treedef.flatten_up_to(value)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"`{fname}`: `{name}` must be a scalar or a pytree with the structure of `x` "
                f"({treedef}); got structure {jtu.tree_structure(value)}.") from e
    out = []
    for path, leaf, v in zip(paths, leaves, values, strict=True):
        if v is None:
            out.append(None)
            continue
        v = jnp.asarray(v)
        if groups and axis is not None and v.ndim and v.ndim != leaf.ndim:
            v = jnp.expand_dims(v, axis)
        try:
            ok = jnp.broadcast_shapes(v.shape, leaf.shape) == leaf.shape
        except ValueError:
            ok = False
        if not ok and groups:
            raise ValueError(
                f"`{fname}`: `{name}{jtu.keystr(path)}` has shape {v.shape}; it needs one "
                f"entry per group of `x{jtu.keystr(path)}` (shape {leaf.shape} with "
                f"axis={axis} kept, or a scalar).")
        if not ok:
            raise ValueError(
                f"`{fname}`: `{name}{jtu.keystr(path)}` has shape {v.shape}, which does not "
                f"broadcast to the shape {leaf.shape} of `x{jtu.keystr(path)}`; pass a scalar "
                "or an array of that shape.")
        out.append(v)
    return out


def check_values(fname: str, name: str, value, *, positive: bool = False):
    """Raise if a concrete `value` (pytree) holds a negative (or, with `positive`, a
    non-positive) or NaN entry. Traced values pass; see `invalid_to_nan`."""
    if value is None or not is_concrete(value):
        return
    with jax.ensure_compile_time_eval():
        for leaf in jtu.tree_leaves(value):
            arr = np.asarray(leaf)
            bad = ~(arr > 0) if positive else ~(arr >= 0)
            if np.any(bad):
                what = "positive" if positive else "non-negative (≥ 0)"
                got = arr if arr.size <= 8 else f"an array with {int(np.sum(bad))} invalid entries"
                raise ValueError(f"`{fname}`: `{name}` must be {what} and not NaN; got {got}.")


def invalid_to_nan(y, invalid):
    """NaN where `invalid` holds: a traced invalid parameter gives a visible NaN result
    (a solver reports it as non-finite) rather than a plausible wrong one."""
    return jnp.where(invalid, jnp.asarray(jnp.nan, y.dtype), y)
