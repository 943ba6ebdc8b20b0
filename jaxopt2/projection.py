"""Euclidean projections onto convex sets: P_C(x) = argmin_{y ∈ C} ½‖y − x‖².

Every function is pure and exact (a closed form or a sort), takes `x` first and the set's
parameters second, as jaxopt's `projection_*` functions do, and works under `jit`, `vmap` and
`jax.grad`: the derivative (almost everywhere, away from the set's kinks) is the derivative of
the projection, e.g. the 0/1 mask of the free coordinates for a box and I − 11ᵀ/k on the
support for the simplex. Leaves keep their dtypes. Any projection is a proximal operator through
[`jaxopt2.prox.indicator`][jaxopt2.prox.indicator].

| jaxopt | jaxopt2 | set |
|---|---|---|
| `projection_non_negative(x)` | `projection.non_negative(x)` | y ≥ 0 |
| `projection_box(x, (lower, upper))` | `projection.box(x, (lower, upper))` | lower ≤ y ≤ upper |
| `projection_hypercube(x, unit)` | `projection.box(x, (0.0, unit))` | 0 ≤ y ≤ unit |
| `projection_simplex(x, value)` | `projection.simplex(x, value)` | y ≥ 0, Σy = value |
| `projection_l1_ball(x, max_value)` | `projection.l1_ball(x, radius)` | ‖y‖₁ ≤ radius |
| `projection_l2_ball(x, max_value)` | `projection.l2_ball(x, radius)` | ‖y‖₂ ≤ radius |
| `projection_linf_ball(x, max_value)` | `projection.linf_ball(x, radius)` | ‖y‖∞ ≤ radius |
| `projection_hyperplane(x, (a, b))` | `projection.hyperplane(x, (a, b))` | aᵀy = b |
| `projection_halfspace(x, (a, b))` | `projection.halfspace(x, (a, b))` | aᵀy ≤ b |
| `projection_affine_set(x, (A, b))` | `projection.affine_set(x, (A, b))` | Ay = b |
| (none) | `projection.psd(X)` | symmetric positive semidefinite matrices |

Sets over "the whole pytree" (simplex, the balls, hyperplane, halfspace) treat all leaves of
`x` together as one vector; to project each row of a matrix, `jax.vmap` the projection.

Invalid parameters (a negative radius, lower > upper, a NaN bound, a zero normal vector) raise
a `ValueError` when they are concrete; when they are traced (inside `jit` or `vmap`) they
cannot be inspected, and the projection returns NaN where they are invalid, so a solver using
it reports a non-finite status instead of a wrong answer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

__all__ = [
    "affine_set",
    "box",
    "halfspace",
    "hyperplane",
    "l1_ball",
    "l2_ball",
    "linf_ball",
    "non_negative",
    "psd",
    "simplex",
]


# ---------------------------------------------------------------- shared helpers (also for prox)

def _is_concrete(value) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(value))


def _as_float(leaf):
    leaf = jnp.asarray(leaf)
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
        leaf = leaf.astype(jnp.result_type(float))
    return leaf


def _x_leaves(x, fname: str):
    """The leaves of `x` as floating arrays, with their paths and treedef."""
    flat, treedef = jtu.tree_flatten_with_path(x)
    if not flat:
        raise ValueError(f"`{fname}`: `x` has no array leaves; pass an array or a pytree of "
                         "arrays to project.")
    paths = [p for p, _ in flat]
    return paths, [_as_float(leaf) for _, leaf in flat], treedef


def _like_x(value, name: str, paths, leaves, treedef, fname: str):
    """`value` laid out like `x`: one entry per leaf of `x`, each an array that broadcasts to
    that leaf's shape, or None. `value` may be None, a scalar (or any single array, broadcast
    to every leaf), or a pytree with x's structure whose leaves may be None."""
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
        try:
            ok = jnp.broadcast_shapes(v.shape, leaf.shape) == leaf.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"`{fname}`: `{name}{jtu.keystr(path)}` has shape {v.shape}, which does not "
                f"broadcast to the shape {leaf.shape} of `x{jtu.keystr(path)}`; pass a scalar "
                "or an array of that shape.")
        out.append(v)
    return out


