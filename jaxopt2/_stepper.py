"""The public step-by-step API: `Stepper.init` and `Stepper.step` drive any solver one
iteration at a time from the user's own loop, as jaxopt's `init_state`/`update` did.

A step is exactly a front door's step: `Stepper.step` calls the same per-step functions as
the loops of `_iterate.py` (`minimizer_step`, `solver_step`), with the same stopping rules
(`_stopping.py`), the same non-finite and divergence checks, the same step budget and, for
minimizers, the same curvature check where a solve is accepted. So a loop of `step` calls
until `state.done` ends at the iterate, step count and status that `minimize`, `root_find`,
`least_squares` or `fixed_point` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _stopping as stopping
from ._base import (
    AbstractFixedPointSolver,
    AbstractIterativeSolver,
    AbstractLeastSquaresSolver,
    AbstractMinimizer,
    AbstractRootFinder,
    Counts,
    Iterate,
    Point,
)
from ._checks import check_objective, check_vector_output, wrap_objective
from ._front import check_max_steps, open_door, stats, step_budget
from ._iterate import (
    check_when,
    final_check,
    minimizer_step,
    solver_step,
    start_minimizer,
    start_solver,
)
from ._precision import check_dense_size, upcast_half
from ._results import RESULTS
from ._tree import result_dtype, tree_inf_norm, tree_sub

# kind -> (solver classes it accepts, a solver to name in errors, what the point is called)
_KINDS = {
    "minimize": (AbstractMinimizer, "jaxopt2.LBFGS()", "params0"),
    "least_squares": (AbstractLeastSquaresSolver, "jaxopt2.LevenbergMarquardt()", "params0"),
    "root_find": (AbstractRootFinder, "jaxopt2.NewtonKrylov()", "y0"),
    "fixed_point": ((AbstractFixedPointSolver, AbstractRootFinder), "jaxopt2.Anderson()", "y0"),
}


def _infer_kind(solver) -> str:
    if isinstance(solver, AbstractMinimizer):
        return "minimize"
    if isinstance(solver, AbstractLeastSquaresSolver):
        return "least_squares"
    if isinstance(solver, AbstractRootFinder):
        return "root_find"
    if isinstance(solver, AbstractFixedPointSolver):
        return "fixed_point"
    raise TypeError(f"`solver` must be a jaxopt2 solver such as jaxopt2.LBFGS() or "
                    f"jaxopt2.NewtonKrylov(); got {type(solver).__name__}.")


class StepState(eqx.Module):
    """Where a `Stepper` stands after `init` or a `step`: a pytree, so it can be returned from
    `jit`, carried through `lax.fori_loop`, `lax.scan` or `lax.while_loop`, and batched by
    `vmap` (one entry per problem).

    - `params`: the current point (x for `minimize`, y otherwise).
    - `value`: what the function returned there: f(x), the residuals r(y), F(y) or g(y), as
      in `Solution.value`.
    - `grad`: ∇f(x) for `minimize`; `None` for the other kinds.
    - `aux`: the function's auxiliary output with `has_aux=True`, else `None`.
    - `norm`: the max-norm of what the solve drives to zero: ∇f (`minimize`), F(y)
      (`root_find`), g(y) − y (`fixed_point`); for `least_squares` the residuals r(y), which
      need not vanish at a fit.
    - `status`: a `RESULTS` item (`jaxopt2.RESULTS.successful` while the solve goes on, and
      once it has converged); `status.code` is its int32 code inside `jit`.
    - `num_steps`: steps taken (int32). `done`: True once the solve stopped: converged,
      failed (the status says how), or `max_steps` reached (`max_steps_reached`).
    - `stats`: the step and evaluation counts of `Solution.stats`. `success`: `done` with
      `status == successful`.
    - `solver_state`: the solver's own state (as `Solution.state`).

    The remaining fields (`point`, `counts`, `progress`, `start`) are what the stopping rule
    remembers between steps; read the properties above instead.
    """

    point: Iterate | Point
    solver_state: Any
    status: RESULTS
    num_steps: jax.Array
    done: jax.Array
    counts: Counts
    progress: stopping.Progress
    start: Any  # minimize: (atol + rtol·‖g₀‖, f(x₀), s(x₀)), the rule's memory of the start
    kind: str = eqx.field(static=True)
    residual_of_map: bool = eqx.field(static=True, default=False)  # root finder on g(y) − y

    @property
    def params(self):
        return self.point.params if self.kind == "minimize" else self.point.y

    @property
    def value(self):
        if self.kind == "minimize":
            return self.point.value
        if self.residual_of_map:  # report g(y) = (g(y) − y) + y, as `fixed_point` does
            return jax.tree_util.tree_map(lambda r, y: r + y, self.point.f, self.point.y)
        return self.point.f

    @property
    def grad(self):
        return self.point.grad if self.kind == "minimize" else None

    @property
    def aux(self):
        return self.point.aux

    @property
    def norm(self) -> jax.Array:
        if self.kind == "minimize":
            return tree_inf_norm(self.point.grad)
        if self.kind == "fixed_point" and not self.residual_of_map:
            return tree_inf_norm(tree_sub(self.point.f, self.point.y))
        return tree_inf_norm(self.point.f)

    @property
    def stats(self) -> dict:
        return stats(self.counts, self.num_steps)

    @property
    def success(self) -> jax.Array:
        return self.done & (self.status == RESULTS.successful)


class Stepper(eqx.Module):
    """Run a solver one step at a time, from your own loop.

    `stepper.init(params0, args)` evaluates the start; `stepper.step(state, args)` takes one
    iteration of `solver` and applies the stopping rule of the matching front door
    (`minimize`, `least_squares`, `root_find` or `fixed_point`, chosen by `kind`), its
    non-finite and divergence checks and the `max_steps` budget. A loop of `step` calls until
    `state.done` therefore takes the same iterates and ends with the same `num_steps` and
    status as the front door with the same `max_steps`. A `step` from a state that is `done`
    returns it unchanged, so a fixed-length `lax.fori_loop` or `scan` may run past the end.

    `args` must be the same at every call (the stopping rule compares with the start); it is
    passed rather than stored so that the state stays small and data can stay sharded.

    Nothing compiles by itself: `jax.jit(stepper.step)` compiles once per shape and dtype of
    the state, and `jax.vmap(stepper.step)` steps a batch of problems (each with its own
    `done` and `status`). A failed solve never raises here: read `state.status`.

    **What the front doors do and this does not.**

    - Derivatives: `Stepper` does no implicit differentiation. Use the front doors (whose
      `Solution.params` is differentiable through `ImplicitAdjoint`) for derivatives of a
      solution; differentiating through `step` would unroll the iterations and their line
      searches.
    - Saddles: a minimization the rule accepts is checked for negative curvature as in
      `minimize` (a saddle or maximum ends as `saddle_point`), but `escape_saddles` is not
      offered: start again from a perturbed point instead.
    - No `callback`/`verbose` (print from your loop) and no `throw` (read `state.status`).
    - Half-precision (float16/bfloat16) points are solved in float32, as by the front doors,
      and the state holds them in float32.

    **Arguments:**

    - `fun`: the function, with the signature of the front door's: `fun(params, args)`
      returning a scalar (`minimize`), residuals (`least_squares`), F(y) (`root_find`) or
      g(y) (`fixed_point`); `(out, aux)` with `has_aux=True`.
    - `solver`: any jaxopt2 solver, e.g. `jaxopt2.LBFGS()` or `jaxopt2.NewtonRaphson()`.
    - `kind`: `"minimize"`, `"least_squares"`, `"root_find"` or `"fixed_point"`; by default
      inferred from the solver (a root finder means `"root_find"`: pass
      `kind="fixed_point"` to apply it to g(y) − y).
    - `has_aux`: whether `fun` returns `(out, aux)`.
    - `max_steps`: the step budget (static), after which `done` is True with status
      `max_steps_reached`; by default the solver's own, as in the front doors
      (`default_max_steps`: 256 for Newton-type solvers, more for quasi-Newton and
      first-order ones).

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxopt2
    fun = lambda x, a: jnp.sum((x - a) ** 2) + jnp.sum(x**4)
    stepper = jaxopt2.Stepper(fun, jaxopt2.LBFGS())
    step = jax.jit(stepper.step)
    state = stepper.init(jnp.zeros(3), jnp.arange(3.0))
    while not state.done:
        state = step(state, jnp.arange(3.0))
    print(state.num_steps, state.status, state.params)
    ```
    """

    fun: Callable
    solver: AbstractMinimizer | AbstractIterativeSolver
    kind: str = eqx.field(static=True)
    has_aux: bool = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(self, fun: Callable, solver, *, kind: str | None = None,
                 has_aux: bool = False, max_steps: int | None = None):
        if not callable(fun):
            raise TypeError(f"`fun` must be callable as fun(params, args); got "
                            f"{type(fun).__name__}.")
        if kind is None:
            kind = _infer_kind(solver)
        if kind not in _KINDS:
            raise ValueError(f"`kind` must be one of {tuple(_KINDS)}; got {kind!r}.")
        kinds, example, _ = _KINDS[kind]
        if not isinstance(solver, kinds):
            raise TypeError(f"`solver` for kind={kind!r} must be one of its solvers such as "
                            f"{example}; got {type(solver).__name__}.")
        if not isinstance(has_aux, bool):
            raise TypeError(f"`has_aux` must be True or False; got {has_aux!r}.")
        max_steps = step_budget(solver, max_steps)
        check_max_steps(max_steps)
        self.fun = fun
        self.solver = solver
        self.kind = kind
        self.has_aux = has_aux
        self.max_steps = max_steps

    @property
    def _residual_of_map(self) -> bool:
        return self.kind == "fixed_point" and isinstance(self.solver, AbstractRootFinder)

    def _fn(self):
        """`fun` as the loops see it: returning `(out, aux)`; g(y) − y for a root finder
        on a fixed-point problem."""
        fn = wrap_objective(self.fun, self.has_aux)
        if not self._residual_of_map:
            return fn

        def residual(y, args):
            out, aux = fn(y, args)
            return tree_sub(out, y), aux

        return residual

    def init(self, params0, args=None) -> StepState:
        """The state at `params0`: the function (and for minimizers its gradient) evaluated
        there, checked as the front door checks it. The state is already `done` where
        `params0` solves the problem (or `max_steps=0`)."""
        _, example, root = _KINDS[self.kind]
        check_dense_size(self.solver, params0, self.kind)
        if not getattr(type(self.solver), "supports_half_precision", False):
            params0, _ = upcast_half(params0)
        params0, fn, args, _ = open_door(
            self.kind, solver=self.solver, kinds=_KINDS[self.kind][0], example=example,
            max_steps=self.max_steps, callback=None, verbose=False, fun=self.fun, x0=params0,
            args=args, has_aux=self.has_aux, root=root)
        if self.kind == "minimize":
            check_objective(fn, params0, args)
        else:
            check_vector_output(fn, params0, args, "fun", square=self.kind != "least_squares")
        fn = self._fn()
        # Strong dtypes, as the loops' carry has them after one step: a weakly typed leaf in
        # the state from `init` would make a jitted `step` compile a second time.
        params0 = _strong(params0)
        zero = jnp.zeros((), jnp.int32)
        progress = stopping.Progress.none(result_dtype(params0))
        if self.kind == "minimize":
            it0, rule, state0, done, result = start_minimizer(self.solver, fn, params0, args)
            counts = Counts.of(grad=1)
            start = (rule.grad_tol, rule.value0, rule.scale0)
            done, result = self._budget(done, result, zero)
            result, counts = self._check(fn, args, it0, state0, done, result, counts)
            point = it0
        else:
            point, state0, counts, done, result = start_solver(self.solver, fn, params0, args)
            start = None
            done, result = self._budget(done, result, zero)
        return _strong(StepState(point, state0, result, zero, jnp.asarray(done), counts,
                                 progress, start, self.kind, self._residual_of_map))

    def step(self, state: StepState, args=None) -> StepState:
        """One iteration from `state` (with the same `args` as `init`), or `state` unchanged
        if it is `done`."""
        if not isinstance(state, StepState) or state.kind != self.kind:
            raise TypeError(f"`state` must be the StepState of a kind={self.kind!r} Stepper, "
                            f"from `init` or `step`; got {type(state).__name__}"
                            + (f" of kind {state.kind!r}." if isinstance(state, StepState)
                               else "."))
        args = _strong(args)
        fn = self._fn()
        solver = self.solver

        def advance(state: StepState) -> StepState:
            if self.kind == "minimize":
                # The rule's floats (rtol, eps) are static: rebuild it around its arrays.
                template = stopping.MinimizerRule.start(solver, state.point)
                rule = eqx.tree_at(lambda r: (r.grad_tol, r.value0, r.scale0), template,
                                   state.start)
                new, solver_state, counts, result, num_steps, done, progress = minimizer_step(
                    solver, fn, args, rule, state.point, state.solver_state, state.progress,
                    state.num_steps)
            else:
                new, solver_state, counts, result, num_steps, done, progress = solver_step(
                    solver, fn, args, state.point, state.solver_state, state.progress,
                    state.num_steps)
            counts = state.counts + counts
            done, result = self._budget(done, result, num_steps)
            if self.kind == "minimize":
                result, counts = self._check(fn, args, new, solver_state, done, result, counts)
            return StepState(new, solver_state, result, num_steps, jnp.asarray(done), counts,
                             progress, state.start, self.kind, self._residual_of_map)

        return jax.lax.cond(state.done, lambda s: s, advance, state)

    def _budget(self, done, result, num_steps):
        """As after the front doors' loop: out of steps and not done is `max_steps_reached`."""
        out_of_steps = ~done & (num_steps >= self.max_steps)
        return done | out_of_steps, RESULTS.where(out_of_steps, RESULTS.max_steps_reached,
                                                  result)

    def _check(self, fn, args, it, solver_state, done, result, counts):
        """The curvature check of `minimize` where the solve has just been accepted: a loop
        of zero or one trips, so a batch pays for it only in a step where some problem
        needs it."""
        when = check_when(self.solver, fn, it.params, args)
        if when is None:
            return result, counts
        result, check_counts = final_check(self.solver, fn, args,
                                           lambda it: done & when(it), it, solver_state,
                                           result, lazy=True)
        return result, counts + check_counts


def _strong(tree):
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, x.dtype) if eqx.is_array(x) else x, tree)
