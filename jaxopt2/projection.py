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

from ._leafwise import as_float, check_values, clip, invalid_to_nan, is_concrete, like_x, x_leaves

__all__ = ["affine_set", "birkhoff", "box", "halfspace", "hyperplane", "l1_ball", "l2_ball",
           "linf_ball", "non_negative", "psd", "simplex"]


def _check_radius(fname: str, radius, dtype):
    check_values(fname, "radius", radius, positive=True)
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
    paths, leaves, treedef = x_leaves(x, "non_negative")
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
        coordinates (lower ≤ x ≤ upper, so 1 at a tie), and with respect to `lower`
        (`upper`) the mask of the coordinates clipped there.

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
    paths, leaves, treedef = x_leaves(x, "box")
    lowers = like_x(hyperparams[0], "lower", paths, leaves, treedef, "box")
    uppers = like_x(hyperparams[1], "upper", paths, leaves, treedef, "box")
    out = []
    for path, leaf, lo, hi in zip(paths, leaves, lowers, uppers, strict=True):
        name = jtu.keystr(path)
        for side, bound in (("lower", lo), ("upper", hi)):
            if bound is not None and is_concrete(bound):
                with jax.ensure_compile_time_eval():
                    if bool(jnp.any(jnp.isnan(bound))):
                        raise ValueError(f"`box`: `{side}{name}` contains NaN; use -inf/inf "
                                         "(or None) for an unbounded side.")
        if lo is not None and hi is not None and is_concrete((lo, hi)):
            with jax.ensure_compile_time_eval():
                if bool(jnp.any(lo > hi)):
                    raise ValueError(f"`box`: `lower{name}` > `upper{name}` at some entries; "
                                     "the box is empty. Swap or fix those bounds.")
        y = clip(leaf, None if lo is None else lo.astype(leaf.dtype),
                 None if hi is None else hi.astype(leaf.dtype))
        if lo is not None and hi is not None:
            y = invalid_to_nan(y, ~(lo <= hi))
        elif lo is not None or hi is not None:
            bound = lo if lo is not None else hi
            y = invalid_to_nan(y, jnp.isnan(bound))
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
    paths, leaves, treedef = x_leaves(x, "simplex")
    flat, unravel = jax.flatten_util.ravel_pytree(jtu.tree_unflatten(treedef, leaves))
    check_values("simplex", "value", value, positive=True)
    value = jnp.asarray(value, flat.dtype)
    if value.ndim != 0:
        raise ValueError(f"`simplex`: `value` must be a scalar; got shape {value.shape}.")
    y = invalid_to_nan(_simplex_vector(flat, value), ~(value > 0))
    return unravel(y)


def _ball(x, radius, fname):
    """x's leaves and treedef, and the radius checked and cast to their common dtype."""
    _, leaves, treedef = x_leaves(x, fname)
    return leaves, treedef, _check_radius(fname, radius, jnp.result_type(*leaves))


def l1_ball(x: Any, radius: float = 1.0) -> Any:
    """Projection onto the ℓ1 ball {‖y‖₁ ≤ radius} (all leaves of `x` together).

    x itself if it is inside, else sign(x) · P_simplex(|x|, radius) (Duchi et al. 2008, see
    [`simplex`][jaxopt2.projection.simplex]): O(n log n). Outside the ball the result is sparse:
    the entries with |xᵢ| at most the simplex threshold become 0.

    Args:
        x: an array or pytree of arrays, projected as one vector.
        radius: a positive scalar.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        x = {"a": jnp.array([3.0, 0.5]), "b": jnp.array(-2.0)}
        print(projection.l1_ball(x, 3.0))          # a: [2. 0.], b: -1.
        ```
    """
    leaves, treedef, radius = _ball(x, radius, "l1_ball")
    flat, unravel = jax.flatten_util.ravel_pytree(jtu.tree_unflatten(treedef, leaves))
    inside = jnp.sum(jnp.abs(flat)) <= radius
    y = jnp.where(inside, flat, jnp.sign(flat) * _simplex_vector(jnp.abs(flat), radius))
    return unravel(invalid_to_nan(y, ~(radius > 0)))


def l2_ball(x: Any, radius: float = 1.0) -> Any:
    """Projection onto the Euclidean ball {‖y‖₂ ≤ radius} (all leaves together):
    x · radius / max(‖x‖₂, radius). Outside the ball its Jacobian is
    (radius/‖x‖)(I − x xᵀ/‖x‖²); inside, the identity.

    Args:
        x: an array or pytree of arrays.
        radius: a positive scalar.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from jaxopt2 import projection
        x = jnp.array([3.0, 4.0])
        print(projection.l2_ball(x, 1.0))                                  # [0.6 0.8]
        print(jax.jacobian(lambda v: projection.l2_ball(v, 1.0))(x))
        # [[ 0.128 -0.096] [-0.096  0.072]]
        ```
    """
    leaves, treedef, radius = _ball(x, radius, "l2_ball")
    sq = sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in leaves)
    # sqrt(max(‖x‖², r²)) rather than max(‖x‖, r): finite derivatives at x = 0.
    factor = radius / jnp.sqrt(jnp.maximum(sq, radius**2))
    factor = invalid_to_nan(factor, ~(radius > 0))
    return jtu.tree_unflatten(treedef, [(factor * leaf).astype(leaf.dtype) for leaf in leaves])