def _check_values(fname: str, name: str, value, *, positive: bool = False):
    """Raise if a concrete `value` (pytree) holds a negative (or, with `positive`, a
    non-positive) or NaN entry. Traced values pass; see `_invalid_to_nan`."""
    if value is None or not _is_concrete(value):
        return
    with jax.ensure_compile_time_eval():
        for leaf in jtu.tree_leaves(value):
            arr = np.asarray(leaf)
            bad = ~(arr > 0) if positive else ~(arr >= 0)
            if np.any(bad):
                what = "positive" if positive else "non-negative (≥ 0)"
                got = arr if arr.size <= 8 else f"an array with {int(np.sum(bad))} invalid entries"
                raise ValueError(f"`{fname}`: `{name}` must be {what} and not NaN; got {got}.")


def _invalid_to_nan(y, invalid):
    """NaN where `invalid` holds: a traced invalid parameter gives a visible NaN result
    (a solver reports it as non-finite) rather than a plausible wrong one."""
    return jnp.where(invalid, jnp.asarray(jnp.nan, y.dtype), y)


def _check_radius(fname: str, radius, dtype):
    _check_values(fname, "radius", radius, positive=True)
    radius = jnp.asarray(radius, dtype)
    if radius.ndim != 0:
        raise ValueError(f"`{fname}`: `radius` must be a scalar; got shape {radius.shape} "
                         "(vmap the projection for one radius per problem).")
    return radius


# ---------------------------------------------------------------------------------- projections

def non_negative(x: Any, hyperparams: Any = None) -> Any:
    """Projection onto the non-negative orthant, max(x, 0) entrywise.

    Args:
        x: a pytree of arrays.
        hyperparams: ignored (kept for jaxopt's signature and for
            [`prox.indicator`][jaxopt2.prox.indicator]).

    Returns:
        A pytree like `x`. Its derivative is the 0/1 mask of x > 0.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        print(projection.non_negative(jnp.array([-1.0, 2.0])))   # [0. 2.]
        ```
    """
    del hyperparams
    paths, leaves, treedef = _x_leaves(x, "non_negative")
    return jtu.tree_unflatten(treedef, [jnp.maximum(leaf, 0) for leaf in leaves])


def box(x: Any, hyperparams: tuple) -> Any:
    """Projection onto the box lower ≤ y ≤ upper, clip(x, lower, upper) entrywise.

    Args:
        x: a pytree of arrays.
        hyperparams: `(lower, upper)`. Each is None (unbounded), a scalar, or a pytree with
            the structure of `x` whose leaves are None (that leaf unbounded on that side),
            scalars or arrays broadcasting to the leaf's shape; ±inf is allowed.

    Returns:
        A pytree like `x`. Its derivative with respect to `x` is the 0/1 mask of the free
        coordinates (lower < x < upper), and with respect to `lower` (`upper`) the mask of the
        coordinates clipped there.

    Raises:
        ValueError: on a structure or shape mismatch, a NaN bound or lower > upper (concrete
            bounds; traced ones give NaN at the offending entries).

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        x = {"w": jnp.array([-2.0, 0.5, 3.0]), "b": jnp.array(7.0)}
        print(projection.box(x, ({"w": -1.0, "b": None}, 1.0)))  # w: [-1, .5, 1], b: 1
        ```
    """
    if not (isinstance(hyperparams, (tuple, list)) and len(hyperparams) == 2):
        raise ValueError("`box`: `hyperparams` must be a pair `(lower, upper)` (None, scalars "
                         f"or pytrees like `x`); got {type(hyperparams).__name__}.")
    paths, leaves, treedef = _x_leaves(x, "box")
    lowers = _like_x(hyperparams[0], "lower", paths, leaves, treedef, "box")
    uppers = _like_x(hyperparams[1], "upper", paths, leaves, treedef, "box")
    out = []
    for path, leaf, lo, hi in zip(paths, leaves, lowers, uppers, strict=True):
        name = jtu.keystr(path)
        for side, bound in (("lower", lo), ("upper", hi)):
            if bound is not None and _is_concrete(bound):
                with jax.ensure_compile_time_eval():
                    if bool(jnp.any(jnp.isnan(bound))):
                        raise ValueError(f"`box`: `{side}{name}` contains NaN; use -inf/inf "
                                         "(or None) for an unbounded side.")
        if lo is not None and hi is not None and _is_concrete((lo, hi)):
            with jax.ensure_compile_time_eval():
                if bool(jnp.any(lo > hi)):
                    raise ValueError(f"`box`: `lower{name}` > `upper{name}` at some entries; "
                                     "the box is empty. Swap or fix those bounds.")
        y = leaf
        if lo is not None:
            y = jnp.maximum(y, lo.astype(leaf.dtype))
        if hi is not None:
            y = jnp.minimum(y, hi.astype(leaf.dtype))
        if lo is not None and hi is not None:
            y = _invalid_to_nan(y, ~(lo <= hi))
        elif lo is not None or hi is not None:
            bound = lo if lo is not None else hi
            y = _invalid_to_nan(y, jnp.isnan(bound))
        out.append(y)
    return jtu.tree_unflatten(treedef, out)


