"""The front doors for systems of equations: `least_squares`, `root_find` and `fixed_point`.

Each has the shape of `minimize` and knows its optimality condition, which is what
`ImplicitAdjoint` differentiates:

- least squares: ∇(½‖r(y, θ)‖²) = J(y)ᵀ r(y) = 0 (symmetric, PSD at a minimum: CG);
- root finding: F(y, θ) = 0 (unsymmetric: GMRES);
- fixed points: g(y, θ) − y = 0 (unsymmetric: GMRES).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import lineax as lx

from ._adjoint import AbstractAdjoint, ImplicitAdjoint, attach_tangent
from ._base import (
    AbstractFixedPointSolver,
    AbstractLeastSquaresSolver,
    AbstractRootFinder,
    Point,
)
from ._checks import check_vector_output
from ._compiled import compiled_at_top_level
from ._front import (
    adjoint_for,
    check_concrete_inputs,
    equation_detail,
    finish,
    open_door,
    stats,
    step_budget,
)
from ._iterate import run_solver
from ._keywords import check_front_door_keywords
from ._precision import solver_inputs
from ._solution import Solution
from ._tree import result_dtype, tree_dot, tree_inf_norm, tree_sub


class _Run(NamedTuple):
    """The keywords every door below takes and hands on unchanged, kept together so that
    each door names them once (in its signature, which stays explicit for users and type
    checkers)."""

    solver: Any
    max_steps: int
    adjoint: AbstractAdjoint
    has_aux: bool
    throw: bool
    callback: Callable | None
    verbose: bool


# Each door's solver classes, and the solver its errors suggest.
_DOORS = {
    "least_squares": (AbstractLeastSquaresSolver, "jaxopt2.LevenbergMarquardt()"),
    "root_find": (AbstractRootFinder, "jaxopt2.NewtonKrylov()"),
    "fixed_point": ((AbstractFixedPointSolver, AbstractRootFinder), "jaxopt2.Anderson()"),
}


def _open(door: str, run: _Run, fun, x0, args, *, root: str, fun_name: str, square: bool):
    """`open_door` for a system of equations, and its output checked (`square`: the shape of
    `x0`). Returns `(x0, fn, args, run)`, with the callback `run` carries now printing for
    `verbose`."""
    kinds, example = _DOORS[door]
    x0, fn, args, callback = open_door(
        door, solver=run.solver, kinds=kinds, example=example, max_steps=run.max_steps,
        callback=run.callback, verbose=run.verbose, fun=fun, x0=x0, args=args,
        has_aux=run.has_aux, root=root)
    check_vector_output(fn, x0, args, fun_name, square=square)
    return x0, fn, args, run._replace(callback=callback)


def _solve(run: _Run, fn, y0, args, optimality, tags, measure, door: str) -> Solution:
    fn = run.solver.convert_objective(fn, y0, args)
    inputs = (fn, args)

    def primal(y0, inputs):
        fn, args = inputs
        out = run_solver(run.solver, fn, y0, args, run.max_steps, run.callback, measure)
        return out.point.y, out

    adjoint = adjoint_for(run.adjoint, run.throw)
    y, out = adjoint.apply(primal, optimality, y0, inputs, tags)
    status = out.result
    detail = equation_detail(door, run.solver, out.num_steps, measure(out.point), out.measure0,
                             result_dtype(y0))
    y = finish(y, status, adjoint, run.throw, detail=detail)
    f, aux = attach_tangent((out.point.f, out.point.aux), y, inputs,
                            fn=lambda p, i: i[0](p, i[1]))
    return Solution(params=y, value=f, status=status, stats=stats(out.counts, out.num_steps),
                    state=out.state, aux=aux if run.has_aux else None)


@compiled_at_top_level(functools.partial(check_concrete_inputs, root="params0"))
@check_front_door_keywords
@solver_inputs("least_squares")
def least_squares(residual_fn: Callable, params0: Any, args: Any = None, *,
                  solver: AbstractLeastSquaresSolver, max_steps: int | None = None,
                  adjoint: AbstractAdjoint = ImplicitAdjoint(), has_aux: bool = False,
                  throw: bool = True, callback: Callable | None = None,
                  verbose: bool = False) -> Solution:
    """Minimize ½‖r(params, args)‖² over `params`, starting from `params0`.

    **Arguments:**

    - `residual_fn`: `residual_fn(params, args) -> residuals`, any pytree of floating-point
      arrays of any shapes (or `(residuals, aux)` with `has_aux=True`).
    - `params0`: initial parameters, any pytree of floating-point arrays. Dtypes are kept.
    - `args`: data and hyperparameters, passed unchanged (never flattened, may be sharded).
    - `solver`: e.g. `jaxopt2.LevenbergMarquardt()` or `jaxopt2.GaussNewton()`.
    - `max_steps`, `adjoint`, `throw`, `callback`, `verbose`: as in `jaxopt2.minimize`; the
      callback receives `(step, params, cost)` with cost = ½‖r‖², and `verbose=True` prints
      the cost, `|dx|` and the step size where the solver has one.

    **Returns** a `Solution` whose `value` is the residual pytree at the solution (the cost is
    `0.5 * sum(r**2)`). The solution is differentiable in `args` by the implicit function
    theorem on Jᵀr = 0.

    **Example:**

    ```python
    import jax.numpy as jnp, jaxopt2
    t = jnp.linspace(0.0, 1.0, 20)
    y = 2.0 * jnp.exp(-3.0 * t)
    fit = lambda p, a: p["A"] * jnp.exp(-p["k"] * a[0]) - a[1]
    sol = jaxopt2.least_squares(fit, {"A": 1.0, "k": 1.0}, (t, y),
                                solver=jaxopt2.LevenbergMarquardt())
    ```
    """
    run = _Run(solver, step_budget(solver, max_steps), adjoint, has_aux, throw, callback,
               verbose)
    params0, fn, args, run = _open("least_squares", run, residual_fn, params0, args,
                                   root="params0", fun_name="residual_fn", square=False)

    def optimality(params, inputs):
        fn, args = inputs
        r, vjp = jax.vjp(lambda p: fn(p, args)[0], params)
        return vjp(r)[0]

    return _solve(run, fn, params0, args, optimality,
                  tags=(lx.symmetric_tag, lx.positive_semidefinite_tag), measure=_cost,
                  door="least_squares")


@compiled_at_top_level(functools.partial(check_concrete_inputs, root="y0"))
@check_front_door_keywords
@solver_inputs("root_find")
def root_find(fn: Callable, y0: Any, args: Any = None, *, solver: AbstractRootFinder,
              max_steps: int | None = None, adjoint: AbstractAdjoint = ImplicitAdjoint(),
              has_aux: bool = False, throw: bool = True, callback: Callable | None = None,
              verbose: bool = False) -> Solution:
    """Find `y` with `fn(y, args) = 0`, starting from `y0`.

    **Arguments:**

    - `fn`: `fn(y, args) -> F`, where `F` has the pytree structure and leaf shapes of `y`
      (a square system; use `least_squares` otherwise), or `(F, aux)` with `has_aux=True`.
    - `y0`: the initial point, any pytree of floating-point arrays. Dtypes are kept.
    - `solver`: e.g. `jaxopt2.NewtonKrylov()`, `jaxopt2.NewtonRaphson()`, `jaxopt2.Broyden()` or
      `jaxopt2.Bisection(lower, upper)` for scalar equations.
    - `max_steps`, `adjoint`, `throw`, `callback`, `verbose`: as in `jaxopt2.minimize`; the
      callback receives `(step, y, max|F(y)|)`, and `verbose=True` prints `|F|`, `|dx|` and
      the step size where the solver has one.

    **Returns** a `Solution` whose `value` is `F` at the root. The root is differentiable in
    `args` by the implicit function theorem on F(y, args) = 0.
    """
    run = _Run(solver, step_budget(solver, max_steps), adjoint, has_aux, throw, callback,
               verbose)
    y0, fn, args, run = _open("root_find", run, fn, y0, args, root="y0", fun_name="fn",
                              square=True)

    def optimality(y, inputs):
        fn, args = inputs
        return fn(y, args)[0]

    return _solve(run, fn, y0, args, optimality, tags=(),
                  measure=lambda p: tree_inf_norm(p.f), door="root_find")


@compiled_at_top_level(functools.partial(check_concrete_inputs, root="y0"))
@check_front_door_keywords
@solver_inputs("fixed_point")
def fixed_point(fn: Callable, y0: Any, args: Any = None, *,
                solver: AbstractFixedPointSolver | AbstractRootFinder,
                max_steps: int | None = None,
                adjoint: AbstractAdjoint = ImplicitAdjoint(), has_aux: bool = False,
                throw: bool = True, callback: Callable | None = None,
                verbose: bool = False) -> Solution:
    """Find `y` with `fn(y, args) = y`, starting from `y0`.

    **Arguments:**

    - `fn`: `fn(y, args) -> g`, with the pytree structure and leaf shapes of `y` (or
      `(g, aux)` with `has_aux=True`).
    - `y0`: the initial point, any pytree of floating-point arrays. Dtypes are kept.
    - `solver`: `jaxopt2.FixedPointIteration()`, `jaxopt2.Anderson()`, or any root finder
      (e.g. `jaxopt2.NewtonKrylov()`), which is then applied to g(y) − y.
    - `max_steps`, `adjoint`, `throw`, `callback`, `verbose`: as in `jaxopt2.minimize`; the
      callback receives `(step, y, max|g(y) − y|)`, and `verbose=True` prints
      `|g(y) - y|`, `|dx|` and the step size where the solver has one.

    **Returns** a `Solution` whose `value` is `g` at the fixed point. The fixed point is
    differentiable in `args` by the implicit function theorem on g(y, args) − y = 0, which is
    what deep-equilibrium layers need.
    """
    run = _Run(solver, step_budget(solver, max_steps), adjoint, has_aux, throw, callback,
               verbose)
    y0, fn, args, run = _open("fixed_point", run, fn, y0, args, root="y0", fun_name="fn",
                              square=True)

    def optimality(y, inputs):
        fn, args = inputs
        return tree_sub(fn(y, args)[0], y)

    if isinstance(solver, AbstractRootFinder):
        g = fn

        def residual(y, args):
            out, aux = g(y, args)
            return tree_sub(out, y), aux

        def root_optimality(y, inputs):  # inputs[0] is the residual g(y) − y here
            fn, args = inputs
            return fn(y, args)[0]

        sol = _solve(run, residual, y0, args, root_optimality, tags=(),
                     measure=lambda p: tree_inf_norm(p.f), door="fixed_point")
        # Report g(y) = (g(y) − y) + y, as the fixed-point solvers do.
        value = jax.tree_util.tree_map(lambda r, y: r + y, sol.value, sol.params)
        return eqx.tree_at(lambda s: s.value, sol, value)
    return _solve(run, fn, y0, args, optimality, tags=(),
                  measure=lambda p: tree_inf_norm(tree_sub(p.f, p.y)), door="fixed_point")


def _cost(point: Point):
    return 0.5 * tree_dot(point.f, point.f)
