"""`every_member_cond`: a `lax.cond` that stays a branch under `jax.vmap`, for work that is
done only when some member of a batch needs it (the optimizers' amortized refreshes, the
default adjoint's dense fallback)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.custom_batching import custom_vmap


def every_member_cond(pred, true_fn, false_fn, *operands):
    """`lax.cond(pred, true_fn, false_fn, *operands)` that stays a branch under `jax.vmap`.

    The optimizers amortize their costly work (eigendecompositions, roots, inverses) by
    running it under `lax.cond` every T steps. Under `jax.vmap` over an ensemble the step
    count is batched, so JAX turns the `cond` into a select that runs both branches at every
    step: soap's step took 5.4× the time of the same models trained one after the other,
    shampoo's 3.8×, kfac's 3.2× (four deep autoencoders, one core); with this, 1.18×, 1.12×
    and 1.08× (AdamW's own: 1.08×). Here the batched case branches on the
    whole batch instead: `true_fn` alone when every member's `pred` holds, `false_fn` alone
    when none does, and both with a per-member select only when the members disagree (some
    skipped a non-finite step). Differentiation goes through the plain `lax.cond` (a
    `custom_jvp` whose rule is `lax.cond`'s), so forward and reverse mode through an update
    still work (reverse mode through a *vmapped* update needs a recent jax: it fails on jax
    0.4.33, which has no transpose rule for the `stop_gradient` its batched `custom_jvp`
    leaves; it works on 0.10).
    `true_fn` and `false_fn` must take everything they read as `operands` (no traced
    closures) and return floating-point arrays (operands may be integers: the step count);
    the JVP rule's tangent conventions for integer outputs differ between jax versions."""
    def plain(pred, operands):
        return jax.lax.cond(pred, true_fn, false_fn, *operands)

    @custom_vmap
    def batched(pred, operands):
        return plain(pred, operands)

    @batched.def_vmap
    def rule(axis_size, in_batched, pred, operands):
        pred_batched, ops_batched = in_batched
        ops = jtu.tree_map(
            lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x)),
            operands, ops_batched)

        def each(fn):
            return lambda o: jax.vmap(lambda members: fn(*members))(o)

        if not pred_batched:
            out = jax.lax.cond(pred, each(true_fn), each(false_fn), ops)
        else:
            def mixed(o):
                yes, no = each(true_fn)(o), each(false_fn)(o)
                return jtu.tree_map(
                    lambda a, b: jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - 1)),
                                           a, b), yes, no)

            out = jax.lax.cond(
                jnp.all(pred), each(true_fn),
                lambda o: jax.lax.cond(jnp.any(pred), mixed, each(false_fn), o), ops)
        return out, jtu.tree_map(lambda _: True, out)

    @jax.custom_jvp
    def branch(pred, operands):
        return batched(pred, operands)

    @branch.defjvp
    def branch_jvp(primals, tangents):
        pred, operands = primals
        # integer operands (a step count) take float0 tangents (older jax hands int zeros)
        tangents = jtu.tree_map(
            lambda x, t: t if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
            else np.zeros(jnp.shape(x), jax.dtypes.float0), operands, tangents[1])
        return jax.jvp(lambda o: plain(pred, o), (operands,), (tangents,))

    return branch(pred, operands)
