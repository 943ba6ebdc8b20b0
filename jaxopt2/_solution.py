"""What every front door returns."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from ._results import RESULTS


class Solution(eqx.Module):
    """The result of `jaxopt2.minimize` (and the other front doors).

    - `params`: the solution, same pytree structure and dtypes as `params0`. Differentiable with
      respect to `args` (and to values `fun` closes over) through the solver's adjoint.
    - `value`: what the function returned at `params` (differentiable too): the objective
      for `minimize`, the residuals for `least_squares`, F(y) for `root_find`, g(y) for
      `fixed_point`. **Coming from optimistix**, where `sol.value` is the solution: here the
      solution is `sol.params`. **Coming from jaxopt**, where `run` returns
      `(params, state)`: `sol.params` is the first, `sol.value` replaces `state.value`.
    - `status`: a `RESULTS` item, one per problem under `vmap`. `sol.success` is
      `sol.status == RESULTS.successful`; `print(sol.status)` shows its name
      (`RESULTS.successful`); `int(sol.status)` is its code and `RESULTS[sol.status]` its
      message. Inside `jit` and under `vmap` use the int32 array `sol.status_code` (the same
      as `sol.status.code`) and name it afterwards with `jaxopt2.status_name(code)`.
    - `stats`: `num_steps` and evaluation counts `num_fun` (objective-only), `num_grad`
      (value and gradient), `num_hvp` (curvature-vector products), `num_jvp`, `num_vjp`,
      `num_hessian` (dense Hessians formed), as int32 arrays.
    - `state`: the solver's final state.
    - `aux`: the auxiliary output of `fun` at `params` when `has_aux=True`, else `None`.
    """

    params: Any
    value: jax.Array
    status: RESULTS
    stats: dict[str, jax.Array]
    state: Any
    aux: Any = None

    @property
    def success(self) -> jax.Array:
        """Boolean array: the solve met its tolerance (one entry per problem under `vmap`)."""
        return self.status == RESULTS.successful

    @property
    def status_code(self) -> jax.Array:
        """The int32 status code(s), usable inside `jit` and under `vmap`: return it from a
        jitted function and pass it to `jaxopt2.status_name` outside."""
        return self.status.code
