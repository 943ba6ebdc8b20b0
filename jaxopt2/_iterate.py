"""The loops every front door runs in, and the per-step pieces they share with the public
stepping API (`_stepper.py`): `start_minimizer`/`minimizer_step` and
`start_solver`/`solver_step` are what one iteration means, so that a user's own loop of
`Stepper.step` calls and a front door take the same steps and stop by the same rules."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _stopping as stopping
from ._base import (
    AbstractIterativeSolver,
    AbstractMinimizer,
    Counts,
    Iterate,
    Point,
    evaluate,
    evaluate_point,
)
from ._composite import rule_view
from ._loops import while_loop
from ._results import RESULTS
from ._tree import result_dtype, tree_all_finite, tree_inf_norm
from ._verbose import report_step


class LoopOutput(eqx.Module):
    iterate: Iterate
    state: Any
    counts: Counts
    result: RESULTS
    num_steps: jax.Array
    # `MinimizerRule.shortfall` at the end: how far each test was from passing (the
    # `max_steps_reached` message reports it)
    shortfall: jax.Array


def _classify(it: Iterate, converged, result: RESULTS, diverged) -> tuple[jax.Array, RESULTS]:
    """Shared by all minimizers: returns (done, result) from the convergence decision of
    `stopping.minimizer_converged` and the step's own result."""
    # ‖·‖∞ is finite exactly where every entry is (max propagates NaN), and the stopping rule
    # takes these norms anyway: XLA computes each once (issue 20: fewer reductions).
    params_finite = jnp.isfinite(tree_inf_norm(it.params))
    finite = params_finite & jnp.isfinite(it.value) & jnp.isfinite(tree_inf_norm(it.grad))
    converged = finite & converged
    result = RESULTS.where(converged, RESULTS.successful, result)
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    # -inf objective (or blown-up params) is divergence rather than an arithmetic accident.
    diverged = diverged | (it.value == -jnp.inf) | ~params_finite
    result = RESULTS.where(diverged & ~converged & ~jnp.isnan(it.value), RESULTS.diverged, result)
    done = converged | (result != RESULTS.successful)
    return done, result


def start_minimizer(solver: AbstractMinimizer, fn, params0, args):
    """`(it0, rule, state0, done0, result0)`: the start of a minimization, with the stopping
    rule's verdict on the start itself."""
    it0 = evaluate(fn, params0, args)
    state0 = solver.init(fn, it0, args)
    # A constrained solver is judged by its gradient mapping instead of the gradient
    # (`_composite.py`); an unconstrained one sees `it0` unchanged.
    view0 = rule_view(solver, it0, state0)
    rule = stopping.MinimizerRule.start(solver, view0)
    done0, result0 = _classify(it0, rule.converged_at_start(view0), RESULTS.successful,
                               jnp.array(False))
    return it0, rule, state0, done0, result0


def minimizer_step(solver: AbstractMinimizer, fn, args, rule, it: Iterate, state, progress,
                   num_steps):
    """One step of a minimizer and the stopping rule's verdict on it:
    `(new, state, step_counts, result, num_steps, done, progress)`."""
    new, state, step_counts, result = solver.step(fn, it, args, state)
    num_steps = num_steps + 1
    # Both ends of the step under the new state's scale, so the secant estimate compares like
    # with like (a no-op without a constraint).
    converged, progress = rule.converged(rule_view(solver, it, state),
                                         rule_view(solver, new, state), result, progress,
                                         num_steps, solver.error_estimate(state),
                                         solver.step_cut_short(state))
    done, result = _classify(new, converged, result, rule.diverged(new))
    return new, state, step_counts, result, num_steps, done, progress


