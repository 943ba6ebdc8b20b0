"""Gradient-regularized Newton (Mishchenko 2021; Doikov & Nesterov) as an optax gradient
transformation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._tree import tree_norm
from ._checks import check_number
from ._common import DampedNewton, ScalarOrSchedule, guard, scalar


class RegularizedNewtonState(NamedTuple):
    count: jax.Array  # int32: steps taken
    lipschitz: jax.Array  # H, the Hessian-Lipschitz estimate for the next step
    damping: jax.Array  # λ = √(H‖g‖) of the last step
    rho: jax.Array  # reduction ratio of the last step (0 when rejected or not measured)


def regularized_newton(
    learning_rate: ScalarOrSchedule = 1.0, *, model_fn: Callable | None = None,
    loss_fn: Callable | None = None, curvature: str | None = None, lipschitz: float = 1.0,
    adaptive: bool = True, cg_max_steps: int = 20, cg_rtol: float = 1e-2,
    precision: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Gradient-regularized Newton (Mishchenko 2021; Doikov & Nesterov) on the minibatch:

        λ = √(H‖g‖),   (C + λI) p = −g   (conjugate gradients),   update = learning_rate · p,

    with C the minibatch Hessian of `value_fn` or its Gauss-Newton matrix (with `model_fn` /
    `loss_fn`). Tying the regularization to the gradient norm is what gives the method its
    global O(1/k²) rate on convex problems with an H-Lipschitz Hessian (no line search): far
    from a minimizer the step is a short, gradient-like one; as ‖g‖ → 0, λ → 0 and it becomes
    the Newton step, with superlinear local convergence. Unlike `hessian_free`, whose damping
    only adapts over steps, λ reacts at once to the size of the gradient of every minibatch.

    **Adapting H** (`adaptive=True`, default). The Lipschitz constant is unknown, so H is
    estimated like a trust-region radius from the reduction ratio of each step,
    ρ = (f(θ + s) − f(θ)) / (gᵀs + ½sᵀCs) (one extra loss evaluation): H ← 2H if ρ < 1/4,
    H ← H/2 if ρ > 3/4. A step that does not decrease the minibatch loss (or whose loss is
    not finite) is rejected: zero update and H ← 2H. This replaces the full-batch solver's
    accept/retry loop (`jaxopt2.RegularizedNewton`), which needs gradients at trial points;
    on a minibatch a rejected step is simply retried on the next one. `adaptive=False` is
    the classical method with the fixed H = `lipschitz` and no extra evaluation.

    **Held-out ratio and curvature minibatch**, as in `hessian_free`: `update(...,
    heldout_batch=h)` (or `heldout_value_fn=`) adapts H from the ratio measured on another
    minibatch h (on the fitted one ρ ≈ 1 and H falls to the float floor), and
    `curvature_batch=c` (with `model_fn`/`loss_fn`) takes the curvature products on c, a
    smaller minibatch than the gradient's.

    **Arguments:** `learning_rate` (float or optax schedule; 1 is the regularized Newton
    step); `model_fn`, `loss_fn`, `curvature` as in `hessian_free`; `lipschitz`, the initial
    (or fixed) H; `cg_max_steps` and `cg_rtol` for the inner CG solve, which stops at
    ‖(C + λI)p + g‖ ≤ `cg_rtol`·‖g‖ (λ > 0 keeps the system well conditioned, so a few
    steps suffice); `precision` (a `jaxopt2.MixedPrecision`) as in `hessian_free`. H stays
    within [eps, 1/eps] of the parameter dtype.

    `optax.inject_hyperparams(jaxopt2.optimizers.regularized_newton)(learning_rate=...)` keeps
    `learning_rate` and the other numeric hyperparameters in the state, where a schedule or
    the training loop can change them between steps; with `model_fn`/`loss_fn`, add
    `static_args=("model_fn", "loss_fn")` (optax takes every callable for a schedule).

    References: K. Mishchenko, "Regularized Newton method with global O(1/k²) convergence",
    SIAM J. Optim. 2023; N. Doikov and Yu. Nesterov, "Gradient regularization of Newton
    method with Bregman distances", Math. Program. 2024.

    ```python
    import jax, jax.numpy as jnp, optax, jaxopt2
    X = jax.random.normal(jax.random.key(0), (64, 3))
    y = (X @ jnp.array([1.0, -2.0, 0.5]) > 0).astype(jnp.float32)
    loss = lambda w: jnp.mean(jnp.logaddexp(0.0, X @ w) - y * (X @ w))
    opt = jaxopt2.optimizers.regularized_newton()
    w = jnp.zeros(3)
    state = opt.init(w)
    for _ in range(5):
        updates, state = opt.update(jax.grad(loss)(w), state, w, value_fn=loss)
        w = optax.apply_updates(w, updates)
    ```
    """
    newton = DampedNewton("regularized_newton", learning_rate, model_fn=model_fn,
                          loss_fn=loss_fn, curvature=curvature, cg_max_steps=cg_max_steps,
                          cg_rtol=cg_rtol, adaptive=adaptive, grow=2.0, shrink=0.5,
                          precision=precision)
    check_number("lipschitz", lipschitz, low=0.0, low_open=True)

    def init(params):
        dtype = newton.init_dtype(params)
        return RegularizedNewtonState(jnp.zeros((), jnp.int32), scalar(lipschitz, dtype),
                                      scalar(0.0, dtype), scalar(0.0, dtype))

    def update(grads, state, params=None, *, value_fn=None, batch=None, value=None,
               heldout_batch=None, heldout_value_fn=None, curvature_batch=None,
               **extra_args):
        del extra_args
        # λ = √(H‖g‖) follows every minibatch's gradient; the rule adapts H.
        out = newton(grads, params, value_fn, batch, value, count=state.count,
                     factor=state.lipschitz, rho=state.rho,
                     damping=lambda g, dtype: jnp.sqrt(state.lipschitz
                                                       * tree_norm(g).astype(dtype)),
                     heldout_batch=heldout_batch, heldout_value_fn=heldout_value_fn,
                     curvature_batch=curvature_batch)
        new_state = RegularizedNewtonState(state.count + 1, out.factor,
                                           out.damping.astype(out.rho.dtype), out.rho)
        return guard(out.finite, out.step, new_state, state)

    return optax.GradientTransformationExtraArgs(init, update)
