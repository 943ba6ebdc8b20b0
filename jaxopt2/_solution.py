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
    - `value`: the objective at `params` (differentiable too).
    - `status`: a `RESULTS` item, one per problem under `vmap`. `sol.success` is
      `sol.status == RESULTS.successful`; `RESULTS[sol.status]` is the message.
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
        return self.status == RESULTS.successful