def check_when(solver: AbstractMinimizer, fn, params0, args):
    """When a minimization that the rule accepted must also pass the curvature check: a
    predicate on the final iterate, or None for never (decided at trace time)."""
    if getattr(solver, "constraint", None) is not None:
        # At a constrained solution ∇f ≠ 0 and the Hessian of f alone says nothing about
        # optimality (the active constraints do): no saddle check.
        return None
    if solver.uses_curvature:
        return lambda it: True  # always, once the rule passed
    if stopping.hessian_products_available(fn, jax.lax.stop_gradient(params0), args):
        # A first-order solver only sees the gradient: where it is exactly zero (a symmetric
        # start can land on a saddle or a maximum) the curvature decides, and elsewhere the
        # Newton-step bound catches a success whose gradient is small only because the
        # curvature is (LBFGS on curvatures 1 … 1e-10 in float32 stopped a unit from x*).
        # The check is compiled either way (`lax.cond`); running it costs 20 products once.
        return lambda it: True
    return None


def _curvature_at(solver: AbstractMinimizer, fn, args, it: Iterate, state, result):
    """`(frozen, curvature)`: the iterate with its params cut from differentiation, and
    `stopping.curvature_check` there with the solver's curvature probe."""
    params = jax.lax.stop_gradient(it.params)
    frozen = eqx.tree_at(lambda i: i.params, it, params)
    hvp = solver.curvature_probe(fn, params, args, state)
    return frozen, stopping.curvature_check(lambda p: fn(p, args)[0], hvp, frozen, result,
                                            solver.rtol, solver.atol)


def final_check(solver: AbstractMinimizer, fn, args, when, it: Iterate, state, result,
                lazy: bool = False):
    """`(result, counts)` after the curvature check at the point where a minimization
    ended, run only where the result is `successful` and `when(it)`. `lazy`: gate it with a
    loop of zero or one trips instead of `lax.cond`, so that under `vmap` (where a `cond`
    becomes a select and runs both sides) it costs only when some problem needs it."""
    def check():
        curvature = _curvature_at(solver, fn, args, it, state, result)[1]
        return curvature.result, curvature.num_hvp, curvature.num_fun

    def skip():
        return result, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)

    ok = (result == RESULTS.successful) & when(it)
    if lazy:
        def once(carry):
            return (*check(), jnp.array(False))
        result, num_hvp, num_fun, _ = while_loop(lambda c: c[-1], once, (*skip(), ok),
                                                 max_steps=1)
    else:
        result, num_hvp, num_fun = jax.lax.cond(ok, check, skip)
    return result, Counts.of(hvp=num_hvp, fun=num_fun)


