"""The one loop every minimizer runs in."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._base import (
    AbstractIterativeSolver,
    AbstractMinimizer,
    Counts,
    Iterate,
    Point,
    default_rtol,
    evaluate,
    evaluate_point,
)
from ._loops import while_loop
from ._results import RESULTS
from ._tree import result_dtype, tree_all_finite, tree_inf_norm


class LoopOutput(eqx.Module):
    iterate: Iterate
    state: Any
    counts: Counts
    result: RESULTS
    num_steps: jax.Array


def _classify(it: Iterate, tol, result: RESULTS) -> tuple[jax.Array, RESULTS]:
    """Stopping test shared by all minimizers: returns (done, result)."""
    finite = tree_all_finite(it.params) & jnp.isfinite(it.value) & tree_all_finite(it.grad)
    converged = finite & (tree_inf_norm(it.grad) <= tol)
    result = RESULTS.where(converged, RESULTS.successful, result)
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    # -inf objective (or blown-up params) is divergence rather than an arithmetic accident.
    diverged = (it.value == -jnp.inf) | ~tree_all_finite(it.params)
    result = RESULTS.where(diverged & ~jnp.isnan(it.value), RESULTS.diverged, result)
    done = converged | (result != RESULTS.successful)
    return done, result


def run_minimizer(
    solver: AbstractMinimizer, fn, params0, args, max_steps: int, callback=None
) -> LoopOutput:
    """Run `solver` from `params0` until the gradient test passes, a step reports failure,
    a non-finite value appears, or `max_steps` steps have been taken."""
    it0 = evaluate(fn, params0, args)
    rtol = solver.rtol if solver.rtol is not None else default_rtol(result_dtype(params0))
    tol = solver.atol + rtol * tree_inf_norm(it0.grad)
    state0 = solver.init(fn, it0, args)
    done0, result0 = _classify(it0, tol, RESULTS.successful)
    carry0 = (it0, state0, Counts.of(grad=1), result0, jnp.zeros((), jnp.int32), done0)

    def cond(carry):
        *_, num_steps, done = carry
        return ~done & (num_steps < max_steps)

    def body(carry):
        it, state, counts, _, num_steps, _ = carry
        it, state, step_counts, result = solver.step(fn, it, args, state)
        num_steps = num_steps + 1
        done, result = _classify(it, tol, result)
        if callback is not None:
            jax.debug.callback(callback, num_steps, it.params, it.value, tree_inf_norm(it.grad))
        return it, state, counts + step_counts, result, num_steps, done

    it, state, counts, result, num_steps, done = while_loop(cond, body, carry0,
                                                            max_steps=max_steps)
    result = RESULTS.where(done, result, RESULTS.max_steps_reached)
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
    is the scalar the callback reports (e.g. ½‖r‖² or ‖F‖∞)."""
    point0 = evaluate_point(fn, y0, args)
    state0, counts0, done0, result0 = solver.init(fn, point0, args)
    done0, result0 = _classify_point(point0, done0, result0)
    carry0 = (point0, state0, Counts.of(fun=1) + counts0, result0, jnp.zeros((), jnp.int32),
              done0)

    def cond(carry):
        *_, num_steps, done = carry
        return ~done & (num_steps < max_steps)

    def body(carry):
        point, state, counts, _, num_steps, _ = carry
        point, state, step_counts, done, result = solver.step(fn, point, args, state)
        num_steps = num_steps + 1
        done, result = _classify_point(point, done, result)
        if callback is not None:
            jax.debug.callback(callback, num_steps, point.y, measure(point))
        return point, state, counts + step_counts, result, num_steps, done

    point, state, counts, result, num_steps, done = while_loop(cond, body, carry0,
                                                               max_steps=max_steps)
    result = RESULTS.where(done, result, RESULTS.max_steps_reached)
    return SolverOutput(point, state, counts, result, num_steps)


def _classify_point(point: Point, done, result: RESULTS):
    finite = tree_all_finite(point.y) & tree_all_finite(point.f)
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    done = jnp.asarray(done) | (result != RESULTS.successful)
    return done, result
