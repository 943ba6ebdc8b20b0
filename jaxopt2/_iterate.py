"""The one loop every minimizer runs in."""

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


def _classify(it: Iterate, converged, result: RESULTS, diverged) -> tuple[jax.Array, RESULTS]:
    """Shared by all minimizers: returns (done, result) from the convergence decision of
    `stopping.minimizer_converged` and the step's own result."""
    finite = tree_all_finite(it.params) & jnp.isfinite(it.value) & tree_all_finite(it.grad)
    converged = finite & converged
    result = RESULTS.where(converged, RESULTS.successful, result)
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    # -inf objective (or blown-up params) is divergence rather than an arithmetic accident.
    diverged = diverged | (it.value == -jnp.inf) | ~tree_all_finite(it.params)
    result = RESULTS.where(diverged & ~converged & ~jnp.isnan(it.value), RESULTS.diverged, result)
    done = converged | (result != RESULTS.successful)
    return done, result


def run_minimizer(
    solver: AbstractMinimizer, fn, params0, args, max_steps: int, callback=None
) -> LoopOutput:
    """Run `solver` from `params0` until the stopping rule of `stopping.py` passes, a step
    reports failure, a non-finite value appears, or `max_steps` steps have been taken."""
    it0 = evaluate(fn, params0, args)
    rule = stopping.MinimizerRule.start(solver, it0)
    state0 = solver.init(fn, it0, args)
    done0, result0 = _classify(it0, rule.converged_at_start(it0), RESULTS.successful,
                               jnp.array(False))
    carry0 = (it0, state0, Counts.of(grad=1), result0, jnp.zeros((), jnp.int32), done0,
              rule.no_step(it0))

    def cond(carry):
        num_steps, done = carry[4], carry[5]
        return ~done & (num_steps < max_steps)

    def body(carry):
        it, state, counts, _, num_steps, _, progress = carry
        new, state, step_counts, result = solver.step(fn, it, args, state)
        num_steps = num_steps + 1
        converged, progress = rule.converged(it, new, result, progress, num_steps)
        done, result = _classify(new, converged, result, rule.diverged(new))
        if callback is not None:
            report_step(callback, num_steps, it.params, new.params,
                        (new.value, tree_inf_norm(new.grad)), state)
        return new, state, counts + step_counts, result, num_steps, done, progress

    it, state, counts, result, num_steps, done, _ = while_loop(cond, body, carry0,
                                                               max_steps=max_steps)
    result = RESULTS.where(done, result, RESULTS.max_steps_reached)
    params = jax.lax.stop_gradient(it.params)
    if solver.uses_curvature:
        hvp = solver.curvature_probe(fn, params, args, state)
        result, num_hvp = stopping.curvature_check(hvp, it, result)
        counts = counts + Counts.of(hvp=num_hvp)
    elif stopping.hessian_products_available(fn, params, args):
        # A first-order solver only sees the gradient: where it is exactly zero (a symmetric
        # start can land on a saddle or a maximum) the curvature decides.
        exactly_stationary = tree_inf_norm(it.grad) == 0
        hvp = solver.curvature_probe(fn, params, args, state)
        result, num_hvp = stopping.curvature_check(hvp, it, result, exactly_stationary)
        counts = counts + Counts.of(hvp=num_hvp)
    return LoopOutput(it, state, counts, result, num_steps)


class SolverOutput(eqx.Module):
    point: Point
    state: Any
    counts: Counts
    result: RESULTS
    num_steps: jax.Array


def run_solver(solver: AbstractIterativeSolver, fn, y0, args, max_steps: int, callback=None,
               measure=None) -> SolverOutput:
    """Run a least-squares, root-finding or fixed-point `solver` from `y0` until it reports
    `done`, a non-finite value appears, or `max_steps` steps have been taken. `measure(point)`
    is the scalar the callback reports (e.g. ½‖r‖² or ‖F‖∞). Root finders and fixed-point
    solvers (`confirm_by_step`) must also pass the step test of `stopping.py`."""
    point0 = evaluate_point(fn, y0, args)
    state0, counts0, done0, result0 = solver.init(fn, point0, args)
    done0, result0 = _classify_point(point0, done0, result0)
    dtype = result_dtype(y0)
    carry0 = (point0, state0, Counts.of(fun=1) + counts0, result0, jnp.zeros((), jnp.int32),
              done0, stopping.Progress.none(dtype))

    def cond(carry):
        num_steps, done = carry[4], carry[5]
        return ~done & (num_steps < max_steps)

    def body(carry):
        point, state, counts, _, num_steps, _, progress = carry
        new, state, step_counts, done, result = solver.step(fn, point, args, state)
        num_steps = num_steps + 1
        if solver.confirm_by_step:
            accepted = result == RESULTS.successful
            converged, progress = stopping.equation_converged(
                point.y, new.y, done, accepted, progress, getattr(solver, "rtol", None),
                num_steps, solver.steps_estimate_error)
            done = converged | ~accepted
        done, result = _classify_point(new, done, result)
        if callback is not None:
            report_step(callback, num_steps, point.y, new.y, (measure(new),), state)
        return new, state, counts + step_counts, result, num_steps, done, progress

    point, state, counts, result, num_steps, done, _ = while_loop(cond, body, carry0,
                                                                  max_steps=max_steps)
    result = RESULTS.where(done, result, RESULTS.max_steps_reached)
    return SolverOutput(point, state, counts, result, num_steps)


def _classify_point(point: Point, done, result: RESULTS):
    finite = tree_all_finite(point.y) & tree_all_finite(point.f)
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    done = jnp.asarray(done) | (result != RESULTS.successful)
    return done, result
