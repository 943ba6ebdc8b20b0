"""Small pytree arithmetic used by every solver.

Parameters are pytrees of floating-point arrays; these helpers keep every leaf's dtype and never
ravel leaves together, so sharded leaves stay sharded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .distributed import explicit_spec


def tree_dot(x, y):
    """Sum over leaves of <x_leaf, y_leaf>, accumulated in the widest leaf dtype."""
    parts = [_vdot(a, b) for a, b in zip(jtu.tree_leaves(x), jtu.tree_leaves(y), strict=True)]
    return sum(parts[1:], parts[0]) if parts else jnp.zeros(())


def _vdot(a, b):
    # Over Explicit mesh axes (sharding in types) a dot product contracting a sharded axis
    # must name its output's sharding, which vdot cannot: an elementwise product and a sum
    # reduce locally and then all-reduce, like the sum of a loss over examples.
    if explicit_spec(a) is None and explicit_spec(b) is None:
        return jnp.vdot(a, b)
    return jnp.sum(jnp.conj(a) * b)


def tree_add(x, y):
    return jtu.tree_map(jnp.add, x, y)


def tree_sub(x, y):
    return jtu.tree_map(jnp.subtract, x, y)


def tree_scale(a, x):
    return jtu.tree_map(lambda leaf: (a * leaf).astype(leaf.dtype), x)


def tree_axpy(a, x, y):
    """a * x + y, keeping y's dtypes."""
    return jtu.tree_map(lambda u, v: (a * u + v).astype(v.dtype), x, y)


def tree_neg(x):
    return jtu.tree_map(jnp.negative, x)


def tree_zeros_like(x):
    return jtu.tree_map(jnp.zeros_like, x)


def tree_norm(x):
    """Euclidean norm of all leaves together."""
    return jnp.sqrt(tree_dot(x, x).real)


def tree_inf_norm(x):
    leaves = jtu.tree_leaves(x)
    if not leaves:
        return jnp.zeros(())
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf), initial=0.0) for leaf in leaves]))


def tree_where(pred, x, y):
    return jtu.tree_map(lambda a, b: jnp.where(pred, a, b), x, y)


def tree_all_finite(x):
    leaves = jtu.tree_leaves(x)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def tree_changed(new, old):
    """Whether any entry of `new` differs from `old` (bitwise: a step below the rounding of x
    leaves it unchanged)."""
    leaves = [jnp.any(a != b)
              for a, b in zip(jtu.tree_leaves(new), jtu.tree_leaves(old), strict=True)]
    return jnp.any(jnp.stack(leaves)) if leaves else jnp.array(False)


def tree_size(x) -> int:
    return sum(leaf.size for leaf in jtu.tree_leaves(x))


def result_dtype(x):
    """The widest floating dtype among the leaves: the precision the solver works in."""
    leaves = jtu.tree_leaves(x)
    return jnp.result_type(*leaves) if leaves else jnp.dtype(float)


def eps(x) -> float:
    return float(jnp.finfo(result_dtype(x)).eps)


def ravel(x):
    """Flatten a (small) pytree to a vector plus an unravel function. Only ever used on
    parameters, never on data."""
    return jax.flatten_util.ravel_pytree(x)
