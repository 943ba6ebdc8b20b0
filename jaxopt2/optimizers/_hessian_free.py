"""Hessian-free optimization (Martens 2010) as an optax gradient transformation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._tree import tree_scale, tree_zeros_like
from ._checks import check_number, check_state
from ._common import DampedNewton, ScalarOrSchedule, guard, scalar


class HessianFreeState(NamedTuple):
    count: jax.Array  # int32: steps taken (skipped steps do not count)
    damping: jax.Array  # λ for the next step
    direction: Any  # the last CG solution p (params-shaped), warm start of the next solve
    rho: jax.Array  # reduction ratio of the last step (0 when rejected or not measured)
    cg_steps: jax.Array  # int32: curvature products of the last inner solve


def hessian_free(
    learning_rate: ScalarOrSchedule = 1.0, *, model_fn: Callable | None = None,
    loss_fn: Callable | None = None, curvature: str | None = None, damping: float = 1.0,
    adapt_damping: bool = True, cg_max_steps: int = 20, cg_rtol: float = 1e-2,
    warm_start_decay: float = 0.95, precision: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free optimization (Martens 2010): a truncated Newton step on the minibatch,

        (C + λI) p = −g   (solved approximately by conjugate gradients),
        update = learning_rate · p,

    with C the generalized Gauss-Newton matrix Jᵀ∇²L J of loss_fn ∘ model_fn (`curvature=
    "ggn"`, the default when `model_fn`/`loss_fn` are given; PSD for convex losses, so CG never
    meets negative curvature) or the Hessian of `value_fn` (`curvature="hessian"`, the default
    otherwise; CG stops at negative curvature with a descent direction). C is never formed:
    CG uses matrix-free products, at most `cg_max_steps` per step, and stops at
    ‖(C + λI)p + g‖ ≤ `cg_rtol`·‖g‖.

    **Damping** (Levenberg-Marquardt, Martens' rule). After the step s = learning_rate·p the
    minibatch loss is evaluated once more, and the reduction ratio of the actual to the
    predicted change,

        ρ = (f(θ + s) − f(θ)) / q(s),   q(s) = gᵀs + ½ sᵀCs,

    sets the damping of the next step: λ ← 1.5λ if ρ < 1/4, λ ← (2/3)λ if ρ > 3/4. A step
    that does not decrease the minibatch loss (or whose loss is not finite) is rejected:
    the update is zero and λ ← 1.5λ. λ stays within [eps, 1/eps] of the parameter dtype.
    `adapt_damping=False` keeps λ = `damping` fixed and takes every step, which saves the
    extra loss evaluation.

    **Held-out damping.** Measured on the minibatch the step was fitted to, ρ is biased
    upward: the quadratic model fitted that minibatch, so ρ ≈ 1 (exactly 1 for a linear
    least-squares model) and λ shrinks every step to the float floor, while the step
    overfits the minibatch. Pass a different minibatch, `update(..., batch=b,
    heldout_batch=h)` (or `heldout_value_fn=` with `value_fn`), and λ follows the ratio on
    h instead, with h's own gradient and curvature: ρ_h = (f_h(θ + s) − f_h(θ)) /
    (g_hᵀs + ½ sᵀC_h s) (Martens 2010 measures ρ on a separate minibatch). The step is still
    accepted or rejected on b. Cost: one more gradient, one curvature product and two loss
    evaluations on h; `state.rho` is then ρ_h.

    **Curvature minibatch.** `update(..., batch=b, curvature_batch=c)` (with
    `model_fn`/`loss_fn`) takes the curvature products, CG's and the ratio's sᵀCs, on c
    while the gradient and the losses stay b's: Martens (2010) fits the quadratic model's
    curvature on a fraction of the gradient's minibatch, where a product costs less and
    the curvature needs fewer examples than the gradient (e.g. c = the first quarter of
    b: CG's products cost a quarter).

    **Warm start.** CG starts from 0.95·p_prev (`warm_start_decay`), the decayed previous
    solution: consecutive minibatch systems are similar, so CG continues where it stopped
    (Martens §4.5). The warm start is dropped when its quadratic model value is not below
    that of p = 0.

    **Arguments:** `learning_rate` (float or optax schedule; 1 is the Newton step, the damping
    does the step-size control); `model_fn(params, batch) -> outputs` and
    `loss_fn(outputs, batch) -> scalar` for Gauss-Newton products (then pass `batch=` to
    `update`); `curvature` ("ggn", "hessian" or None for automatic); `damping` (the initial
    λ, relative to the curvature's scale; a poor value costs a few steps of adaptation);
    `cg_max_steps`, `cg_rtol`, `warm_start_decay` as above; `precision`: a
    `jaxopt2.MixedPrecision(jnp.bfloat16)` runs the curvature products (the CG products and
    the ratio's sᵀCs) in bfloat16 on a bfloat16 copy of the parameters, the direction and
    the minibatch, while the gradient, CG's vectors, the losses and λ stay in the
    parameters' dtype (docs/precision.md; with `inject_hyperparams` add "precision" to
    `static_args`). The state is a
    `HessianFreeState` (`state.damping` is the current λ, `state.rho` the last ratio).

    `optax.inject_hyperparams(jaxopt2.optimizers.hessian_free)(learning_rate=...)` keeps
    `learning_rate` and the other numeric hyperparameters in the state, where a schedule or
    the training loop can change them between steps; with `model_fn`/`loss_fn`, add
    `static_args=("model_fn", "loss_fn")` (optax takes every callable for a schedule).

    Defaults: 20 CG steps with a 1e-2 residual tolerance are enough on small networks (with
    the warm start the effective number of CG iterations accumulates over steps); raise
    `cg_max_steps` for large, ill-conditioned models and minibatches.

    Reference: J. Martens, "Deep learning via Hessian-free optimization", ICML 2010;
    J. Martens and I. Sutskever, "Training deep and recurrent networks with Hessian-free
    optimization", Neural Networks: Tricks of the Trade, 2012.

    ```python
    import jax, jax.numpy as jnp, optax, jaxopt2
    X = jax.random.normal(jax.random.key(0), (64, 3))
    batch = (X, jnp.tanh(X @ jnp.array([1.0, -2.0, 0.5])))
    model_fn = lambda p, b: jnp.tanh(b[0] @ p["w"])
    loss_fn = lambda out, b: 0.5 * jnp.mean((out - b[1]) ** 2)
    opt = jaxopt2.optimizers.hessian_free(model_fn=model_fn, loss_fn=loss_fn)
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    for _ in range(5):
        grads = jax.grad(lambda p: loss_fn(model_fn(p, batch), batch))(params)
        updates, state = opt.update(grads, state, params, batch=batch)
        params = optax.apply_updates(params, updates)
    ```
    """
    newton = DampedNewton("hessian_free", learning_rate, model_fn=model_fn, loss_fn=loss_fn,
                          curvature=curvature, cg_max_steps=cg_max_steps, cg_rtol=cg_rtol,
                          adaptive=adapt_damping, grow=1.5, shrink=2.0 / 3.0,
                          precision=precision)
    check_number("damping", damping, low=0.0, low_open=True)
    check_number("warm_start_decay", warm_start_decay, low=0.0, high=1.0)

    def init(params):
        dtype = newton.init_dtype(params)
        return HessianFreeState(
            count=jnp.zeros((), jnp.int32), damping=scalar(damping, dtype),
            direction=tree_zeros_like(params), rho=scalar(0.0, dtype),
            cg_steps=jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, *, value_fn=None, batch=None, value=None,
               heldout_batch=None, heldout_value_fn=None, curvature_batch=None,
               **extra_args):
        del extra_args
        if params is not None:
            check_state("hessian_free", "state.direction", state.direction, params)
        # λ is the state's: Martens' rule adapts λ itself.
        out = newton(grads, params, value_fn, batch, value, count=state.count,
                     factor=state.damping, rho=state.rho,
                     damping=lambda g, dtype: state.damping,
                     x0=tree_scale(warm_start_decay, state.direction),
                     heldout_batch=heldout_batch, heldout_value_fn=heldout_value_fn,
                     curvature_batch=curvature_batch)
        new_state = HessianFreeState(state.count + 1, out.factor, out.direction, out.rho,
                                     out.cg_steps.astype(jnp.int32))
        return guard(out.finite, out.step, new_state, state)

    return optax.GradientTransformationExtraArgs(init, update)