def linf_ball(x: Any, radius: float = 1.0) -> Any:
    """Projection onto the ℓ∞ ball {‖y‖∞ ≤ radius}: clip(x, −radius, radius) entrywise, with
    the derivative of [`box`][jaxopt2.projection.box], the 0/1 mask of |xᵢ| ≤ radius.

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
    leaves, treedef, radius = _ball(x, radius, "linf_ball")
    out = [invalid_to_nan(clip(leaf, -radius.astype(leaf.dtype), radius.astype(leaf.dtype)),
                          ~(radius > 0)) for leaf in leaves]
    return jtu.tree_unflatten(treedef, out)


def _normal(x, hyperparams, fname):
    if not (isinstance(hyperparams, (tuple, list)) and len(hyperparams) == 2):
        raise ValueError(f"`{fname}`: `hyperparams` must be a pair `(a, b)`: `a` a pytree like "
                         "`x`, `b` a scalar.")
    a, b = hyperparams
    paths, leaves, treedef = x_leaves(x, fname)
    if jtu.tree_structure(a) != treedef:
        raise ValueError(f"`{fname}`: `a` must have the structure of `x` ({treedef}); got "
                         f"{jtu.tree_structure(a)}.")
    a_leaves = [as_float(leaf) for leaf in jtu.tree_leaves(a)]
    for path, leaf, al in zip(paths, leaves, a_leaves, strict=True):
        if al.shape != leaf.shape:
            raise ValueError(f"`{fname}`: `a{jtu.keystr(path)}` has shape {al.shape}, `x"
                             f"{jtu.keystr(path)}` has shape {leaf.shape}; they must match.")
    b = jnp.asarray(b)
    if b.ndim != 0:
        raise ValueError(f"`{fname}`: `b` must be a scalar; got shape {b.shape} (for several "
                         "equations use `affine_set`).")
    aa = sum(jnp.sum(jnp.abs(al) ** 2) for al in a_leaves)
    if is_concrete(aa):
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
    x = as_float(x)
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
    paths, leaves, treedef = x_leaves(x, "psd")
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


def birkhoff(x: jax.Array, epsilon: float = 1.0, *, rtol: float | None = None,
             max_steps: int = 1000) -> jax.Array:
    """Entropic projection onto the Birkhoff polytope (doubly stochastic matrices, rows and
    columns summing to 1): the matrix P ≥ 0 with P1 = 1, Pᵀ1 = 1 closest to exp(x/ε) in KL,

        P = argmax_{P ∈ B} <P, x> − ε Σ P(log P − 1),

    i.e. Sinkhorn's normalisation of exp(x/ε) (as in Gumbel-Sinkhorn), computed by
    [`jaxopt2.ot.sinkhorn`][jaxopt2.ot.sinkhorn] in the log domain with cost −x. Not a Euclidean
    projection (unlike the rest of this module): as ε → 0 it tends to the permutation matrix
    that maximises <P, x> (the assignment problem). Differentiable with respect to `x` and ε
    by implicit differentiation; under `jit`/`vmap` a problem that does not converge within
    `max_steps` returns NaN (so a solver using it reports a non-finite status).

    Reference: Sinkhorn, "A relationship between arbitrary positive matrices and doubly
    stochastic matrices", Ann. Math. Statist. 35 (1964); Mena et al., "Learning Latent
    Permutations with Gumbel-Sinkhorn Networks", ICLR 2018.

    Args:
        x: a square (n, n) matrix of scores.
        epsilon: the temperature ε > 0 (in the units of `x`).
        rtol: tolerance on the L1 error of the row and column sums, relative to n
            (default 1e-6 in float64, 1e-4 in float32).
        max_steps: Sinkhorn's iteration budget.

    Example:
        ```python
        import jax.numpy as jnp
        from jaxopt2 import projection
        P = projection.birkhoff(jnp.array([[2.0, 0.0], [0.0, 1.0]]), epsilon=0.5)
        print(P.sum(0), P.sum(1))  # [1. 1.] [1. 1.]
        ```
    """
    from .ot import sinkhorn  # ot imports the shared modules this package's __init__ loads

    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"`birkhoff`: `x` has shape {x.shape}; it must be a square (n, n) "
                         "matrix (jax.vmap it for a stack).")
    x = as_float(x)
    n = x.shape[0]
    ones = jnp.ones((n,), x.dtype)
    out = sinkhorn(-x, ones, ones, epsilon, rtol=rtol, max_steps=max_steps, throw=False)
    return jnp.where(out.success, out.plan, jnp.asarray(jnp.nan, x.dtype))
