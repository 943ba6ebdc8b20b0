"""Bounds and proximal terms: what `minimize(..., bounds=, prox=)` hands a constrained solver.

A composite problem is

    min_x F(x) = f(x, args) + h(x, prox_args),

with f smooth and h closed and convex, known only through its proximal operator

    prox_{s·h}(v) = argmin_x h(x) + ‖x − v‖²/(2s)        (`prox(v, prox_args, s)`, jaxopt's
                                                          signature, so `jaxopt2.prox.l1` and
                                                          users' own operators both fit).

Bounds lower ≤ x ≤ upper are the case h = indicator of the box, whose prox is the projection
clip(v, lower, upper) for every s. `Composite` holds either (or both, for the solvers that
say so): the front door builds it and places it in the solver's own field `constraint` with
`eqx.tree_at` inside the traced solve, so `prox_args`, `lower` and `upper` stay differentiable
inputs.

**Stationarity.** x* solves the problem (f convex, or locally) exactly when it is a fixed point
of the proximal-gradient map, i.e. when the gradient mapping

    G_s(x) = (x − prox_{s·h}(x − s∇f(x))) / s

vanishes (for bounds: the projected gradient, ∇f on the free variables, and on a variable at
a bound the part of ∇f that points out of the box). G_s measures a gradient in ∇f's own
units, so the shared stopping rule (`_stopping.MinimizerRule`) judges a constrained solver by
G_s where it judges an unconstrained one by ∇f (`rule_view`), with s the solver's own step
scale (`stationarity_scale(state)`, ≈ 1/L for a Lipschitz estimate L of ∇f): then ‖G_s‖/L
estimates the distance to the solution, as ‖∇f‖/L does without constraints (Beck, First-Order
Methods in Optimization, SIAM 2017, §10.3).

**Implicit derivatives.** The same fixed point, x − prox_{ηh}(x − η∇f(x, args)) = 0 with any
fixed η > 0, is the optimality condition the adjoint differentiates (`optimality`): its
Jacobian is I − D(I − η∇²f) with D the Jacobian of the prox; for bounds D is the 0/1 mask of
the free variables, so the derivative reduces to the free variables by itself, and for the
lasso (soft thresholding) to the support. η changes only the conditioning of the adjoint
system, never its solution.

The solver interface (for the authors of constrained solvers):

- class attributes `supports_bounds` / `supports_prox` (`ClassVar[bool]`, False on
  `AbstractMinimizer`), and `supports_bounds_with_prox` for the rare solver that takes both;
- a field `constraint: Composite | None = None`, filled by the front door;
- optionally a method `stationarity_scale(state) -> scalar` (the s of G_s for the stopping
  rule; 1 if absent).

`Composite.apply(x, s)` is the prox of the whole nonsmooth part (the user's `prox`, then the box
projection); the field `prox` is the user's callable itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._base import Iterate, roundoff
from ._leafwise import clip
from ._linesearch import LINE_SEARCH_ROUNDOFF, projected_backtracking
from ._stopping import x_scale
from ._tree import ravel, tree_axpy, tree_inf_norm, tree_norm, tree_sub


class Composite(eqx.Module):
    """The nonsmooth part h of min f(x) + h(x): a proximal operator with its hyperparameters,
    and/or the box lower ≤ x ≤ upper (module docstring).

    - `prox`: `prox(v, prox_args, scale) -> x` (static), or None;
    - `prox_args`: its hyperparameters, a pytree (differentiable);
    - `lower`, `upper`: pytrees of arrays matching the parameters (−inf/+inf where unbounded),
      or None for no box.
    """

    prox: Callable | None = eqx.field(static=True, default=None)
    prox_args: Any = None
    lower: Any = None
    upper: Any = None

    @property
    def has_bounds(self) -> bool:
        return self.lower is not None

    def project(self, x):
        """The box projection clip(x, lower, upper) (x itself without bounds)."""
        if self.lower is None:
            return x
        return jtu.tree_map(clip, x, self.lower, self.upper)

    def apply(self, x, scale):
        """prox_{scale·h}(x): the user's prox (if any), then the box projection (if any). With
        both this is exact for separable h (each coordinate's prox is monotone), which is why
        only solvers that say so accept both."""
        if self.prox is not None:
            x = self.prox(x, self.prox_args, scale)
        return self.project(x)

    def stationarity(self, x, grad, scale=1.0):
        """The gradient mapping G_s(x) = (x − prox_{s·h}(x − s·grad)) / s: zero exactly at a
        stationary point; the projected gradient for bounds."""
        scale = jnp.asarray(scale)
        trial = jtu.tree_map(lambda a, g: a - (scale * g).astype(a.dtype), x, grad)
        moved = tree_sub(x, self.apply(trial, scale))
        return jtu.tree_map(lambda d: (d / scale).astype(d.dtype), moved)


def rule_view(solver, iterate, state):
    """The iterate as the stopping rule should judge it: unchanged for an unconstrained solve;
    with the gradient mapping G_s in place of the gradient for a constrained one."""
    constraint = getattr(solver, "constraint", None)
    if constraint is None:
        return iterate
    scale_fn = getattr(solver, "stationarity_scale", None)
    scale = 1.0 if scale_fn is None else jax.lax.stop_gradient(scale_fn(state))
    mapped = constraint.stationarity(iterate.params, iterate.grad, scale)
    return eqx.tree_at(lambda it: it.grad, iterate, mapped)


def optimality(fn, constraint: Composite, params, args, eta):
    """x − prox_{ηh}(x − η∇f(x, args)), zero at a solution: the residual the adjoint
    differentiates. `eta` is cut from differentiation."""
    eta = jax.lax.stop_gradient(eta)
    grad = jax.grad(lambda p: fn(p, args)[0])(params)
    return jtu.tree_map(lambda d: d * eta.astype(d.dtype),
                        constraint.stationarity(params, grad, eta))


def curvature_step(fn, params, args, iterations: int = 10):
    """η = 1/λ̂ for the adjoint's fixed point, λ̂ ≈ the largest eigenvalue of ∇²f(params) by a
    few power iterations (Hessian-vector products, cut from differentiation): then η∇²f has
    its spectrum in about (0, 1], the best-conditioned choice for the adjoint solve."""
    params = jax.lax.stop_gradient(params)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    grad = lambda p: jax.grad(lambda q: fn(q, args)[0])(p)  # noqa: E731

    def hvp(v):
        out = jax.jvp(grad, (params,), (unravel(v),))[1]
        return jax.flatten_util.ravel_pytree(out)[0].astype(flat.dtype)

    def power(_, v):
        w = hvp(v)
        norm = jnp.linalg.norm(w)
        return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1), v)

    v0 = jnp.cos(1.0 + 2.399963 * jnp.arange(flat.size, dtype=flat.dtype))
    v = jax.lax.fori_loop(0, iterations, power, v0 / jnp.linalg.norm(v0))
    lam = jnp.abs(jnp.vdot(v, hvp(v)))
    ok = jnp.isfinite(lam) & (lam > 0)
    return jax.lax.stop_gradient(jnp.where(ok, 1.0 / jnp.where(ok, lam, 1.0), 1.0))


# --------------------------------------------------------------------------------------------
# Shared by the composite solvers


def prox_of(constraint: Composite | None, x, scale):
    """prox_{scale·h}(x), the identity without a constraint."""
    return x if constraint is None else constraint.apply(x, scale)


def initial_step(fn, it: Iterate, args, constraint: Composite | None = None):
    """1/L̂ with L̂ = ‖Δ∇f‖/‖Δx‖ the secant of ∇f along −∇f over a short step (‖Δx‖∞ =
    10⁻³·s(x), projected onto the bounds if any, where f may be undefined outside): a start
    for the backtracking that is right within a small factor on most problems, where a unit
    step is off by the scale of f. Costs one gradient evaluation; 1 where the secant says
    nothing (a zero gradient, or no room to move inside the bounds)."""
    gnorm = tree_inf_norm(it.grad)
    t = 1e-3 * x_scale(it.params) / jnp.where(gnorm > 0, gnorm, 1.0)
    moved = tree_axpy(-t, it.grad, it.params)
    if constraint is not None:
        moved = constraint.project(moved)
    grad = jax.grad(lambda p: fn(p, args)[0])(moved)
    dx = tree_norm(tree_sub(moved, it.params))
    lipschitz = tree_norm(tree_sub(grad, it.grad)) / jnp.where(dx > 0, dx, 1.0)
    ok = jnp.isfinite(lipschitz) & (lipschitz > 0) & (dx > 0)
    return jnp.where(ok, 1.0 / jnp.where(ok, lipschitz, 1.0), 1.0).astype(it.value.dtype)


def flat_bounds(constraint: Composite | None, x):
    """The box of `constraint` as flat vectors like the raveled params `x` (±inf where there
    is no bound), for the solvers that work on the flattened problem."""
    lower = getattr(constraint, "lower", None)
    upper = getattr(constraint, "upper", None)
    lo = jnp.full_like(x, -jnp.inf) if lower is None else ravel(lower)[0].astype(x.dtype)
    hi = jnp.full_like(x, jnp.inf) if upper is None else ravel(upper)[0].astype(x.dtype)
    return lo, hi


def box_search(solver, fn, it: Iterate, args, x, g, lo, hi, direction, init_step):
    """Armijo backtracking along the projection arc clip(x + t·d, lo, hi) from t = `init_step`
    (flat vectors; `solver.c1`, `solver.max_backtracks`), and the step's curvature pair
    s = x₊ − x, y = ∇f(x₊) − g, from which both bound-constrained solvers take their secant
    scale θ = yᵀy/sᵀy. Returns (line search, s, y)."""
    _, unravel = ravel(it.params)

    def project(p):
        return unravel(clip(ravel(p)[0], lo, hi))

    ls = projected_backtracking(
        fn, it, unravel(direction), args, project, init_step, c1=solver.c1,
        max_trials=solver.max_backtracks,
        noise=roundoff(it.value, it.params, LINE_SEARCH_ROUNDOFF))
    s = ravel(ls.iterate.params)[0] - x
    y = ravel(ls.iterate.grad)[0].astype(x.dtype) - g
    return ls, s, y


# --------------------------------------------------------------------------------------------
# Front-door validation


def _supporting(flag: str) -> str:
    """The public solvers with `flag` set, for error messages (found by subclass search, so
    new solvers appear without an edit here)."""
    from ._base import AbstractMinimizer

    found, todo = set(), [AbstractMinimizer]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if getattr(sub, flag, False) and not sub.__name__.startswith(("_", "Abstract")):
                found.add(sub.__name__)
    return ", ".join(f"jaxopt2.{name}()" for name in sorted(found)) or "(none yet)"


def check_solver_supports(solver, bounds, prox) -> None:
    cls = type(solver)
    name = cls.__name__
    if bounds is not None and not getattr(cls, "supports_bounds", False):
        raise ValueError(f"{name} does not take `bounds`. Solvers that do: "
                         f"{_supporting('supports_bounds')}.")
    if prox is not None and not getattr(cls, "supports_prox", False):
        raise ValueError(f"{name} does not take `prox`. Solvers that do: "
                         f"{_supporting('supports_prox')}.")
    if (bounds is not None and prox is not None
            and not getattr(cls, "supports_bounds_with_prox", False)):
        raise ValueError(
            f"{name} does not take `bounds` and `prox` together. Fold the box into the prox "
            "instead (for a separable h, clip(prox(v, a, s), lower, upper) is the prox of "
            "h + the box), or use one of: " f"{_supporting('supports_bounds_with_prox')}.")


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _bound_side(bound, params0, side: str):
    """One side of `bounds` as a pytree of arrays shaped and typed like `params0`'s leaves."""
    fill = -jnp.inf if side == "lower" else jnp.inf
    leaves, treedef = jtu.tree_flatten_with_path(params0)
    if bound is None:
        return jtu.tree_unflatten(treedef, [jnp.full(x.shape, fill, x.dtype) for _, x in leaves])
    if eqx.is_array_like(bound) and np.ndim(bound) == 0:
        bound = jtu.tree_map(lambda _: bound, params0)
    bound_leaves, bound_def = jtu.tree_flatten(bound, is_leaf=lambda b: b is None)
    if bound_def != treedef:
        raise ValueError(
            f"`bounds` {side} must be None, a scalar, or a pytree with the structure of "
            f"`params0` (a leaf may be None for unbounded); got structure {bound_def} for "
            f"params0 of structure {treedef}.")
    out = []
    for (path, x), b in zip(leaves, bound_leaves, strict=True):
        name = f"bounds {side}{jtu.keystr(path)}"
        if b is None:
            out.append(jnp.full(x.shape, fill, x.dtype))
            continue
        try:
            arr = jnp.asarray(b)
        except TypeError as e:
            raise TypeError(f"`{name}` of type {type(b).__name__} is not an array.") from e
        if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
            raise TypeError(f"`{name}` has dtype {arr.dtype}; bounds must be real numbers.")
        try:
            shape = np.broadcast_shapes(arr.shape, x.shape)
        except ValueError:
            shape = None
        if shape != tuple(x.shape):
            raise ValueError(f"`{name}` has shape {arr.shape}, which does not broadcast to the "
                             f"parameter's shape {x.shape}.")
        arr = jnp.broadcast_to(arr.astype(x.dtype), x.shape)
        if _concrete(arr):
            with jax.ensure_compile_time_eval():
                if bool(jnp.any(jnp.isnan(arr))):
                    raise ValueError(f"`{name}` contains NaN; use -inf/+inf (or None) for an "
                                     "unbounded entry.")
        out.append(arr)
    return jtu.tree_unflatten(treedef, out)


def make_bounds(bounds, params0):
    """`(lower, upper)`: `bounds` validated and filled out to full pytrees of arrays matching
    `params0` (±inf where unbounded). Raises a ValueError naming the leaf for a wrong
    structure or shape, NaN, or lower > upper (the latter two where the bounds are concrete)."""
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise ValueError("`bounds` must be a pair (lower, upper), each None, a scalar or a "
                         f"pytree matching `params0`; got {type(bounds).__name__}.")
    lower = _bound_side(bounds[0], params0, "lower")
    upper = _bound_side(bounds[1], params0, "upper")
    for (path, lo), hi in zip(jtu.tree_flatten_with_path(lower)[0], jtu.tree_leaves(upper),
                              strict=True):
        if _concrete(lo) and _concrete(hi):
            with jax.ensure_compile_time_eval():
                bad = np.asarray(lo > hi)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(
                    f"`bounds` lower{jtu.keystr(path)} > upper{jtu.keystr(path)} at index "
                    f"{index} ({float(np.asarray(lo)[index])} > {float(np.asarray(hi)[index])}): "
                    "the box is empty. Swap or fix the bounds.")
    return lower, upper


def check_prox(prox, prox_args, params0) -> Any:
    """A callable with jaxopt's signature returning params0's structure; returns `prox_args`
    with strong dtypes (as the front doors do for `args`)."""
    if not callable(prox):
        raise TypeError("`prox` must be a function prox(x, prox_args, scale) -> x, e.g. "
                        f"jaxopt2.prox.l1; got {type(prox).__name__}.")
    prox_args = jtu.tree_map(lambda x: jnp.asarray(x, x.dtype) if eqx.is_array(x) else x,
                             prox_args)
    try:
        # `prox_args` closed over: its concrete values meet the prox's own checks here
        # (a negative l1reg raises now, not as a NaN status after the solve)
        out = jax.eval_shape(lambda x: prox(x, prox_args, 1.0), params0)
    except Exception as e:
        raise ValueError("Calling `prox(params0, prox_args, 1.0)` failed; `prox` must take "
                         "(x, prox_args, scale) and return x's structure. "
                         f"The error was: {e}") from e
    spec = lambda t: jtu.tree_map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype).name), t)  # noqa: E731
    if jtu.tree_structure(out) != jtu.tree_structure(params0) or spec(out) != spec(params0):
        raise ValueError(f"`prox` must return the structure, shapes and dtypes of `params0` "
                         f"({spec(params0)}); got {spec(out)}.")
    return prox_args
