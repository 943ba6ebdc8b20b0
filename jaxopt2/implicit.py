"""Implicit differentiation for your own solvers, and optimality conditions to use with it.

Every jaxopt2 front door is already differentiable (`ImplicitAdjoint`). These tools give the
same derivatives to any solver, sharing one implementation with the front doors:

- `custom_root(optimality_fn)`: a decorator making `solver(init, *args)` differentiable in
  `args` by the implicit function theorem on `optimality_fn(root, *args) = 0`;
- `custom_fixed_point(fixed_point_fn)`: the same for `fixed_point_fn(y, *args) = y`;
- `root_vjp`, `root_jvp`: the vector-Jacobian and Jacobian-vector products of a root with
  respect to `args`, as plain functions;
- `kkt_conditions(fun, eq_fun)`: the KKT conditions of min f(x) s.t. h(x) = 0;
- `projected_gradient_map`, `proximal_gradient_map`: fixed-point maps whose fixed points are
  the solutions of constrained / composite problems.

```python
import jax, jax.numpy as jnp
from jaxopt2 import implicit

@implicit.custom_root(lambda x, a: x**3 - a)     # x* = a^(1/3)
def cube_root(x0, a):
    return jnp.cbrt(a)                          # any solver, even a non-differentiable one

jax.grad(cube_root, argnums=1)(1.0, 8.0)        # 1/12
```
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._adjoint import (
    ImplicitAdjoint,
    Neumann,
    UnrolledAdjoint,
    _check_square,
    implicit_tangent,
)
from ._front import guard_derivatives
from ._results import RESULTS
from ._stopping import x_scale
from ._tree import result_dtype, tree_all_finite, tree_inf_norm, tree_sub

__all__ = [
    "ImplicitAdjoint",
    "Neumann",
    "UnrolledAdjoint",
    "custom_fixed_point",
    "custom_root",
    "kkt_conditions",
    "projected_gradient_map",
    "proximal_gradient_map",
    "root_jvp",
    "root_vjp",
]


def custom_root(optimality_fn: Callable, *, adjoint: ImplicitAdjoint = ImplicitAdjoint(),
                has_aux: bool = False, symmetric: bool = False):
    """Decorate `solver(init, *args) -> root` (or `(root, aux)` with `has_aux=True`) so that
    the root is differentiable in `args` by the implicit function theorem on
    `optimality_fn(root, *args) = 0`, in forward and reverse mode and under `vmap`.

    The solver itself is never differentiated (it may be a while loop, a call to SciPy
    through `pure_callback`, a closed form). `init` gets no derivative. `optimality_fn` must
    map `root` to a pytree with root's structure (a square system). `symmetric=True` says
    ∂ₓF is symmetric (e.g. F is a gradient), which lets the default adjoint solver use CG.
    """

    def decorator(solver):
        @functools.wraps(solver)
        def wrapped(init, *args):
            def optimality(root, args):
                return optimality_fn(root, *args)

            def primal(init, args):
                out = solver(init, *args)
                root, aux = out if has_aux else (out, None)
                return root, (aux, _root_status(optimality, root, args))

            tags = _tags(symmetric)
            root, (aux, status) = adjoint.apply(primal, optimality, init, tuple(args), tags)
            root = guard_derivatives(
                root, status, throw=adjoint.throw, hint=_ROOT_HINT,
                unconverged=getattr(adjoint, "differentiate_unconverged", False))
            return (root, aux) if has_aux else root

        return wrapped

    return decorator


def custom_fixed_point(fixed_point_fn: Callable, *,
                       adjoint: ImplicitAdjoint = ImplicitAdjoint(), has_aux: bool = False):
    """Like `custom_root`, for a solver of y = `fixed_point_fn(y, *args)`: the optimality
    condition is fixed_point_fn(y, *args) − y = 0."""

    def optimality(y, *args):
        out = fixed_point_fn(y, *args)
        shapes = lambda t: jtu.tree_map(lambda x: jnp.shape(x), t)  # noqa: E731
        if jtu.tree_structure(out) != jtu.tree_structure(y) or shapes(out) != shapes(y):
            raise ValueError(
                "custom_fixed_point: fixed_point_fn(y, *args) must return a pytree shaped "
                f"like y (a fixed point y = T(y) needs T to map y's space to itself); got "
                f"{shapes(out)} for y of shapes {shapes(y)}.")
        return tree_sub(out, y)

    return custom_root(optimality, adjoint=adjoint, has_aux=has_aux)


_ROOT_HINT = ("Pass adjoint=ImplicitAdjoint(throw=False) to get NaN derivatives instead, or "
              "differentiate_unconverged=True to differentiate the returned point anyway.")


def _root_status(optimality, root, args) -> RESULTS:
    """`successful` when `root` solves optimality(root, args) = 0 to working precision:
    ‖F‖ ≤ √eps·‖J‖·s(root), i.e. a Newton step from root is below √eps relative to
    s(root) = max(‖root‖∞, 1). ‖J‖ is estimated by two Jacobian products (along the
    all-ones direction and along F), so F's own scale decides, not an absolute threshold. A
    point where J is singular and F is not tiny (y² − a at a = 0, solved to 0.008) fails."""
    _check_square(optimality, root, args)  # before anything else: its message says what to fix
    F, jvp = jax.linearize(lambda x: optimality(x, args), root)
    f_norm = tree_inf_norm(F)
    ones = jtu.tree_map(jnp.ones_like, root)
    unit_f = jtu.tree_map(lambda f, x: (f / jnp.where(f_norm > 0, f_norm, 1)).astype(x.dtype),
                          F, root)
    j_norm = jnp.maximum(tree_inf_norm(jvp(ones)), tree_inf_norm(jvp(unit_f)))
    eps = float(jnp.finfo(result_dtype(root)).eps)
    solved = (f_norm <= eps**0.5 * j_norm * x_scale(root)) & tree_all_finite(F)
    return RESULTS.where(solved, RESULTS.successful, RESULTS.not_a_root)


def _tags(symmetric: bool):
    import lineax as lx

    return (lx.symmetric_tag,) if symmetric else ()


def root_jvp(optimality_fn: Callable, root, args: tuple, tangents: tuple, *,
             adjoint: ImplicitAdjoint = ImplicitAdjoint(), symmetric: bool = False):
    """The tangent of `root` along `tangents` of `args`: −(∂ₓF)⁻¹ ∂_argsF · tangents, with
    F = `optimality_fn(root, *args)`. `tangents` has the structure of `args`."""
    def optimality(x, a):
        return optimality_fn(x, *a)

    return implicit_tangent(optimality, root, tuple(args), tuple(tangents), _tags(symmetric),
                            adjoint)


def root_vjp(optimality_fn: Callable, root, args: tuple, cotangent, *,
             adjoint: ImplicitAdjoint = ImplicitAdjoint(), symmetric: bool = False):
    """The cotangent of `args` (a tuple like `args`) given the cotangent of `root`:
    −(∂_argsF)ᵀ (∂ₓF)⁻ᵀ cotangent, by transposing `root_jvp` (one adjoint solve)."""
    args = tuple(args)

    def along(tangents):
        return root_jvp(optimality_fn, root, args, tangents, adjoint=adjoint,
                        symmetric=symmetric)

    zeros = jtu.tree_map(jnp.zeros_like, args)
    return jax.linear_transpose(along, zeros)(cotangent)[0]


def kkt_conditions(fun: Callable, eq_fun: Callable) -> Callable:
    """The KKT conditions of min_x f(x, fun_args) s.t. h(x, eq_args) = 0, as an optimality
    function of z = (x, μ) for `custom_root`:

        F((x, μ), fun_args, eq_args) = (∇ₓf(x) + J_h(x)ᵀ μ,  h(x)).

    A solver returning (x*, μ*) decorated with `custom_root(kkt_conditions(f, h))` is then
    differentiable in `fun_args` and `eq_args`. ∂F is symmetric but indefinite, so the default
    adjoint solver is GMRES.
    """

    def optimality(z, fun_args, eq_args):
        x, mu = z
        grad = jax.grad(fun)(x, fun_args)
        h, vjp = jax.vjp(lambda x: eq_fun(x, eq_args), x)
        return jtu.tree_map(jnp.add, grad, vjp(mu)[0]), h

    return optimality


def projected_gradient_map(fun: Callable, projection: Callable, stepsize: float = 1.0):
    """T(x, fun_args, proj_args) = P(x − η ∇f(x, fun_args), proj_args): its fixed points are
    the solutions of min f over the set P projects onto (for convex f and set). Use with
    `custom_fixed_point` to differentiate a constrained solution, e.g. non-negative least
    squares or a simplex-constrained problem; η must be positive (any η > 0 gives the same
    fixed points; derivatives are exact where P is differentiable at the solution)."""

    def T(x, fun_args, proj_args):
        g = jax.grad(fun)(x, fun_args)
        return projection(jtu.tree_map(lambda a, b: a - stepsize * b, x, g), proj_args)

    return T


def proximal_gradient_map(fun: Callable, prox: Callable, stepsize: float = 1.0):
    """T(x, fun_args, prox_args) = prox(x − η ∇f(x, fun_args), prox_args, η): its fixed points
    solve min f(x) + g(x) for the g whose proximal operator is `prox(v, prox_args, η)` (e.g.
    soft thresholding for the lasso). Use with `custom_fixed_point`."""

    def T(x, fun_args, prox_args):
        g = jax.grad(fun)(x, fun_args)
        return prox(jtu.tree_map(lambda a, b: a - stepsize * b, x, g), prox_args, stepsize)

    return T
