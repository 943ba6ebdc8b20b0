"""What every front door shares: input preparation, statistics and raising on failure."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from ._base import Counts
from ._checks import check_args, check_params, wrap_objective
from ._results import RESULTS, status_name


def check_max_steps(max_steps) -> None:
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 0:
        raise ValueError(f"`max_steps` must be a non-negative Python int; got {max_steps!r}.")


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


def stats(counts: Counts, num_steps) -> dict:
    return dict(num_steps=num_steps, num_fun=counts.fun, num_grad=counts.grad,
                num_hvp=counts.hvp, num_jvp=counts.jvp, num_vjp=counts.vjp,
                num_hessian=counts.hessian, num_jac=counts.jac)


def raise_if_failed(token, status: RESULTS,
                    hint: str = "Pass throw=False to return the status instead of raising."):
    """Raise `status`'s message unless it is `successful`; a no-op under `vmap` (each
    problem's status is reported instead). Returns `token` with the check attached."""
    code = status._value
    if not isinstance(code, jax.core.Tracer):
        if int(code) != RESULTS.successful._value:
            raise RuntimeError(f"jaxopt2: solve failed ({status_name(status)}): "
                               f"{RESULTS[status]}\n{hint}")
        return token
    return _checked(token, code)


@custom_vmap
def _check_unbatched(token, code):
    return eqx.branched_error_if(token, code != RESULTS.successful._value, code,
                                 RESULTS._index_to_message)


@_check_unbatched.def_vmap
def _check_batched(axis_size, in_batched, token, code):
    del axis_size, code
    return token, in_batched[0]


@jax.custom_jvp
def _checked(token, code):
    return _check_unbatched(token, code)


@_checked.defjvp
def _checked_jvp(primals, tangents):
    token, code = primals
    return _checked(token, code), tangents[0]
