"""What every front door shares: input preparation, statistics and raising on failure."""

from __future__ import annotations

import functools
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap

from ._base import Counts
from ._checks import check_args, check_params, wrap_objective
from ._compiled import note_detail
from ._results import RESULTS, status_name
from ._verbose import with_verbose


def check_max_steps(max_steps) -> None:
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 0:
        raise ValueError(f"`max_steps` must be a non-negative Python int; got {max_steps!r}.")


def step_budget(solver, max_steps):
    """`max_steps`, or where it is None the solver's own default (`default_max_steps`:
    few for Newton-type solvers, more for quasi-Newton and first-order ones)."""
    return getattr(solver, "default_max_steps", 256) if max_steps is None else max_steps


def check_solver(solver, kinds, example: str, door: str) -> None:
    if not isinstance(solver, kinds):
        raise TypeError(f"`solver` for jaxopt2.{door} must be one of its solvers such as "
                        f"{example}; got {type(solver).__name__}.")


def prepare(fun, params0, args, has_aux: bool, root: str):
    """Check the inputs and return `(params0, fn, args)`: params as arrays, `fn` returning
    `(out, aux)`, `args` with strong dtypes."""
    params0 = check_params(params0, root)
    check_args(args)
    fn = wrap_objective(fun, has_aux)
    # Strong dtypes: otherwise a weakly-typed Python scalar in `args` traces differently inside
    # the derivative rules than here, and the closure-converted `fn` would refuse it.
    args = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, x.dtype) if eqx.is_array(x) else x, args)
    return params0, fn, args


def check_concrete_inputs(arguments, root: str) -> None:
    """The checks of a front door that need concrete values (NaN or infinity in the start or
    in `args`), run before a top-level call compiles (`_compiled`)."""
    check_params(arguments[root], root)
    check_args(arguments["args"])


def open_door(door: str, *, solver, kinds, example: str, max_steps, callback, verbose: bool,
              fun, x0, args, has_aux: bool, root: str):
    """What every front door does first: check `solver` (one of `kinds`; `example` is named
    in the error) and `max_steps`, wrap `callback` for `verbose`, and `prepare` the inputs.
    Returns `(x0, fn, args, callback)`."""
    check_solver(solver, kinds, example, door)
    check_max_steps(max_steps)
    callback = with_verbose(callback, verbose, solver, door)
    x0, fn, args = prepare(fun, x0, args, has_aux, root)
    return x0, fn, args, callback


def stats(counts: Counts, num_steps) -> dict:
    return dict(num_steps=num_steps, num_fun=counts.fun, num_grad=counts.grad,
                num_hvp=counts.hvp, num_jvp=counts.jvp, num_vjp=counts.vjp,
                num_hessian=counts.hessian, num_jac=counts.jac)


def raise_if_failed(token, status: RESULTS,
                    hint: str = "Pass throw=False to return the status instead of raising.",
                    problem=None, detail=None):
    """Raise `status`'s message unless it is `successful`; a no-op under a `vmap` over
    problems (each problem's status is reported instead). Returns `token` with the check
    attached.

    `problem` (an array that is batched exactly when the problems are) tells a `vmap` over
    problems from one over tangents: `jax.jacfwd` vmaps the tangent rules of one problem, and
    there a failure in any tangent must raise, not vanish.

    `detail`: optional `[num_steps, first ratio, second ratio, kind]`, which a
    `max_steps_reached` message then reports: by how much the tolerance was missed
    (`shortfall_detail` for a minimization, `equation_detail` for the equation doors)."""
    code = status._value
    detail = _NO_DETAIL if detail is None else jnp.asarray(detail, jnp.float32)
    if not isinstance(code, jax.core.Tracer) and not isinstance(detail, jax.core.Tracer):
        if int(code) != RESULTS.successful._value:
            raise RuntimeError(f"jaxopt2: solve failed ({status_name(status)}): "
                               f"{RESULTS[status]}{describe(int(code), detail)}\n{hint}")
        return token
    # Without `problem`, any batching of the status is a batch of problems.
    marker = code if problem is None else _marker(problem)
    return _checker(hint)(token, code, marker, detail)


_NO_DETAIL = np.full(4, np.nan, np.float32)

# The last entry of a `detail`: which door's measures it holds.
_MINIMIZE, _ROOT, _FIXED_POINT, _LEAST_SQUARES, _RESIDUAL_NO_TOL = 0, 1, 2, 3, 4


def shortfall_detail(num_steps, shortfall):
    """The `detail` of `raise_if_failed` for a minimization: steps taken and
    `MinimizerRule.shortfall`."""
    return jnp.concatenate([jnp.asarray(num_steps, jnp.float32)[None],
                            jnp.asarray(shortfall, jnp.float32),
                            jnp.full((1,), _MINIMIZE, jnp.float32)])


