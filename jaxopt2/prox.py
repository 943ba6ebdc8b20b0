"""Proximal operators: prox_{s·h}(x) = argmin_y h(y) + ‖y − x‖² / (2s).

Every operator has jaxopt's signature `prox(x, hyperparams, scale=1.0)` (jaxopt's `scaling` is
our `scale`): `x` a pytree, `hyperparams` the strength(s) of h, `scale` = s > 0 the step size
of a proximal-gradient step. So they plug into `minimize(..., prox=jaxopt2.prox.l1,
prox_args=lam)`, into [`implicit.proximal_gradient_map`][jaxopt2.implicit.proximal_gradient_map],
and into your own code; a function of yours with the same signature works everywhere they do.
All are exact closed forms, pure, and differentiable (almost everywhere) with respect to `x`
and to `hyperparams` under `jit`, `vmap` and `jax.grad`; leaves keep their dtypes.

| jaxopt | jaxopt2 (`prox.`) | h(y) |
|---|---|---|
| `prox_none` | `lambda x, hp, scale: x` | 0 |
| `prox_lasso(x, l1reg, scaling)` | `l1(x, strength, scale)` | Σ λᵢ\\|yᵢ\\| |
| `prox_non_negative_lasso` | `non_negative_l1` | Σ λᵢyᵢ + ι(y ≥ 0) |
| `prox_elastic_net(x, (lam, gamma))` | `elastic_net(x, (lam, lam * gamma))` | λ₁‖y‖₁ + λ₂‖y‖²/2 |
| `prox_group_lasso` | `l2` | λ‖y‖₂ (whole pytree) |
| `vmap(prox_group_lasso)` | `group_lasso(x, strength, scale, axis=...)` | Σ_g λ_g‖y_g‖₂ |
| `prox_ridge` | `ridge` | λ‖y‖²/2 |
| `prox_non_negative_ridge` | `projection.non_negative(ridge(x, λ, s))` | λ‖y‖²/2 + ι(y ≥ 0) |
| (none) | `nuclear(X, strength, scale)` | λ‖Y‖_* (sum of singular values) |
| `make_prox_from_projection(p)` | `indicator(p)` | ι_C(y) |
| (none) | `conjugate(prox)` | h*(y), the convex conjugate |

Strengths are non-negative: a concrete negative (or NaN) strength or scale raises a
`ValueError`; a traced one (inside `jit`/`vmap`) makes the result NaN where it is invalid, so a
solver reports a non-finite status rather than a wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import jax.tree_util as jtu

from ._leafwise import check_values, invalid_to_nan, like_x, x_leaves

__all__ = ["conjugate", "elastic_net", "group_lasso", "indicator", "l1", "l2", "non_negative_l1",
           "nuclear", "ridge"]


def _group_norms_sq(leaf, axis):
    return jnp.sum(jnp.abs(leaf) ** 2, axis=axis, keepdims=True)


def _thresholds(fname, x, strength, scale, name="strength", *, groups=False, axis=None):
    """x's leaves and, per leaf, the threshold scale·strength (None where the strength is):
    entrywise, or with `groups` one per group along `axis`, laid out like the group norms with
    dims kept (so it broadcasts per group)."""
    check_values(fname, name, strength)
    check_values(fname, "scale", scale)
    paths, leaves, treedef = x_leaves(x, fname)
    scale = jnp.asarray(scale)
    if scale.ndim != 0:
        raise ValueError(f"`{fname}`: `scale` must be a scalar; got shape {scale.shape}.")
    like = [_group_norms_sq(leaf, axis) for leaf in leaves] if groups else leaves
    strengths = like_x(strength, name, paths, like, treedef, fname, groups=groups, axis=axis)
    ts = [None if s is None else (scale * s).astype(leaf.dtype)
          for leaf, s in zip(leaves, strengths, strict=True)]
    return paths, leaves, treedef, ts, scale


def _soft(u, t):
    return jnp.sign(u) * jnp.maximum(jnp.abs(u) - t, 0)


def l1(x: Any, strength: Any, scale: float = 1.0) -> Any:
    """Soft thresholding, the prox of h(y) = Σᵢ λᵢ|yᵢ|: sign(x)·max(|x| − sλ, 0).

    Args:
        x: a pytree of arrays.
        strength: λ ≥ 0, a scalar or a pytree like `x` (leaves: scalars, arrays broadcasting
            to the leaf, or None for an unpenalised leaf).
        scale: s ≥ 0.

    Reference: Donoho & Johnstone (1994); Parikh & Boyd, "Proximal algorithms" (2014), §6.5.2.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import prox
        print(prox.l1(jnp.array([2.0, -0.3, -1.5]), 0.5))     # [ 1.5 -0.  -1. ]
        ```
    """
    _, leaves, treedef, ts, scale = _thresholds("l1", x, strength, scale)
    out = [leaf if t is None else invalid_to_nan(_soft(leaf, t), ~(t >= 0))
           for leaf, t in zip(leaves, ts, strict=True)]
    return jtu.tree_unflatten(treedef, [invalid_to_nan(y, ~(scale >= 0)) for y in out])


def non_negative_l1(x: Any, strength: Any, scale: float = 1.0) -> Any:
    """The prox of h(y) = Σᵢ λᵢyᵢ + ι(y ≥ 0) (the l1 norm on the non-negative orthant):
    max(x − sλ, 0).

    Args:
        x: a pytree of arrays.
        strength: λ ≥ 0, a scalar or a pytree like `x` (a None leaf: λ = 0, still y ≥ 0).
        scale: s ≥ 0.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import prox
        print(prox.non_negative_l1(jnp.array([2.0, -0.3, 0.4]), 0.5))   # [1.5 0.  0. ]
        ```
    """
    _, leaves, treedef, ts, scale = _thresholds("non_negative_l1", x, strength, scale)
    out = [jnp.maximum(leaf if t is None else leaf - t, 0)
           for leaf, t in zip(leaves, ts, strict=True)]
    out = [y if t is None else invalid_to_nan(y, ~(t >= 0)) for y, t in zip(out, ts, strict=True)]
    return jtu.tree_unflatten(treedef, [invalid_to_nan(y, ~(scale >= 0)) for y in out])


def ridge(x: Any, strength: Any, scale: float = 1.0) -> Any:
    """The prox of h(y) = Σᵢ λᵢyᵢ²/2 (squared l2, ridge): x / (1 + sλ).

    Args:
        x: a pytree of arrays.
        strength: λ ≥ 0, a scalar or a pytree like `x` (None leaf: unpenalised).
        scale: s ≥ 0.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import prox
        print(prox.ridge(jnp.array([2.0, -1.0]), 1.0))          # [ 1.  -0.5]
        ```
    """
    _, leaves, treedef, ts, scale = _thresholds("ridge", x, strength, scale)
    out = [leaf if t is None else invalid_to_nan(leaf / (1 + t), ~(t >= 0))
           for leaf, t in zip(leaves, ts, strict=True)]
    return jtu.tree_unflatten(treedef, [invalid_to_nan(y, ~(scale >= 0)) for y in out])


def elastic_net(x: Any, hyperparams: tuple, scale: float = 1.0) -> Any:
    """The prox of h(y) = λ₁‖y‖₁ + λ₂‖y‖²/2: soft(x, sλ₁) / (1 + sλ₂).

    jaxopt's `prox_elastic_net(x, (lam, gamma))` penalises lam·(‖y‖₁ + gamma‖y‖²/2): pass
    `(lam, lam * gamma)` here.

    Args:
        x: a pytree of arrays.
        hyperparams: `(l1, l2)`, each ≥ 0, a scalar or a pytree like `x`.
        scale: s ≥ 0.

    Reference: Zou & Hastie, "Regularization and variable selection via the elastic net",
    JRSS B (2005).

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import prox
        print(prox.elastic_net(jnp.array([2.0, -0.3]), (0.5, 1.0)))   # [0.75 -0.  ]
        ```
    """
    if not (isinstance(hyperparams, (tuple, list)) and len(hyperparams) == 2):
        raise ValueError("`elastic_net`: `hyperparams` must be a pair `(l1, l2)` of "
                         "strengths (scalars or pytrees like `x`).")
    return ridge(l1(x, hyperparams[0], scale), hyperparams[1], scale)


def _block_factor(sq, t):
    """max(1 − t/‖x‖, 0) from sq = ‖x‖², with finite derivatives at x = 0 and at t = 0."""
    positive = t > 0
    safe = jnp.where(positive, jnp.maximum(sq, t**2), 1.0)
    return jnp.where(positive, 1 - jnp.where(positive, t, 0.0) / jnp.sqrt(safe), 1.0)


def l2(x: Any, strength: float, scale: float = 1.0) -> Any:
    """Block soft thresholding, the prox of h(y) = λ‖y‖₂ (the norm of the whole pytree, not
    squared): x · max(1 − sλ/‖x‖₂, 0).

    Args:
        x: a pytree of arrays (one block; see [`group_lasso`][jaxopt2.prox.group_lasso] for
            several).
        strength: λ ≥ 0, a scalar.
        scale: s ≥ 0.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import prox
        print(prox.l2(jnp.array([3.0, 4.0]), 2.5))              # [1.5 2. ]
        ```
    """
    check_values("l2", "strength", strength)
    check_values("l2", "scale", scale)
    paths, leaves, treedef = x_leaves(x, "l2")
    dtype = jnp.result_type(*leaves)
    t = (jnp.asarray(scale) * jnp.asarray(strength)).astype(dtype)
    if t.ndim != 0:
        raise ValueError("`l2`: `strength` and `scale` must be scalars; for one strength per "
                         "group use `group_lasso`.")
    sq = sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in leaves)
    factor = invalid_to_nan(_block_factor(sq, t), ~(t >= 0))
    return jtu.tree_unflatten(treedef, [(factor * leaf).astype(leaf.dtype) for leaf in leaves])


def group_lasso(x: Any, strength: Any, scale: float = 1.0, *, axis=None) -> Any:
    """The prox of the group lasso h(y) = Σ_g λ_g‖y_g‖₂: block soft thresholding of each group,
    y_g = x_g · max(1 − sλ_g/‖x_g‖₂, 0).

    The groups: with `axis=None` (default) each leaf of `x` is one group; with `axis` an int
    or tuple of ints, each leaf is split into the slices along the other axes, i.e. the norm is
    taken over `axis`: `axis=-1` makes each row of a matrix a group (e.g. a feature across
    tasks in multi-task regression). Pass `axis` with `functools.partial(prox.group_lasso,
    axis=-1)` to keep the `prox(x, hyperparams, scale)` signature.

    Args:
        x: a pytree of arrays.
        strength: λ ≥ 0: a scalar, or a pytree like `x` whose leaves are scalars, None
            (unpenalised), or arrays with one entry per group (the leaf's shape with `axis`
            removed, or kept as size 1).
        scale: s ≥ 0.

    Reference: Yuan & Lin, "Model selection and estimation in regression with grouped
    variables", JRSS B (2006).

    Example:
        ```python
        import functools, jax.numpy as jnp
        from jaxopt2 import prox
        W = jnp.array([[3.0, 4.0], [0.3, 0.4]])
        print(functools.partial(prox.group_lasso, axis=-1)(W, 1.0))  # [[2.4 3.2] [0. 0.]]
        ```
    """
    _, leaves, treedef, ts, scale = _thresholds("group_lasso", x, strength, scale, groups=True,
                                                axis=axis)
    out = []
    for leaf, t in zip(leaves, ts, strict=True):
        if t is None:
            out.append(leaf)
            continue
        factor = invalid_to_nan(_block_factor(_group_norms_sq(leaf, axis), t), ~(t >= 0))
        out.append((factor * leaf).astype(leaf.dtype))
    return jtu.tree_unflatten(treedef, out)


def nuclear(x: Any, strength: Any, scale: float = 1.0) -> Any:
    """Singular value thresholding, the prox of h(Y) = λ‖Y‖_* (the sum of singular values):
    with X = U diag(σ) Vᵀ, prox(X) = U diag(max(σ − sλ, 0)) Vᵀ.

    Cost: one thin SVD per matrix, O(mn·min(m, n)). Derivatives are those of
    `jnp.linalg.svd`: exact where X's singular values are distinct and nonzero (generic
    inputs).

    Reference: Cai, Candès & Shen, "A singular value thresholding algorithm for matrix
    completion", SIAM J. Optim. (2010).

    Args:
        x: a matrix, a stack of matrices (..., m, n), or a pytree of those.
        strength: λ ≥ 0, a scalar or a pytree like `x` with scalar leaves.
        scale: s ≥ 0.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import prox
        print(prox.nuclear(jnp.diag(jnp.array([3.0, 0.5])), 1.0))   # diag(2, 0)
        ```
    """
    paths, leaves, treedef, ts, scale = _thresholds("nuclear", x, strength, scale)
    out = []
    for path, leaf, t in zip(paths, leaves, ts, strict=True):
        if leaf.ndim < 2:
            raise ValueError(f"`nuclear`: `x{jtu.keystr(path)}` has shape {leaf.shape}; it "
                             "must be a matrix or a stack of matrices (..., m, n).")
        if t is None:
            out.append(leaf)
            continue
        if t.ndim:
            raise ValueError(f"`nuclear`: `strength{jtu.keystr(path)}` must be a scalar (one "
                             "strength per matrix); vmap for one per matrix of a stack.")
        u, sigma, vh = jnp.linalg.svd(leaf, full_matrices=False)
        y = (u * jnp.maximum(sigma - t, 0)[..., None, :]) @ vh
        out.append(invalid_to_nan(y.astype(leaf.dtype), ~(t >= 0)))
    return jtu.tree_unflatten(treedef, [invalid_to_nan(y, ~(scale >= 0)) for y in out])


def indicator(projection: Callable) -> Callable:
    """The prox of the indicator ι_C of a convex set C (0 on C, +∞ off it), from its
    Euclidean projection: prox_{s·ι_C}(x) = P_C(x) for every s > 0.

    Args:
        projection: `projection(x, hyperparams) -> y`, e.g. any function of
            [`jaxopt2.projection`][jaxopt2.projection].

    Returns:
        `prox(x, hyperparams=None, scale=1.0)`; the hyperparams are the projection's (None
        calls `projection(x)`, with its defaults), and `scale` is ignored.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection, prox
        box = prox.indicator(projection.box)
        print(box(jnp.array([-2.0, 0.5]), (0.0, 1.0), 0.1))     # [0.  0.5]
        ```
    """
    if not callable(projection):
        raise TypeError(f"`indicator`: `projection` must be a function `projection(x, "
                        f"hyperparams)`; got {type(projection).__name__}.")

    def prox(x, hyperparams=None, scale=1.0):
        del scale  # the indicator is scale-invariant: s·ι_C = ι_C
        return projection(x) if hyperparams is None else projection(x, hyperparams)

    return prox


