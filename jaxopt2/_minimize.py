"""`jaxopt2.minimize`: the front door for unconstrained minimization."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import lineax as lx

from ._adjoint import AbstractAdjoint, ImplicitAdjoint, attach_tangent
from ._base import AbstractMinimizer
from ._checks import check_objective
from ._compiled import compiled_at_top_level
from ._composite import (
    Composite,
    check_prox,
    check_solver_supports,
    curvature_step,
    make_bounds,
)
from ._composite import optimality as composite_optimality
from ._front import (
    adjoint_for,
    check_concrete_inputs,
    finish,
    open_door,
    shortfall_detail,
    stats,
    step_budget,
)
from ._iterate import run_minimizer
from ._keywords import check_front_door_keywords
from ._precision import solver_inputs
from ._solution import Solution
from ._sqrt_hessian import hessian_matrix


def composite_solve(solver, fn, params0, args, bounds, prox, prox_args, max_steps, callback,
                    escape_saddles):
    """`(primal, optimality, inputs)` of a solve with bounds and/or a prox: the solver gets
    the constraint in its `constraint` field inside the traced primal, so that `prox_args`
    and the bounds are differentiable inputs; the optimality condition is the fixed point of
    the proximal-gradient map (`_composite.py`)."""
    check_solver_supports(solver, bounds, prox)
    lower, upper = make_bounds(bounds, params0) if bounds is not None else (None, None)
    if prox is not None:
        prox_args = check_prox(prox, prox_args, params0)
    inputs = (fn, args, prox_args, lower, upper)

    def constraint_of(inputs):
        return Composite(prox, inputs[2], inputs[3], inputs[4])

    def primal(params0, inputs):
        fn, args = inputs[:2]
        constraint = constraint_of(inputs)
        constrained = eqx.tree_at(lambda s: s.constraint, solver, constraint,
                                  is_leaf=lambda x: x is None)
        params0 = constraint.project(params0)  # a start outside the box is projected
        out = run_minimizer(constrained, fn, params0, args, max_steps, callback,
                            escape_saddles)
        return out.iterate.params, out

    def optimality(params, inputs):
        fn, args = inputs[:2]
        return composite_optimality(fn, constraint_of(inputs), params, args,
                                    curvature_step(fn, params, args))

    return primal, optimality, inputs


def _precheck(arguments) -> None:
    """`minimize`'s checks of concrete values, for a top-level call (`_compiled`)."""
    check_concrete_inputs(arguments, "params0")
    params0 = arguments["params0"]
    if arguments["bounds"] is not None:
        make_bounds(arguments["bounds"], params0)
    if arguments["prox"] is not None:
        check_prox(arguments["prox"], arguments["prox_args"], params0)