def equation_detail(door: str, solver, num_steps, measure, measure0, dtype):
    """The `detail` of an equation door: steps taken and, for `root_find` and `fixed_point`
    with a solver that has `rtol`/`atol` (the residual test max|F| ≤ atol + rtol·max|F(y₀)|
    of every such solver), the final residual over that tolerance; for `least_squares`
    (MINPACK's relative tests have no one tolerance) and other solvers, the final measure
    over its value at the start."""
    from ._base import default_root_rtol

    measure = jnp.asarray(measure, jnp.float32)
    measure0 = jnp.asarray(measure0, jnp.float32)
    residual_test = (hasattr(solver, "rtol") and hasattr(solver, "atol")
                     and not getattr(type(solver), "tolerance_on_bracket", False))
    if door != "least_squares" and residual_test:
        rtol = default_root_rtol(dtype) if solver.rtol is None else solver.rtol
        tol = solver.atol + rtol * measure0
        ratio = measure / jnp.where(tol > 0, tol, jnp.inf)
        kind = _ROOT if door == "root_find" else _FIXED_POINT
    else:
        ratio = measure / jnp.where(measure0 > 0, measure0, jnp.inf)
        kind = _LEAST_SQUARES if door == "least_squares" else _RESIDUAL_NO_TOL
    return jnp.stack([jnp.asarray(num_steps, jnp.float32), ratio,
                      jnp.asarray(jnp.nan, jnp.float32), jnp.asarray(kind, jnp.float32)])




def describe(code: int, detail) -> str:
    """The sentence a `max_steps_reached` message gets from `detail`: the ratio of each
    achieved stopping measure to the one requested, so the user can tell a near miss (give
    a few more steps) from a solve that is nowhere near (loosen, rescale, change solver)."""
    detail = np.asarray(detail, np.float64)
    if code != RESULTS.max_steps_reached._value or not np.isfinite(detail[0]):
        return ""
    steps, first, second, kind = detail
    after = f" After {int(steps)} steps"
    if kind == _ROOT:
        return (f"{after} max|F(y)| was {first:.3g}× its tolerance atol + rtol·max|F(y₀)| "
                "(at most 1× to stop).")
    if kind == _FIXED_POINT:
        return (f"{after} max|g(y) − y| was {first:.3g}× its tolerance atol + "
                "rtol·max|g(y₀) − y₀| (at most 1× to stop).")
    if kind == _LEAST_SQUARES:
        return (f"{after} the cost ½‖r‖² was {first:.3g}× its value at the start (the solver "
                "stops on MINPACK's relative tests: ftol, xtol, gtol).")
    if kind == _RESIDUAL_NO_TOL:
        return f"{after} the residual was {first:.3g}× its value at the start."
    error = (f"{second:.3g}× rtol·max(‖x‖∞, 1)" if np.isfinite(second)
             else "not estimated yet (the steps have not started to contract)")
    return (f"{after} ‖∇f‖∞ was {first:.3g}× its tolerance "
            f"atol + rtol·‖∇f(x₀)‖∞ and the estimated distance to the minimizer {error} "
            "(both must be at most 1×).")


DERIVATIVE_HINT = (
    "The derivatives of a failed solve are not those of a solution. Pass throw=False to get "
    "NaN derivatives for the failed problems instead, or differentiate the point reached "
    "anyway with adjoint=jaxopt2.ImplicitAdjoint(differentiate_unconverged=True) (e.g. a "
    "warm-started inner solve of a bilevel loop stopped at its step budget).")


def adjoint_for(adjoint, throw: bool):
    """The front door's `throw=False` also silences the adjoint's own failure checks (its
    derivatives are then NaN where the adjoint solve fails, as the primal's status is only
    reported): one switch for the whole solve. `throw=True` leaves the adjoint's setting."""
    if throw or not getattr(adjoint, "throw", False):
        return adjoint
    return eqx.tree_at(lambda a: a.throw, adjoint, False)


def finish(params, status: RESULTS, adjoint, throw: bool, detail=None):
    """The front doors' last step: raise on failure (`throw`) and guard the derivatives.
    `detail`: as in `raise_if_failed`."""
    note_detail(detail)  # for a failure raised after a compiled top-level call (_compiled)
    if throw:  # first: a concrete failure raises here, with the plain hint
        params = raise_if_failed(params, status, detail=detail)
    unconverged = getattr(adjoint, "differentiate_unconverged", False)
    return guard_derivatives(params, status, throw=throw, unconverged=unconverged,
                             hint=DERIVATIVE_HINT, detail=detail)