def run_minimizer(
    solver: AbstractMinimizer, fn, params0, args, max_steps: int, callback=None,
    escape_saddles: bool = False,
) -> LoopOutput:
    """Run `solver` from `params0` until the stopping rule of `stopping.py` passes, a step
    reports failure, a non-finite value appears, or `max_steps` steps have been taken.

    Where the rule passes, the curvature is checked (`stopping.curvature_check`; for
    first-order solvers only where f has Hessian-vector products).
    From a saddle the solve steps down along negative curvature (`stopping.escape`) and goes
    on from there with a fresh solver state, up to `stopping.ESCAPES` times within the same
    `max_steps`, when `escape_saddles`. The check then runs inside the loop as a loop of zero
    or one trips (not a `lax.cond`), so under `vmap` it costs only in the steps where some
    problem needs it, and every piece is traced once; but XLA compiles that loop about twice
    as slowly (measured in benchmarks/RESULTS.md), so by default the check runs once after
    the loop and a saddle ends the solve as `saddle_point`."""
    it0, rule, state0, done0, result0 = start_minimizer(solver, fn, params0, args)
    no_steps = jnp.zeros((), jnp.int32)
    when = check_when(solver, fn, params0, args)

    def value_fn(p):
        return fn(p, args)[0]

    if not escape_saddles:
        return _check_after(solver, fn, args, when, it0, rule, state0, done0, result0,
                            max_steps, callback)

    def check(it, state, counts, result, done, progress, escapes, need):
        """The curvature check at a point the rule accepted, and the step down from a
        saddle: a loop of one trip where `need`, of none elsewhere."""
        def once(carry):
            it, state, counts, result, done, progress, escapes, _ = carry
            frozen, curvature = _curvature_at(solver, fn, args, it, state, result)
            result = curvature.result
            counts = counts + Counts.of(hvp=curvature.num_hvp, fun=curvature.num_fun)
            can_escape = (result == RESULTS.saddle_point) & (escapes < stopping.ESCAPES)
            new_params, found, trials = stopping.escape(value_fn, frozen, curvature,
                                                        can_escape)
            escaped = can_escape & found

            def restart():  # a fresh start where the escape landed
                new_it = evaluate(fn, new_params, args)
                return new_it, solver.init(fn, new_it, args)

            it, state = jax.lax.cond(escaped, restart, lambda: (it, state))
            counts = counts + Counts.of(
                fun=trials, grad=escaped.astype(jnp.int32) * (1 + solver.init_gradients()))
            progress = jax.tree_util.tree_map(lambda a, b: jnp.where(escaped, a, b),
                                              rule.no_step(it0), progress)
            result = RESULTS.where(escaped, RESULTS.successful, result)
            return (it, state, counts, result, done & ~escaped, progress,
                    escapes + escaped.astype(jnp.int32), jnp.array(False))

        carry = (it, state, counts, result, done, progress, escapes, need)
        return while_loop(lambda c: c[-1], once, carry, max_steps=1)[:-1]

    def needs_check(it, done, result):
        if when is None:
            return jnp.array(False)
        return done & (result == RESULTS.successful) & when(it)

    def cond(carry):
        num_steps, done, pending = carry[4], carry[5], carry[8]
        return (~done & (num_steps < max_steps)) | pending

    def body(carry):
        it, state, counts, _, num_steps, _, progress, escapes, pending = carry

        def take_step():
            new, new_state, step_counts, result, steps, done, new_progress = minimizer_step(
                solver, fn, args, rule, it, state, progress, num_steps)
            if callback is not None:
                report_step(callback, steps, it.params, new.params,
                            (new.value, tree_inf_norm(rule_view(solver, new, new_state).grad)),
                            new_state)
            return new, new_state, counts + step_counts, result, steps, done, new_progress

        def start_converged():  # round 0 found the start converged: only the check is due
            return it, state, counts, carry[3], num_steps, carry[5], progress

        it, state, counts, result, num_steps, done, progress = jax.lax.cond(
            pending, start_converged, take_step)
        need = needs_check(it, done, result)
        it, state, counts, result, done, progress, escapes = check(
            it, state, counts, result, done, progress, escapes, need)
        return it, state, counts, result, num_steps, done, progress, escapes, jnp.array(False)

    carry0 = (it0, state0, Counts.of(grad=1 + solver.init_gradients()), result0, no_steps,
              done0, rule.no_step(it0), no_steps, needs_check(it0, done0, result0))
    it, state, counts, result, num_steps, done, progress, *_ = while_loop(
        cond, body, carry0, max_steps=max_steps + 1)
    result = RESULTS.where(done, result, RESULTS.max_steps_reached)
    return LoopOutput(it, state, counts, result, num_steps,
                      _shortfall(solver, rule, it, state, progress))


def _shortfall(solver, rule, it, state, progress):
    return rule.shortfall(rule_view(solver, it, state), progress, solver.error_estimate(state))


def _loop(step, carry0, max_steps: int):
    """The plain loop of both front-door kinds: `step(point, state, progress, num_steps)` →
    (new, state, counts, result, num_steps, done, progress) until done or `max_steps`; a loop
    that ran out of steps ends `max_steps_reached`. Returns (point, state, counts, result,
    num_steps, progress)."""

    def cond(carry):
        num_steps, done = carry[4], carry[5]
        return ~done & (num_steps < max_steps)

    def body(carry):
        point, state, counts, _, num_steps, _, progress = carry
        new, state, step_counts, result, num_steps, done, progress = step(
            point, state, progress, num_steps)
        return new, state, counts + step_counts, result, num_steps, done, progress

    point, state, counts, result, num_steps, done, progress = while_loop(
        cond, body, carry0, max_steps=max_steps)
    return (point, state, counts, RESULTS.where(done, result, RESULTS.max_steps_reached),
            num_steps, progress)


