"""Matrix-free curvature operators as lineax linear operators.

Every operator acts on pytrees shaped like `params` (its `in_structure()` is the structure of
`params`). The data in `args` is closed over, never flattened or copied, so it may be sharded.
"""

from __future__ import annotations

import jax
import lineax as lx


def _structure(params):
    return jax.eval_shape(lambda: params)


def hessian(fun, params, args=None) -> lx.FunctionLinearOperator:
    """The Hessian ∇²f(params) of `fun(params, args) -> scalar`, as a symmetric matrix-free
    operator. Products are forward-over-reverse (`jvp` of `grad`), and the gradient is
    linearised once when the operator is built, so each product costs about one gradient.

    ```python
    H = jaxopt2.curvature.hessian(lambda p, a: jnp.sum(p ** 4), jnp.ones(3))
    H.mv(jnp.ones(3))  # 12 * ones
    ```
    """
    grad_fn = jax.grad(lambda p: fun(p, args))
    _, hvp = jax.linearize(grad_fn, params)
    return lx.FunctionLinearOperator(hvp, _structure(params), tags=lx.symmetric_tag)