def _simplex_vector(v, value):
    # Held, Wolfe & Crowder (1974) / Duchi et al. (2008): with u sorted decreasingly, the
    # support is the prefix of length ρ = #{j : u_j > (Σ_{i≤j} u_i − s)/j}, and the threshold
    # θ = (Σ_{i≤ρ} u_i − s)/ρ. Differentiating θ through the sorted prefix sum gives the exact
    # Jacobian I − 11ᵀ/ρ on the support (ρ is an integer, so no gradient flows through it).
    u = jnp.sort(v)[::-1]
    excess = jnp.cumsum(u) - value
    k = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
    rho = jnp.count_nonzero(u * k > excess)
    theta = excess[rho - 1] / rho.astype(v.dtype)
    return jnp.maximum(v - theta, 0)


def simplex(x: Any, value: float = 1.0) -> Any:
    """Projection onto the simplex {y ≥ 0, Σᵢ yᵢ = value} (all leaves of `x` together).

    Sort-based, O(n log n): with u = x sorted decreasingly, ρ = max{j : uⱼ > (Σ_{i≤j} uᵢ −
    value)/j}, θ = (Σ_{i≤ρ} uᵢ − value)/ρ and P(x) = max(x − θ, 0). The Jacobian is
    diag(s) − s sᵀ/ρ with s the 0/1 indicator of the support (I − 11ᵀ/ρ on it).

    Reference: Duchi, Shalev-Shwartz, Singer & Chandra, "Efficient projections onto the
    ℓ1-ball for learning in high dimensions", ICML 2008; Condat, "Fast projection onto the
    simplex and the ℓ1 ball", Math. Program. 2016 (which surveys this and faster methods).

    Args:
        x: an array or pytree of arrays (flattened together; vmap to project rows).
        value: the sum, a positive scalar (default 1: the probability simplex).

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        print(projection.simplex(jnp.array([0.5, 2.0, -1.0])))     # [0. 1. 0.]
        ```
    """
    paths, leaves, treedef = _x_leaves(x, "simplex")
    flat, unravel = jax.flatten_util.ravel_pytree(jtu.tree_unflatten(treedef, leaves))
    _check_values("simplex", "value", value, positive=True)
    value = jnp.asarray(value, flat.dtype)
    if value.ndim != 0:
        raise ValueError(f"`simplex`: `value` must be a scalar; got shape {value.shape}.")
    y = _invalid_to_nan(_simplex_vector(flat, value), ~(value > 0))
    return unravel(y)


def l1_ball(x: Any, radius: float = 1.0) -> Any:
    """Projection onto the ℓ1 ball {‖y‖₁ ≤ radius} (all leaves of `x` together).

    x itself if it is inside, else sign(x) · P_simplex(|x|, radius) (Duchi et al. 2008, see
    [`simplex`][jaxopt2.projection.simplex]): O(n log n).

    Args:
        x: an array or pytree of arrays.
        radius: a positive scalar.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        print(projection.l1_ball(jnp.array([3.0, -2.0]), 3.0))     # [ 2. -1.]
        ```
    """
    paths, leaves, treedef = _x_leaves(x, "l1_ball")
    flat, unravel = jax.flatten_util.ravel_pytree(jtu.tree_unflatten(treedef, leaves))
    radius = _check_radius("l1_ball", radius, flat.dtype)
    inside = jnp.sum(jnp.abs(flat)) <= radius
    y = jnp.where(inside, flat, jnp.sign(flat) * _simplex_vector(jnp.abs(flat), radius))
    return unravel(_invalid_to_nan(y, ~(radius > 0)))