def conjugate(prox: Callable) -> Callable:
    """The prox of the convex conjugate h*(y) = sup_z ⟨y, z⟩ − h(z), from the prox of h, by
    Moreau's decomposition x = prox_{s·h*}(x) + s·prox_{h/s}(x/s):

    prox_{s·h*}(x) = x − s · prox(x / s, hyperparams, 1 / s).

    E.g. `conjugate(prox.l1)` is the projection onto the ℓ∞ ball of radius λ (the conjugate of
    a norm is the indicator of the dual-norm ball), and `conjugate(prox.l2)` the projection
    onto the ℓ2 ball. Used by primal-dual methods (Chambolle–Pock) for the dual step.

    Reference: Moreau, "Proximité et dualité dans un espace hilbertien", Bull. SMF (1965);
    Parikh & Boyd, "Proximal algorithms" (2014), §2.5.

    Args:
        prox: `prox(x, hyperparams, scale) -> y`, the prox of h.

    Returns:
        `prox_conj(x, hyperparams=None, scale=1.0)`; `scale` must be positive.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import prox
        dual = prox.conjugate(prox.l1)
        print(dual(jnp.array([2.0, -0.3, -1.5]), 0.5, 2.0))    # clip to [-0.5, 0.5]
        ```
    """
    if not callable(prox):
        raise TypeError(f"`conjugate`: `prox` must be a function `prox(x, hyperparams, "
                        f"scale)`; got {type(prox).__name__}.")

    def prox_conjugate(x, hyperparams=None, scale=1.0):
        check_values("conjugate", "scale", scale, positive=True)
        scale = jnp.asarray(scale)
        inner = prox(jtu.tree_map(lambda leaf: leaf / scale.astype(jnp.result_type(leaf)), x),
                     hyperparams, 1 / scale)
        return jtu.tree_map(
            lambda a, b: invalid_to_nan((a - scale * b).astype(jnp.result_type(a)),
                                         ~(scale > 0)), x, inner)

    return prox_conjugate