def guard_derivatives(params, status: RESULTS, *, throw: bool, unconverged: bool, hint: str,
                      detail=None):
    """`params`, whose derivatives (forward and reverse mode) are NaN for a problem whose
    solve failed, unless `unconverged` (the user asked for derivatives of whatever point was
    reached). With `throw` they also raise outside a `vmap` over problems. The check sits in
    the derivative path itself, so it holds under `jit(grad)`, `jit(jacfwd)` and
    `jit(hessian)`, where the primal output (and any check attached to it) is dropped."""
    ok = status == RESULTS.successful
    if unconverged:
        ok = jnp.ones_like(ok)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    scale = jnp.where(ok, 1.0, jnp.nan).astype(dtype)
    if throw:
        scale = raise_if_failed(scale, status, hint, detail=detail)
    return _scale_tangent(params, scale)


@jax.custom_jvp
def _scale_tangent(params, scale):
    return params


@_scale_tangent.defjvp
def _scale_tangent_jvp(primals, tangents):
    params, scale = primals
    t_params, _ = tangents
    # `scale` is a primal value that the tangent (and so the transposed, reverse-mode rule)
    # multiplies by: the backward pass needs it, so its check cannot be dropped.
    return params, jax.tree_util.tree_map(
        lambda t: t * scale.astype(t.dtype) if t is not None else t, t_params)


def _marker(problem):
    leaf = jax.tree_util.tree_leaves(problem)[0]
    return jnp.ravel(leaf)[:1].sum() != 0 if leaf.size else jnp.zeros((), bool)


@functools.cache
def _checker(hint: str):
    """The check for one hint (a static string): custom_vmap and custom_jvp take arrays only."""
    names = {int(item._value): name for name, item in RESULTS._name_to_item.items()}
    messages = [f"jaxopt2: solve failed ({names[i]}): {m}\n{hint}" if m else m
                for i, m in enumerate(RESULTS._index_to_message)]

    @custom_vmap
    def check(token, code, marker, detail):
        del marker
        failed = code != RESULTS.successful._value
        if os.environ.get("EQX_ON_ERROR", "raise") != "raise" or jax.default_backend() == "tpu":
            # equinox's other modes (nan, breakpoint, off) and its TPU workaround (where XLA
            # drops a callback's error) stay available through the environment variable.
            return eqx.branched_error_if(token, failed, code, messages)
        struct = jax.eval_shape(lambda: token)

        def fail(c, d):
            message = messages[int(c)]
            extra = describe(int(c), d)
            if extra:  # before the hint line, after the status's own message
                head, _, tail = message.partition("\n")
                message = f"{head}{extra}\n{tail}"
            _raise_alone(message)
            return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), struct)

        # The callback runs only on failure: a successful solve pays no host round trip.
        return jax.lax.cond(failed, lambda: jax.pure_callback(fail, struct, code, detail),
                            lambda: token)

    @check.def_vmap
    def check_batched(axis_size, in_batched, token, code, marker, detail):
        del axis_size
        if in_batched[2] or not in_batched[1]:
            return token, in_batched[0]  # a batch of problems: each reports its own status
        # One problem, a batch of tangents (jacfwd): any failure fails the derivative. The
        # reduced code goes through `check` again, so that an outer vmap over problems (where
        # `marker` is batched) still reports per problem instead of raising.
        failed = code != RESULTS.successful._value
        worst = jnp.max(jnp.where(failed, code, 0)).astype(code.dtype)
        if in_batched[3]:
            detail = detail[0]
        return check(token, worst, marker, detail), in_batched[0]

    @jax.custom_jvp
    def checked(token, code, marker, detail):
        return check(token, code, marker, detail)

    @checked.defjvp
    def checked_jvp(primals, tangents):
        token, code, marker, detail = primals
        return checked(token, code, marker, detail), tangents[0]

    return checked


def _frameless(message: str):
    raise RuntimeError(message)
    yield  # a generator: its frame has no caller once it has finished


def _raise_alone(message: str):
    """Raise `RuntimeError(message)` so that XLA's report of it stays short.

    An exception raised in a callback of a compiled program reaches the user as
    `JaxRuntimeError: INTERNAL: CpuCallback error calling callback: <text>`, where the text is
    nanobind's rendering of the Python exception: it walks from the innermost traceback frame
    through its callers (`f_back`) up to the user's own `<module>`, some 15 frames of JAX's
    dispatch, then prints the message. An exception raised in a finished generator has an
    innermost frame with no caller, so the text is one frame and our message (`status.md`)."""
    try:
        next(_frameless(message))
    except RuntimeError as err:
        tb = err.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        raise err.with_traceback(tb) from None