def l2_ball(x: Any, radius: float = 1.0) -> Any:
    """Projection onto the Euclidean ball {‖y‖₂ ≤ radius} (all leaves together):
    x · radius / max(‖x‖₂, radius).

    Args:
        x: an array or pytree of arrays.
        radius: a positive scalar.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        print(projection.l2_ball(jnp.array([3.0, 4.0]), 1.0))      # [0.6 0.8]
        ```
    """
    paths, leaves, treedef = _x_leaves(x, "l2_ball")
    dtype = jnp.result_type(*leaves)
    radius = _check_radius("l2_ball", radius, dtype)
    sq = sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in leaves)
    # sqrt(max(‖x‖², r²)) rather than max(‖x‖, r): finite derivatives at x = 0.
    factor = radius / jnp.sqrt(jnp.maximum(sq, radius**2))
    factor = _invalid_to_nan(factor, ~(radius > 0))
    return jtu.tree_unflatten(treedef, [(factor * leaf).astype(leaf.dtype) for leaf in leaves])


def linf_ball(x: Any, radius: float = 1.0) -> Any:
    """Projection onto the ℓ∞ ball {‖y‖∞ ≤ radius}: clip(x, −radius, radius) entrywise.

    Args:
        x: a pytree of arrays.
        radius: a positive scalar.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        print(projection.linf_ball(jnp.array([3.0, -0.5]), 1.0))   # [1. -0.5]
        ```
    """
    paths, leaves, treedef = _x_leaves(x, "linf_ball")
    radius = _check_radius("linf_ball", radius, jnp.result_type(*leaves))
    out = [_invalid_to_nan(jnp.clip(leaf, -radius.astype(leaf.dtype), radius.astype(leaf.dtype)),
                           ~(radius > 0)) for leaf in leaves]
    return jtu.tree_unflatten(treedef, out)


def _normal(x, hyperparams, fname):
    if not (isinstance(hyperparams, (tuple, list)) and len(hyperparams) == 2):
        raise ValueError(f"`{fname}`: `hyperparams` must be a pair `(a, b)`: `a` a pytree like "
                         "`x`, `b` a scalar.")
    a, b = hyperparams
    paths, leaves, treedef = _x_leaves(x, fname)
    if jtu.tree_structure(a) != treedef:
        raise ValueError(f"`{fname}`: `a` must have the structure of `x` ({treedef}); got "
                         f"{jtu.tree_structure(a)}.")
    a_leaves = [_as_float(leaf) for leaf in jtu.tree_leaves(a)]
    for path, leaf, al in zip(paths, leaves, a_leaves, strict=True):
        if al.shape != leaf.shape:
            raise ValueError(f"`{fname}`: `a{jtu.keystr(path)}` has shape {al.shape}, `x"
                             f"{jtu.keystr(path)}` has shape {leaf.shape}; they must match.")
    b = jnp.asarray(b)
    if b.ndim != 0:
        raise ValueError(f"`{fname}`: `b` must be a scalar; got shape {b.shape} (for several "
                         "equations use `affine_set`).")
    aa = sum(jnp.sum(jnp.abs(al) ** 2) for al in a_leaves)
    if _is_concrete(aa):
        with jax.ensure_compile_time_eval():
            if not bool(aa > 0):
                raise ValueError(f"`{fname}`: the normal vector `a` is zero (or not finite); "
                                 "the set is empty or everything.")
    ax = sum(jnp.sum(al * leaf) for al, leaf in zip(a_leaves, leaves, strict=True))
    return leaves, a_leaves, treedef, ax - b, aa


def hyperplane(x: Any, hyperparams: tuple) -> Any:
    """Projection onto the hyperplane {aᵀy = b}: x − (aᵀx − b) a / ‖a‖².

    Args:
        x: a pytree of arrays.
        hyperparams: `(a, b)`: `a` a nonzero pytree like `x`, `b` a scalar; aᵀx sums over
            all leaves.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        print(projection.hyperplane(jnp.array([1.0, 1.0]), (jnp.array([1.0, 0.0]), 3.0)))
        # [3. 1.]
        ```
    """
    leaves, a_leaves, treedef, residual, aa = _normal(x, hyperparams, "hyperplane")
    t = residual / aa
    return jtu.tree_unflatten(treedef, [(leaf - t * al).astype(leaf.dtype)
                                        for leaf, al in zip(leaves, a_leaves, strict=True)])