@compiled_at_top_level(_precheck)
@check_front_door_keywords
@solver_inputs("minimize")
def minimize(
    fun: Callable,
    params0: Any,
    args: Any = None,
    *,
    solver: AbstractMinimizer,
    max_steps: int | None = None,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    has_aux: bool = False,
    throw: bool = True,
    callback: Callable | None = None,
    verbose: bool = False,
    escape_saddles: bool = False,
    bounds: Any = None,
    prox: Callable | None = None,
    prox_args: Any = None,
) -> Solution:
    """Minimize `fun(params, args)` over `params`, starting from `params0`.

    **Arguments:**

    - `fun`: `fun(params, args) -> scalar` (or `(scalar, aux)` with `has_aux=True`).
    - `params0`: initial parameters, any pytree of floating-point arrays. Dtypes are kept.
    - `args`: any pytree of data and hyperparameters, passed unchanged to `fun`. Never copied
      or flattened, so it may be sharded across devices.
    - `solver`: e.g. `jaxopt2.GradientDescent()`, with its tolerances.
    - `max_steps`: the iteration budget (static). None (default): the solver's
      `default_max_steps`, 256 for Newton-type solvers, 1000 for quasi-Newton ones (LBFGS,
      BFGS, LBFGSB), 5000 for first-order ones (GradientDescent, ProximalGradient). When it
      runs out, the `max_steps_reached` error says by how much each test was missed.
    - `adjoint`: how `Solution.params` is differentiated; the default `ImplicitAdjoint()` uses
      the implicit function theorem on ∇f(x*, args) = 0 (forward and reverse mode).
    - `throw`: if True, a failed solve raises with a message saying what to try; under `vmap`
      it never raises, so one failing problem cannot stop the others (read `Solution.status`).
      With `throw=False` the status is only reported.
    - `callback`: optional `callback(step, params, value, grad_inf_norm)`, called on the host
      after every step through `jax.debug.callback`. Costs nothing when `None`. With
      `bounds`/`prox`, `grad_inf_norm` (and `verbose`'s `|grad|`) is that of the gradient
      mapping, the measure the solve stops on.
    - `verbose`: if True, print one line per step through `jax.debug.print` (so it works
      under `jit`; under `vmap` one line per problem): the step number, the objective `f`,
      `|grad|` (max-norm), `|dx|` (max-norm of the step taken) and the solver's step size
      where it has one. Costs nothing when False.
    - `escape_saddles`: where a solve stops at a zero gradient, the curvature is checked
      (always for Newton-type solvers; for first-order ones where the gradient is exactly
      zero) and a saddle or maximum ends as `RESULTS.saddle_point`. With
      `escape_saddles=True` the solver instead steps down along the direction of negative
      curvature and goes on (up to 3 times, within `max_steps`): x² + (y² − 1)² from (1, 0)
      then ends at a minimum (0, ±1) instead of the saddle (0, 0). Off by default because
      the check then sits inside the loop, which XLA compiles about twice as slowly.
    - `bounds`: `(lower, upper)` for lower ≤ params ≤ upper, each None (unbounded), a scalar,
      or a pytree matching `params0` whose leaves may be None; ±inf allowed. A start outside
      the box is projected onto it. Only solvers with `supports_bounds` take them
      (`ProximalGradient`, `LBFGSB`, …); the derivative is taken through the projected-
      gradient fixed point, so it lives on the free variables (docs/guides/constraints.md).
    - `prox`, `prox_args`: a nonsmooth term h given by its proximal operator
      `prox(v, prox_args, scale) = argmin_x h(x) + ‖x − v‖²/(2·scale)` (jaxopt's signature),
      minimizing f + h (`ProximalGradient`, `ProximalNewton`). `prox_args` is differentiable
      like `args`. `Solution.value` is then f alone, without h.

    Called outside any transformation, the whole solve runs as one compiled program, cached
    on `fun`, the solver, the keywords and the arrays' shapes and dtypes: a second call with
    new values does not compile again (Python scalars in `args` are constants of the
    program; pass arrays for values that change). Inside `jax.jit`, `vmap` or `grad` it is
    traced into the caller's program as usual (docs/guides/choosing.md, "Compile time").

    **Example:**

    ```python
    import jax.numpy as jnp, jaxopt2
    fun = lambda p, a: jnp.sum((p["w"] - a) ** 2) + p["b"] ** 2
    sol = jaxopt2.minimize(fun, {"w": jnp.zeros(3), "b": jnp.ones(())}, jnp.arange(3.0),
                           solver=jaxopt2.GradientDescent())
    ```
    """
    max_steps = step_budget(solver, max_steps)
    params0, fn, args, callback = open_door(
        "minimize", solver=solver, kinds=AbstractMinimizer, example="jaxopt2.LBFGS()",
        max_steps=max_steps, callback=callback, verbose=verbose, fun=fun, x0=params0,
        args=args, has_aux=has_aux, root="params0")
    check_objective(fn, params0, args)
    fn = solver.convert_objective(fn, params0, args)
    if bounds is None and prox is None:
        inputs = (fn, args)

        def primal(params0, inputs):
            fn, args = inputs
            out = run_minimizer(solver, fn, params0, args, max_steps, callback, escape_saddles)
            return out.iterate.params, out

        def stationarity(params, inputs):
            fn, args = inputs
            return jax.grad(lambda p: fn(p, args)[0])(params)

        tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
    else:
        primal, stationarity, inputs = composite_solve(
            solver, fn, params0, args, bounds, prox, prox_args, max_steps, callback,
            escape_saddles)
        tags = ()
    adjoint = adjoint_for(adjoint, throw)
    if isinstance(adjoint, ImplicitAdjoint) and adjoint.refine is None:
        # a first-order answer sits at the tolerance, and so would its derivative: one
        # Newton step under differentiation (see ImplicitAdjoint's `refine`)
        # (not with differentiate_unconverged: the user asked for the point reached)
        smooth = bounds is None and prox is None and not adjoint.differentiate_unconverged
        adjoint = eqx.tree_at(lambda a: a.refine, adjoint, smooth and not solver.uses_curvature,
                              is_leaf=lambda x: x is None)
    sqrt_hessian = getattr(solver, "sqrt_hessian", None)
    if (isinstance(adjoint, ImplicitAdjoint) and adjoint.matrix is None and bounds is None
            and prox is None and sqrt_hessian is not None):
        # the solver's BᵀB + R for the dense adjoint solve (and the refining step)
        adjoint = eqx.tree_at(lambda a: a.matrix, adjoint,
                              hessian_matrix(sqrt_hessian, type(solver).__name__),
                              is_leaf=lambda x: x is None)
    if (isinstance(adjoint, ImplicitAdjoint) and adjoint.solver_preconditioner is None
            and bounds is None and prox is None):
        # the curvature the solve ends with, for the adjoint's CG (Newton's last factor); None
        # where the solver keeps none
        adjoint = eqx.tree_at(lambda a: a.solver_preconditioner, adjoint,
                              lambda out: solver.adjoint_preconditioner(out.state,
                                                                        out.iterate.params),
                              is_leaf=lambda x: x is None)
    params, out = adjoint.apply(primal, stationarity, params0, inputs, tags)
    status = out.result
    params = finish(params, status, adjoint, throw,
                    detail=shortfall_detail(out.num_steps, out.shortfall))
    value, aux = attach_tangent((out.iterate.value, out.iterate.aux), params, inputs[:2],
                                fn=lambda p, i: i[0](p, i[1]))
    return Solution(params=params, value=value, status=status,
                    stats=stats(out.counts, out.num_steps), state=out.state,
                    aux=aux if has_aux else None)