def _check_after(solver, fn, args, when, it0, rule, state0, done0, result0, max_steps,
                 callback) -> LoopOutput:
    """`run_minimizer` without escapes: the loop, then one curvature check where it ended."""

    def step(it, state, progress, num_steps):
        out = minimizer_step(solver, fn, args, rule, it, state, progress, num_steps)
        new, state, num_steps = out[0], out[1], out[4]
        if callback is not None:
            report_step(callback, num_steps, it.params, new.params,
                        (new.value, tree_inf_norm(rule_view(solver, new, state).grad)), state)
        return out

    carry0 = (it0, state0, Counts.of(grad=1 + solver.init_gradients()), result0,
              jnp.zeros((), jnp.int32), done0, rule.no_step(it0))
    it, state, counts, result, num_steps, progress = _loop(step, carry0, max_steps)
    shortfall = _shortfall(solver, rule, it, state, progress)
    if when is None:
        return LoopOutput(it, state, counts, result, num_steps, shortfall)
    result, check_counts = final_check(solver, fn, args, when, it, state, result)
    return LoopOutput(it, state, counts + check_counts, result, num_steps, shortfall)


class SolverOutput(eqx.Module):
    point: Point
    state: Any
    counts: Counts
    result: RESULTS
    num_steps: jax.Array
    measure0: jax.Array | None = None  # the door's `measure` at the start (for messages)


def start_solver(solver: AbstractIterativeSolver, fn, y0, args):
    """`(point0, state0, counts0, done0, result0)`: the start of an equation solve, with the
    solver's verdict on the start itself."""
    point0 = evaluate_point(fn, y0, args)
    state0, counts0, done0, result0 = solver.init(fn, point0, args)
    done0, result0 = _classify_point(point0, done0, result0)
    return point0, state0, Counts.of(fun=1) + counts0, done0, result0


def solver_step(solver: AbstractIterativeSolver, fn, args, point: Point, state, progress,
                num_steps):
    """One step of an equation solver and the verdict on it (the solver's own test, confirmed
    by the step test of `stopping.py` where `confirm_by_step`):
    `(new, state, step_counts, result, num_steps, done, progress)`."""
    new, state, step_counts, done, result = solver.step(fn, point, args, state)
    num_steps = num_steps + 1
    if solver.confirm_by_step:
        accepted = result == RESULTS.successful
        converged, progress = stopping.equation_converged(
            point.y, new.y, done, accepted, progress, getattr(solver, "rtol", None),
            num_steps, solver.steps_estimate_error, solver.step_fraction(state))
        done = converged | ~accepted
    done, result = _classify_point(new, done, result)
    return new, state, step_counts, result, num_steps, done, progress


def run_solver(solver: AbstractIterativeSolver, fn, y0, args, max_steps: int, callback=None,
               measure=None) -> SolverOutput:
    """Run a least-squares, root-finding or fixed-point `solver` from `y0` until it reports
    `done`, a non-finite value appears, or `max_steps` steps have been taken. `measure(point)`
    is the scalar the callback reports (e.g. ½‖r‖² or ‖F‖∞). Root finders and fixed-point
    solvers (`confirm_by_step`) must also pass the step test of `stopping.py`."""
    point0, state0, counts0, done0, result0 = start_solver(solver, fn, y0, args)
    carry0 = (point0, state0, counts0, result0, jnp.zeros((), jnp.int32), done0,
              stopping.Progress.none(result_dtype(y0)))

    def step(point, state, progress, num_steps):
        out = solver_step(solver, fn, args, point, state, progress, num_steps)
        new, state, num_steps = out[0], out[1], out[4]
        if callback is not None:
            report_step(callback, num_steps, point.y, new.y, (measure(new),), state)
        return out

    point, state, counts, result, num_steps, _ = _loop(step, carry0, max_steps)
    measure0 = None if measure is None else measure(point0)
    return SolverOutput(point, state, counts, result, num_steps, measure0)


def _classify_point(point: Point, done, result: RESULTS):
    finite = tree_all_finite(point.y) & tree_all_finite(point.f)
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    done = jnp.asarray(done) | (result != RESULTS.successful)
    return done, result
