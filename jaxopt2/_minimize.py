"""`jaxopt2.minimize`: the front door for unconstrained minimization."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax.custom_batching import custom_vmap

from ._adjoint import AbstractAdjoint, ImplicitAdjoint, attach_tangent
from ._base import AbstractMinimizer
from ._checks import check_args, check_objective, check_params, wrap_objective
from ._iterate import run_minimizer
from ._results import RESULTS, status_name
from ._solution import Solution


def minimize(
    fun: Callable,
    params0: Any,
    args: Any = None,
    *,
    solver: AbstractMinimizer,
    max_steps: int = 256,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    has_aux: bool = False,
    throw: bool = True,
    callback: Callable | None = None,
) -> Solution:
    """Minimize `fun(params, args)` over `params`, starting from `params0`.

    **Arguments:**

    - `fun`: `fun(params, args) -> scalar` (or `(scalar, aux)` with `has_aux=True`).
    - `params0`: initial parameters, any pytree of floating-point arrays. Dtypes are kept.
    - `args`: any pytree of data and hyperparameters, passed unchanged to `fun`. Never copied
      or flattened, so it may be sharded across devices.
    - `solver`: e.g. `jaxopt2.GradientDescent()`, with its tolerances.
    - `max_steps`: the iteration budget (static).
    - `adjoint`: how `Solution.params` is differentiated; the default `ImplicitAdjoint()` uses
      the implicit function theorem on ∇f(x*, args) = 0 (forward and reverse mode).
    - `throw`: if True, a failed solve raises with a message saying what to try; under `vmap`
      it never raises, so one failing problem cannot stop the others (read `Solution.status`).
      With `throw=False` the status is only reported.
    - `callback`: optional `callback(step, params, value, grad_inf_norm)`, called on the host
      after every step through `jax.debug.callback`. Costs nothing when `None`.

    Nothing here compiles by itself: wrap the call in `jax.jit` (or `eqx.filter_jit`) and it
    compiles once per shape/dtype; `vmap` and `grad` compose from outside.

    **Example:**

    ```python
    import jax.numpy as jnp, jaxopt2
    fun = lambda p, a: jnp.sum((p["w"] - a) ** 2) + p["b"] ** 2
    sol = jaxopt2.minimize(fun, {"w": jnp.zeros(3), "b": jnp.ones(())}, jnp.arange(3.0),
                           solver=jaxopt2.GradientDescent())
    ```
    """
    if not isinstance(solver, AbstractMinimizer):
        raise TypeError(f"`solver` must be a jaxopt2 minimizer such as jaxopt2.LBFGS(); got "
                        f"{type(solver).__name__}.")
    if not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"`max_steps` must be a non-negative Python int; got {max_steps!r}.")
    params0 = check_params(params0)
    check_args(args)
    fn = wrap_objective(fun, has_aux)
    check_objective(fn, params0, args)
    # Strong dtypes: otherwise a weakly-typed Python scalar in `args` traces differently inside
    # the derivative rules than here, and the closure-converted `fn` would refuse it.
    args = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, x.dtype) if eqx.is_array(x) else x, args)
    fn = eqx.filter_closure_convert(fn, params0, args)
    inputs = (fn, args)

    def primal(params0, inputs):
        fn, args = inputs
        out = run_minimizer(solver, fn, params0, args, max_steps, callback)
        return out.iterate.params, out

    def stationarity(params, inputs):
        fn, args = inputs
        return jax.grad(lambda p: fn(p, args)[0])(params)

    tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
    params, out = adjoint.apply(primal, stationarity, params0, inputs, tags)
    value, aux = attach_tangent((out.iterate.value, out.iterate.aux), params, inputs,
                                fn=lambda p, i: i[0](p, i[1]))
    status = out.result
    if throw:
        params = raise_if_failed(params, status)
    c = out.counts
    stats = dict(num_steps=out.num_steps, num_fun=c.fun, num_grad=c.grad, num_hvp=c.hvp,
                 num_jvp=c.jvp, num_vjp=c.vjp, num_hessian=c.hessian)
    return Solution(params=params, value=value, status=status, stats=stats, state=out.state,
                    aux=aux if has_aux else None)


def raise_if_failed(token, status: RESULTS):
    """Raise `status`'s message unless it is `successful`; a no-op under `vmap` (each
    problem's status is reported instead). Returns `token` with the check attached."""
    code = status._value
    if not isinstance(code, jax.core.Tracer):
        if int(code) != RESULTS.successful._value:
            raise RuntimeError(f"jaxopt2: solve failed ({status_name(status)}): "
                               f"{RESULTS[status]}\nPass throw=False to return the status "
                               "instead of raising.")
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