def halfspace(x: Any, hyperparams: tuple) -> Any:
    """Projection onto the halfspace {aᵀy ≤ b}: x − max(aᵀx − b, 0) a / ‖a‖².

    Args:
        x: a pytree of arrays.
        hyperparams: `(a, b)`: `a` a nonzero pytree like `x`, `b` a scalar.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        print(projection.halfspace(jnp.array([5.0, 1.0]), (jnp.array([1.0, 0.0]), 3.0)))
        # [3. 1.]
        ```
    """
    leaves, a_leaves, treedef, residual, aa = _normal(x, hyperparams, "halfspace")
    t = jnp.maximum(residual, 0) / aa
    return jtu.tree_unflatten(treedef, [(leaf - t * al).astype(leaf.dtype)
                                        for leaf, al in zip(leaves, a_leaves, strict=True)])


def affine_set(x: jax.Array, hyperparams: tuple) -> jax.Array:
    """Projection onto the affine set {Ay = b}: the least-norm correction x − A⁺(Ax − b).

    Cost: one SVD of the m × n matrix A (through `jnp.linalg.pinv`), O(mn·min(m, n)), per
    call. A rank-deficient A is fine if b is in its range (redundant equations); otherwise the
    result is the projection onto {y : Ay is closest to b}. For many projections onto the same
    set, precompute `P = pinv(A)` and use `x - P @ (A @ x - b)`.

    Args:
        x: a vector of length n (vmap for a batch).
        hyperparams: `(A, b)`: A of shape (m, n), b of shape (m,).

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        A = jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]); b = jnp.array([1.0, 1.0])
        y = projection.affine_set(jnp.zeros(3), (A, b))
        print(y, A @ y)                                         # A y = b
        ```
    """
    if not (isinstance(hyperparams, (tuple, list)) and len(hyperparams) == 2):
        raise ValueError("`affine_set`: `hyperparams` must be a pair `(A, b)`.")
    A, b = hyperparams
    if not isinstance(x, (jax.Array, np.ndarray)) or x.ndim != 1:
        raise ValueError("`affine_set`: `x` must be a vector (a 1-d array); vmap over a batch, "
                         "or ravel a pytree with `jax.flatten_util.ravel_pytree`.")
    x = _as_float(x)
    A = jnp.asarray(A)
    b = jnp.asarray(b)
    if A.ndim != 2 or A.shape[1] != x.shape[0] or b.shape != (A.shape[0],):
        raise ValueError(f"`affine_set`: need A of shape (m, {x.shape[0]}) and b of shape "
                         f"(m,); got A {A.shape} and b {b.shape}.")
    dtype = x.dtype
    A, b = A.astype(dtype), b.astype(dtype)
    return x - jnp.linalg.pinv(A) @ (A @ x - b)


def psd(x: Any, hyperparams: Any = None) -> Any:
    """Projection onto the cone of symmetric positive semidefinite matrices (Frobenius norm):
    with (X + Xᵀ)/2 = V diag(λ) Vᵀ, P(X) = V diag(max(λ, 0)) Vᵀ.

    Cost: one symmetric eigendecomposition, O(n³). Derivatives are those of `jnp.linalg.eigh`:
    exact where the eigenvalues are distinct (generic inputs), undefined at repeated ones.

    Reference: Higham, "Computing a nearest symmetric positive semidefinite matrix", Linear
    Algebra Appl. 103 (1988).

    Args:
        x: a square matrix, a stack of them (..., n, n), or a pytree of those.
        hyperparams: ignored.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        print(projection.psd(jnp.array([[1.0, 0.0], [0.0, -2.0]])))  # [[1, 0], [0, 0]]
        ```
    """
    del hyperparams
    paths, leaves, treedef = _x_leaves(x, "psd")
    out = []
    for path, leaf in zip(paths, leaves, strict=True):
        if leaf.ndim < 2 or leaf.shape[-1] != leaf.shape[-2]:
            raise ValueError(f"`psd`: `x{jtu.keystr(path)}` has shape {leaf.shape}; it must "
                             "be a square matrix or a stack of them (..., n, n).")
        sym = 0.5 * (leaf + jnp.swapaxes(leaf, -1, -2))
        w, v = jnp.linalg.eigh(sym)
        out.append(((v * jnp.maximum(w, 0)[..., None, :]) @ jnp.swapaxes(v, -1, -2).conj())
                   .astype(leaf.dtype))
    return jtu.tree_unflatten(treedef, out)
