"""Curvature-aware optimizers for JAX training loops, as optax gradient transformations.

Four optimizers that use second-order information of the *minibatch* loss, each a drop-in
`optax.GradientTransformationExtraArgs` for the training loop you already have:

- `hessian_free`: Martens' truncated Newton, CG on the damped Gauss-Newton (or Hessian) with
  Levenberg-Marquardt damping.
- `nystrom_sgd`: SketchySGD, SGD preconditioned by a randomized low-rank (Nyström)
  curvature approximation, with an automatic step size.
- `diag_newton`: a diagonal Newton method on Hutchinson estimates of the curvature diagonal
  (OASIS / Sophia style), clipped per coordinate.
- `regularized_newton`: the gradient-regularized Newton step p = −(C + √(H‖g‖) I)⁻¹ g.

They are full optimizers like `optax.adam`: the update already carries the minus sign and the
learning rate, so `optax.apply_updates(params, updates)` takes the step. `learning_rate` may
be an optax schedule (a function of the step count).

**The extra-argument contract.** Every `update` has the signature

    update(grads, state, params, *, value_fn=None, batch=None, **extra_args)

- `params` is required (the curvature is evaluated there).
- `grads` is the minibatch gradient (or whatever the transformations before this one in an
  `optax.chain` made of it, e.g. a clipped gradient); the curvature is that of the minibatch
  loss at `params`.
- `value_fn(params) -> scalar` is the minibatch loss as a closure over the minibatch, the
  keyword optax's own line searches use (`optax.scale_by_zoom_linesearch`). Hessian
  products and the loss evaluations of the step checks (`hessian_free`,
  `regularized_newton`, `nystrom_sgd`) use it.
- Gauss-Newton curvature needs the loss split as `loss_fn(model_fn(params, batch), batch)`:
  give `model_fn` and `loss_fn` to the factory and the minibatch as `update(...,
  batch=batch)`; `value_fn` is then optional (derived from them when absent).
- `value` (f(params), as optax line searches pass it) saves `hessian_free`,
  `regularized_newton` and `nystrom_sgd` one evaluation of the loss; `grad` and any other
  extra argument are accepted and ignored, so these optimizers compose with anything in an
  `optax.chain` (which hands every extra argument to every member).
- A missing argument is a `ValueError` at trace time that says what to pass.

**State.** A NamedTuple of arrays whose structure, shapes and dtypes never change, so a
jitted training step compiles once. Scalars are in the parameters' precision (float32
parameters give float32 updates and state, float64 stay float64); PRNG keys are stored as raw
uint32 key data.

**Non-finite values.** If the gradient, or anything computed from it, is not finite (a bad
minibatch, a curvature that broke down), the step is skipped as `optax.apply_if_finite`
would: the update is zero and the state is returned unchanged (so the step counter does not
advance either). A step of `hessian_free` / `regularized_newton` whose trial loss is not
finite, or rises, is rejected instead: zero update, and more damping for the next step
(`nystrom_sgd` likewise halves its step size and refreshes its sketch).

**Cost per step** (a "product" is one curvature-vector product, ≈ 1.5 gradients for the GGN,
≈ 2 for the Hessian): `hessian_free` up to `cg_max_steps` + 2 products and 1–2 loss values;
`regularized_newton` up to `cg_max_steps` + 1 products and 1–2 loss values;
`nystrom_sgd` O(n·rank) and 1–2 loss values plus, every `update_freq` steps, `rank`
products (vmapped) and `power_iters` products; `diag_newton` O(n) plus, every
`update_freq` steps, `num_probes` products (vmapped). ("1–2 loss values": one when `value=`
is passed.)

```python
import jax, jax.numpy as jnp, optax, jaxopt2

X = jax.random.normal(jax.random.key(0), (128, 4))
y = (X @ jnp.array([1.0, -2.0, 0.5, 3.0]) > 0).astype(jnp.float32)
model_fn = lambda p, batch: batch[0] @ p["w"] + p["b"]  # logits
loss_fn = lambda z, batch: jnp.mean(jnp.logaddexp(0.0, z) - batch[1] * z)
loss = lambda p, batch: loss_fn(model_fn(p, batch), batch)

optimizer = optax.chain(optax.clip_by_global_norm(10.0),
                        jaxopt2.optimizers.hessian_free(model_fn=model_fn, loss_fn=loss_fn))
params = {"w": jnp.zeros(4), "b": jnp.zeros(())}
state = optimizer.init(params)

@jax.jit
def step(params, state, batch):
    grads = jax.grad(loss)(params, batch)
    updates, state = optimizer.update(grads, state, params, batch=batch)
    return optax.apply_updates(params, updates), state

for _ in range(10):
    params, state = step(params, state, (X, y))
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax

from ._estimators import diagonal
from ._nystrom import nystrom
from ._optimizers import (
    Problem,
    adapt,
    cast_like,
    check_curvature,
    check_int,
    check_learning_rate,
    check_number,
    damped_cg,
    dtype_of,
    guard,
    key_data,
    learning_rate_at,
    matvec_like,
    reduction_ratio,
    sanitize,
    scalar,
    split_key,
    trial_values,
)
from ._tree import ravel, tree_dot, tree_norm, tree_scale, tree_where, tree_zeros_like

__all__ = [
    "DiagNewtonState",
    "HessianFreeState",
    "NystromSGDState",
    "RegularizedNewtonState",
    "diag_newton",
    "hessian_free",
    "nystrom_sgd",
    "regularized_newton",
]

ScalarOrSchedule = float | Callable[[jax.Array], Any]


def _bounds(dtype):
    """The range a damping-like scalar is kept in: beyond it λ would underflow relative to
    any curvature, or overflow the squares taken of it."""
    eps = float(jnp.finfo(dtype).eps)
    return eps, 1.0 / eps


# =========================================================================== hessian_free


class HessianFreeState(NamedTuple):
    count: jax.Array  # int32: steps taken (skipped steps do not count)
    damping: jax.Array  # λ for the next step
    direction: Any  # the last CG solution p (params-shaped), warm start of the next solve
    rho: jax.Array  # reduction ratio of the last step (0 when rejected or not measured)
    cg_steps: jax.Array  # int32: curvature products of the last inner solve


def hessian_free(
    learning_rate: ScalarOrSchedule = 1.0,
    *,
    model_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    curvature: str | None = None,
    damping: float = 1.0,
    adapt_damping: bool = True,
    cg_max_steps: int = 20,
    cg_rtol: float = 1e-2,
    warm_start_decay: float = 0.95,
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

    **Warm start.** CG starts from 0.95·p_prev (`warm_start_decay`), the decayed previous
    solution: consecutive minibatch systems are similar, so CG continues where it stopped
    (Martens §4.5). The warm start is dropped when its quadratic model value is not below
    that of p = 0.

    **Arguments:** `learning_rate` (float or optax schedule; 1 is the Newton step, the damping
    does the step-size control); `model_fn(params, batch) -> outputs` and
    `loss_fn(outputs, batch) -> scalar` for Gauss-Newton products (then pass `batch=` to
    `update`); `curvature` ("ggn", "hessian" or None for automatic); `damping` (the initial
    λ, relative to the curvature's scale; a poor value costs a few steps of adaptation);
    `cg_max_steps`, `cg_rtol`, `warm_start_decay` as above. The state is a
    `HessianFreeState` (`state.damping` is the current λ, `state.rho` the last ratio).

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
    name = "hessian_free"
    kind = check_curvature(name, curvature, model_fn, loss_fn)
    check_learning_rate("learning_rate", learning_rate)
    check_number("damping", damping, low=0.0, low_open=True)
    check_int("cg_max_steps", cg_max_steps)
    check_number("cg_rtol", cg_rtol, low=0.0, high=1.0, high_open=True)
    check_number("warm_start_decay", warm_start_decay, low=0.0, high=1.0)

    def init(params):
        dtype = dtype_of(params)
        return HessianFreeState(
            count=jnp.zeros((), jnp.int32), damping=scalar(damping, dtype),
            direction=tree_zeros_like(params), rho=scalar(0.0, dtype),
            cg_steps=jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, *, value_fn=None, batch=None, value=None,
               **extra_args):
        del extra_args
        problem = Problem(name, kind, params, value_fn, batch, model_fn, loss_fn,
                          needs_value=adapt_damping)
        dtype = dtype_of(params)
        g, finite = sanitize(grads, params)
        matvec = matvec_like(problem.operator(), params)
        lam = state.damping
        p, cg_steps = damped_cg(matvec, g, lam, rtol=cg_rtol, max_steps=cg_max_steps,
                                x0=tree_scale(warm_start_decay, state.direction))
        lr = learning_rate_at(learning_rate, state.count, dtype)
        step = tree_scale(lr, p)
        if adapt_damping:
            curv = lr * lr * tree_dot(p, matvec(p))
            rho, ok = reduction_ratio(problem, params, step, g, curv, value, dtype)
            low, high = _bounds(dtype)
            # No step to judge (g = 0, or a schedule's lr = 0): leave λ alone.
            new_lam = adapt(lam, rho, ok, tree_norm(step) == 0, grow=1.5, shrink=2.0 / 3.0,
                            low=low, high=high)
            step = tree_where(ok, step, tree_zeros_like(step))
        else:
            rho, new_lam = state.rho, lam
        new_state = HessianFreeState(state.count + 1, new_lam, p, rho,
                                     cg_steps.astype(jnp.int32))
        return guard(finite, cast_like(step, params), new_state, state)

    return optax.GradientTransformationExtraArgs(init, update)


# ===================================================================== regularized_newton


class RegularizedNewtonState(NamedTuple):
    count: jax.Array  # int32: steps taken
    lipschitz: jax.Array  # H, the Hessian-Lipschitz estimate for the next step
    damping: jax.Array  # λ = √(H‖g‖) of the last step
    rho: jax.Array  # reduction ratio of the last step (0 when rejected or not measured)


def regularized_newton(
    learning_rate: ScalarOrSchedule = 1.0,
    *,
    model_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    curvature: str | None = None,
    lipschitz: float = 1.0,
    adaptive: bool = True,
    cg_max_steps: int = 20,
    cg_rtol: float = 1e-2,
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

    **Arguments:** `learning_rate` (float or optax schedule; 1 is the regularized Newton
    step); `model_fn`, `loss_fn`, `curvature` as in `hessian_free`; `lipschitz`, the initial
    (or fixed) H; `cg_max_steps` and `cg_rtol` for the inner CG solve, which stops at
    ‖(C + λI)p + g‖ ≤ `cg_rtol`·‖g‖ (λ > 0 keeps the system well conditioned, so a few
    steps suffice). H stays within [eps, 1/eps] of the parameter dtype.

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
    name = "regularized_newton"
    kind = check_curvature(name, curvature, model_fn, loss_fn)
    check_learning_rate("learning_rate", learning_rate)
    check_number("lipschitz", lipschitz, low=0.0, low_open=True)
    check_int("cg_max_steps", cg_max_steps)
    check_number("cg_rtol", cg_rtol, low=0.0, high=1.0, high_open=True)

    def init(params):
        dtype = dtype_of(params)
        return RegularizedNewtonState(jnp.zeros((), jnp.int32), scalar(lipschitz, dtype),
                                      scalar(0.0, dtype), scalar(0.0, dtype))

    def update(grads, state, params=None, *, value_fn=None, batch=None, value=None,
               **extra_args):
        del extra_args
        problem = Problem(name, kind, params, value_fn, batch, model_fn, loss_fn,
                          needs_value=adaptive)
        dtype = dtype_of(params)
        g, finite = sanitize(grads, params)
        matvec = matvec_like(problem.operator(), params)
        gnorm = tree_norm(g).astype(dtype)
        lam = jnp.sqrt(state.lipschitz * gnorm)
        p, _ = damped_cg(matvec, g, lam, rtol=cg_rtol, max_steps=cg_max_steps)
        lr = learning_rate_at(learning_rate, state.count, dtype)
        step = tree_scale(lr, p)
        if adaptive:
            curv = lr * lr * tree_dot(p, matvec(p))
            rho, ok = reduction_ratio(problem, params, step, g, curv, value, dtype)
            low, high = _bounds(dtype)
            new_h = adapt(state.lipschitz, rho, ok, tree_norm(step) == 0, grow=2.0,
                          shrink=0.5, low=low, high=high)
            step = tree_where(ok, step, tree_zeros_like(step))
        else:
            rho, new_h = state.rho, state.lipschitz
        new_state = RegularizedNewtonState(state.count + 1, new_h, lam.astype(dtype), rho)
        return guard(finite, cast_like(step, params), new_state, state)

    return optax.GradientTransformationExtraArgs(init, update)


# ============================================================================ nystrom_sgd


class NystromSGDState(NamedTuple):
    count: jax.Array  # int32: steps taken
    key: jax.Array  # uint32 raw PRNG key data
    U: jax.Array  # n × rank orthonormal eigenvectors of the Nyström approximation Ĥ
    eigenvalues: jax.Array  # its rank eigenvalues (descending, ≥ 0)
    rho: jax.Array  # the regularization ρ of the preconditioner Ĥ + ρI
    step_size: jax.Array  # η = 1/L_P of the last refresh (0 when the learning rate is given)
    scale: jax.Array  # the safeguard's multiplier of the step size, in (0, 1]
    stale: jax.Array  # bool: the last step was rejected, so refresh the sketch now


# With rho=None, ρ = max(λ_r, RHO_FLOOR·λ₁): the smallest retained eigenvalue, as SketchySGD,
# but never below 1e-3 of the largest, so the preconditioner's condition number stays ≤ 1000
# when the curvature has fewer than `rank` significant eigenvalues (λ_r ≈ 0).
RHO_FLOOR = 1e-3


def nystrom_sgd(
    learning_rate: ScalarOrSchedule | None = None,
    *,
    rank: int = 10,
    rho: float | None = None,
    update_freq: int = 20,
    power_iters: int = 10,
    safeguard: bool = True,
    model_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    curvature: str | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """SketchySGD: SGD preconditioned by a randomized Nyström approximation of the curvature,

        update = −η (Ĥ + ρI)⁻¹ g,    Ĥ = U diag(Λ) Uᵀ ≈ C (rank r),

    where C is the minibatch Hessian of `value_fn` or, with `model_fn`/`loss_fn`, its
    Gauss-Newton matrix, sketched every `update_freq` steps from `rank` curvature products
    (one vmapped batch; `jaxopt2.sketch.nystrom`) on the minibatch of that step, and held
    fixed in between. The inverse is applied in closed form in O(n·r):

        (Ĥ + ρI)⁻¹ g = U (Λ + ρI)⁻¹ Uᵀ g + (g − UUᵀg) / ρ.

    The top-r curvature directions get Newton-like steps and the rest a gradient step of
    length η/ρ, so ill-conditioning concentrated in a few directions (the common case in
    ML losses) no longer limits the step size.

    **Regularization** `rho`: None (default) takes ρ = max(λ_r, 10⁻³λ₁), the smallest
    retained Nyström eigenvalue, floored at 10⁻³ of the largest so that a curvature of rank
    < r cannot make (Ĥ + ρI)⁻¹ blow up; a float fixes ρ.

    **Step size** `learning_rate`: None (default) is SketchySGD's automatic step η = 1/L_P,
    with L_P the largest eigenvalue of the preconditioned minibatch curvature
    (Ĥ + ρI)^{-1/2} C (Ĥ + ρI)^{-1/2}, estimated by `power_iters` power iterations at every
    refresh. A float or optax schedule replaces η.

    **Safeguard** (`safeguard=True`, default; not part of SketchySGD, whose analysis is for
    convex losses). On a neural network the curvature can grow by orders of magnitude
    between two refreshes (a near-Newton step on the output layer scales the curvature of
    the layers below it), and a stale η/ρ then diverges within a few steps. So every step
    is checked on its own minibatch, at the cost of one more loss evaluation: a step that
    increases the minibatch loss (or makes it non-finite) is rejected (zero update), the
    step size is halved, and the sketch and η are refreshed at the next step; every
    accepted step doubles the multiplier again, up to 1. `safeguard=False` is plain
    SketchySGD (no extra evaluation).

    If the sketch is not finite (an indefinite Hessian can break the Nyström factorization)
    the preconditioner falls back to Ĥ = 0, ρ = 1, i.e. gradient descent with step 1/L (the
    power iteration then estimates L = λ_max(C)). Steps between refreshes cost O(n·r) and no
    curvature products (the refresh runs under `lax.cond`); `value_fn`/`batch` must be
    passed on every step anyway.

    **Arguments:** `rank` (10 as SketchySGD; capped at the number of parameters, where the
    sketch is exact), `update_freq` (steps between sketches; SketchySGD refreshes once per
    epoch), `power_iters`, `safeguard`, `model_fn`, `loss_fn`, `curvature` as in
    `hessian_free`, `seed` for the sketches. The state is a `NystromSGDState` (U, Λ, ρ, η
    and the PRNG key as raw key data).

    Reference: Z. Frangella, P. Rathore, S. Zhao, M. Udell, "SketchySGD: Reliable Stochastic
    Optimization via Randomized Curvature Estimates", SIAM J. Math. Data Sci. 2024.

    ```python
    import jax, jax.numpy as jnp, optax, jaxopt2
    X = jax.random.normal(jax.random.key(0), (64, 20)) * jnp.logspace(0, 2, 20)
    y = X @ jnp.ones(20)
    loss = lambda w: 0.5 * jnp.mean((X @ w - y) ** 2)
    opt = jaxopt2.optimizers.nystrom_sgd(rank=10)
    w = jnp.zeros(20)
    state = opt.init(w)
    for _ in range(5):
        updates, state = opt.update(jax.grad(loss)(w), state, w, value_fn=loss)
        w = optax.apply_updates(w, updates)
    ```
    """
    name = "nystrom_sgd"
    kind = check_curvature(name, curvature, model_fn, loss_fn)
    check_learning_rate("learning_rate", learning_rate, allow_none=True)
    check_int("rank", rank)
    if rho is not None:
        check_number("rho", rho, low=0.0, low_open=True)
    check_int("update_freq", update_freq)
    check_int("power_iters", power_iters)
    check_int("seed", seed, low=0)
    automatic = learning_rate is None

    def init(params):
        flat, _ = ravel(params)
        n, dtype = flat.size, flat.dtype
        r = min(rank, n)  # a rank-n sketch is already exact
        return NystromSGDState(
            count=jnp.zeros((), jnp.int32), key=key_data(seed), U=jnp.zeros((n, r), dtype),
            eigenvalues=jnp.zeros((r,), dtype), rho=scalar(1.0, dtype),
            step_size=scalar(0.0, dtype), scale=scalar(1.0, dtype), stale=jnp.array(False))

    def refresh(problem, params, state):
        op = problem.operator()
        dtype = state.U.dtype
        key, sub = split_key(state.key)
        sketch_key, power_key = jax.random.split(sub)
        approx = nystrom(op, state.U.shape[1], sketch_key)
        u, lam = approx.U.astype(dtype), approx.eigenvalues.astype(dtype)
        ok = jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(lam)) & (lam[0] > 0)
        u = jnp.where(ok, u, 0.0)
        lam = jnp.where(ok, lam, 0.0)
        if rho is None:
            reg = jnp.where(ok, jnp.maximum(lam[-1], RHO_FLOOR * lam[0]), 1.0)
        else:
            reg = scalar(rho, dtype)
        if automatic:
            _, unravel = ravel(params)
            matvec = lambda x: ravel(op.mv(unravel(x)))[0].astype(dtype)
            l_p = _preconditioned_lmax(matvec, u, lam, reg, power_key, power_iters)
            # An indefinite curvature can give l_p ≤ 0: keep the last good η then.
            fallback = jnp.where(state.step_size > 0, state.step_size, 1.0)
            eta = jnp.where(jnp.isfinite(l_p) & (l_p > 0), 1.0 / l_p, fallback)
        else:
            eta = state.step_size
        return key, u, lam, reg.astype(dtype), eta.astype(dtype)

    def update(grads, state, params=None, *, value_fn=None, batch=None, value=None,
               **extra_args):
        del extra_args
        problem = Problem(name, kind, params, value_fn, batch, model_fn, loss_fn,
                          needs_value=safeguard)
        g, finite = sanitize(grads, params)
        due = (state.count % update_freq == 0) | state.stale
        key, u, lam, reg, eta = jax.lax.cond(
            due, lambda: refresh(problem, params, state),
            lambda: (state.key, state.U, state.eigenvalues, state.rho, state.step_size))
        dtype = u.dtype
        flat_g, unravel = ravel(g)
        x = flat_g.astype(dtype)
        c = u.T @ x
        direction = u @ (c / (lam + reg)) + (x - u @ c) / reg
        lr = eta if automatic else learning_rate_at(learning_rate, state.count, dtype)
        step = cast_like(unravel(-(lr * state.scale) * direction), params)
        scale, stale = state.scale, state.stale
        if safeguard:
            _, _, ok = trial_values(problem, params, step, value, dtype)
            step = tree_where(ok, step, tree_zeros_like(step))
            scale = jnp.where(ok, jnp.minimum(2 * scale, 1.0), scale / 2).astype(dtype)
            stale = ~ok
        new_state = NystromSGDState(state.count + 1, key, u, lam, reg, eta, scale, stale)
        return guard(finite, step, new_state, state)

    return optax.GradientTransformationExtraArgs(init, update)


def _preconditioned_lmax(matvec, u, lam, reg, key, iters: int):
    """λ_max of M = P^{-1/2} C P^{-1/2}, P = UΛUᵀ + ρI, by `iters` power iterations (the
    Rayleigh quotient of the last iterate: a lower bound that converges from below).

    P^{-1/2} = U ((Λ + ρ)^{-1/2} − ρ^{-1/2}) Uᵀ + ρ^{-1/2} I in closed form. For an
    indefinite C power iteration finds the eigenvalue of largest modulus; a negative
    estimate is rejected by the caller.
    """
    scale = jax.lax.rsqrt(lam + reg) - jax.lax.rsqrt(reg)

    def p_inv_sqrt(x):
        return u @ (scale * (u.T @ x)) + x * jax.lax.rsqrt(reg)

    def m(x):
        return p_inv_sqrt(matvec(p_inv_sqrt(x)))

    tiny = jnp.finfo(u.dtype).tiny
    v0 = jax.random.normal(key, (u.shape[0],), u.dtype)
    v0 = v0 / jnp.maximum(jnp.linalg.norm(v0), tiny)

    def body(_, carry):
        v, _ = carry
        w = m(v)
        return w / jnp.maximum(jnp.linalg.norm(w), tiny), jnp.vdot(v, w)

    _, l_p = jax.lax.fori_loop(0, iters, body, (v0, jnp.zeros((), u.dtype)))
    return l_p


# ============================================================================ diag_newton


class DiagNewtonState(NamedTuple):
    count: jax.Array  # int32: steps taken
    key: jax.Array  # uint32 raw PRNG key data
    momentum: Any  # m, the exponential average of gradients (params-shaped)
    curvature: Any  # h, the exponential average of diagonal estimates (params-shaped)


def diag_newton(
    learning_rate: ScalarOrSchedule = 1e-2,
    *,
    b1: float = 0.9,
    b2: float = 0.99,
    update_freq: int = 10,
    num_probes: int = 1,
    gamma: float = 0.05,
    clip: float = 1.0,
    eps: float = 1e-12,
    model_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    curvature: str | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Diagonal Newton with Hutchinson curvature estimates, momentum and per-coordinate
    clipping (Sophia's update, with OASIS-style Hutchinson diagonals):

        d̂ = (1/N) Σₖ zₖ ⊙ (C zₖ)      zₖ Rademacher, N = `num_probes` (E[d̂] = diag C),
        h ← β₂ h + (1 − β₂) d̂          every `update_freq` steps,   ĥ = h / (1 − β₂ᵏ),
        m ← β₁ m + (1 − β₁) g          every step,                  m̂ = m / (1 − β₁ᵗ),
        update = −lr · clip(m̂ / max(γ ĥ, ε), −clip, clip)

    with C the minibatch Hessian of `value_fn` or its Gauss-Newton matrix (with `model_fn` /
    `loss_fn`), t the number of steps and k the number of probe rounds so far (the bias
    corrections make the first estimates unbiased, as in Adam).

    Read per coordinate, the update is the smaller of two steps: the damped diagonal Newton
    step (lr/γ)·m̂/ĥ where the curvature is large enough to be trusted, and a sign-momentum
    step of length lr·clip where it is not. So `learning_rate` is the largest step any
    coordinate takes (times `clip`), like Adam's learning rate, and lr/γ is the fraction of
    the Newton step taken. The clipping is what makes a diagonal model safe (Sophia's
    argument): a diagonal ignores the coupling between coordinates, a one-probe Hutchinson
    estimate is noisy, and a nonconvex Hessian has negative entries; near-zero or negative
    estimates give max(γĥ, ε) = ε and hence a bounded sign step, never a huge or uphill one.

    Probes cost `num_probes` curvature products (vmapped) every `update_freq` steps, taken
    under `lax.cond`, so the other steps cost O(n) like Adam. Rademacher probes are exact for
    a diagonal C; otherwise one probe's error on coordinate i has variance Σ_{j≠i} Cᵢⱼ², which
    the exponential average over probe rounds (window ≈ 1/(1−β₂)) averages out.

    Defaults (lr = 1e-2, γ = 0.05: a twentieth of the Newton step, capped at 0.01 per
    coordinate; β₁ = 0.9, β₂ = 0.99, one probe every 10 steps, ε = 1e-12) train the digits
    MLP and the regression MLP of the examples without tuning, to lower training losses than
    Adam(1e-2) in as many steps. Use a schedule for `learning_rate` as you would with Adam.
    The state is a `DiagNewtonState` (`state.curvature` is h, without bias correction).

    References: M. Jahani, S. Rusakov, Z. Shi, P. Richtárik, M. W. Mahoney, M. Takáč,
    "Doubly adaptive scaled algorithm for machine learning using second-order information"
    (OASIS), ICLR 2022; H. Liu, Z. Li, D. Hall, P. Liang, T. Ma, "Sophia: A Scalable
    Stochastic Second-order Optimizer for Language Model Pre-training", ICLR 2024;
    C. Bekas, E. Kokiopoulou, Y. Saad, "An estimator for the diagonal of a matrix", 2007.

    ```python
    import jax, jax.numpy as jnp, optax, jaxopt2
    X = jax.random.normal(jax.random.key(0), (64, 3)) * jnp.array([1.0, 10.0, 0.1])
    y = X @ jnp.array([1.0, -2.0, 0.5])
    model_fn = lambda w, b: b[0] @ w
    loss_fn = lambda out, b: 0.5 * jnp.mean((out - b[1]) ** 2)
    opt = jaxopt2.optimizers.diag_newton(model_fn=model_fn, loss_fn=loss_fn)
    w = jnp.zeros(3)
    state = opt.init(w)
    for _ in range(5):
        grads = jax.grad(lambda w: loss_fn(model_fn(w, (X, y)), (X, y)))(w)
        updates, state = opt.update(grads, state, w, batch=(X, y))
        w = optax.apply_updates(w, updates)
    ```
    """
    name = "diag_newton"
    kind = check_curvature(name, curvature, model_fn, loss_fn)
    check_learning_rate("learning_rate", learning_rate)
    check_number("b1", b1, low=0.0, high=1.0, high_open=True)
    check_number("b2", b2, low=0.0, high=1.0, high_open=True)
    check_int("update_freq", update_freq)
    check_int("num_probes", num_probes)
    check_number("gamma", gamma, low=0.0, low_open=True)
    check_number("clip", clip, low=0.0, low_open=True)
    check_number("eps", eps, low=0.0, low_open=True)
    check_int("seed", seed, low=0)

    def init(params):
        return DiagNewtonState(jnp.zeros((), jnp.int32), key_data(seed),
                               tree_zeros_like(params), tree_zeros_like(params))

    def probe(problem, params, state):
        key, sub = split_key(state.key)
        estimate = cast_like(diagonal(problem.operator(), sub, num_probes), params)
        h = jtu.tree_map(lambda h, d: (b2 * h + (1 - b2) * d).astype(h.dtype),
                         state.curvature, estimate)
        return key, h

    def update(grads, state, params=None, *, value_fn=None, batch=None, **extra_args):
        del extra_args
        problem = Problem(name, kind, params, value_fn, batch, model_fn, loss_fn,
                          needs_value=False)
        g, finite = sanitize(grads, params)
        t = state.count
        key, h = jax.lax.cond(t % update_freq == 0,
                              lambda: probe(problem, params, state),
                              lambda: (state.key, state.curvature))
        m = jtu.tree_map(lambda m, g: (b1 * m + (1 - b1) * g).astype(m.dtype),
                         state.momentum, g)
        dtype = dtype_of(params)
        # t + 1 gradients and t // update_freq + 1 probe rounds are in the averages now.
        m_corr = 1 - jnp.asarray(b1, dtype) ** (t + 1).astype(dtype)
        h_corr = 1 - jnp.asarray(b2, dtype) ** (t // update_freq + 1).astype(dtype)
        lr = learning_rate_at(learning_rate, t, dtype)

        def leaf(m, h):
            newton = (m / m_corr) / jnp.maximum(gamma * h / h_corr, eps)
            return (-lr * jnp.clip(newton, -clip, clip)).astype(m.dtype)

        step = jtu.tree_map(leaf, m, h)
        return guard(finite, step, DiagNewtonState(t + 1, key, m, h), state)

    return optax.GradientTransformationExtraArgs(init, update)
