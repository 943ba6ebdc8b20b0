"""SketchySGD (Frangella, Rathore, Zhao & Udell 2024): SGD preconditioned by a randomized
Nyström approximation of the curvature, as an optax gradient transformation."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._tree import ravel, tree_where, tree_zeros_like
from ..sketch._nystrom import _nystrom
from ._checks import check_init_params, check_int, check_learning_rate, check_number, static_int
from ._common import (
    KeyStream,
    Objective,
    ScalarOrSchedule,
    cast_like,
    guard,
    learning_rate_at,
    scalar,
    trial_values,
)


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
    learning_rate: ScalarOrSchedule | None = None, *, rank: int = 10, rho: float | None = None,
    update_freq: int = 20, power_iters: int = 10, safeguard: bool = True,
    model_fn: Callable | None = None, loss_fn: Callable | None = None,
    curvature: str | None = None, key: jax.Array | None = None, seed: int = 0,
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
    `hessian_free`; `key` for the sketches (a `jax.random.key`, or a legacy
    `jax.random.PRNGKey`; `seed=0`, an int, is the shortcut used when no key is given). The
    state is a `NystromSGDState` (U, Λ, ρ, η and the PRNG key as raw key data).
    `optax.inject_hyperparams(jaxopt2.optimizers.nystrom_sgd)(learning_rate=...)` keeps the
    numeric hyperparameters in the state, where a schedule or the training loop can change
    them (with `model_fn`/`loss_fn`, add `static_args=("model_fn", "loss_fn")`; `rank`,
    `key` and `seed` are only read by `init`).

    **Independent streams in a vmapped ensemble.** The key is read by `init` only; from then
    on the state carries the stream. To train an ensemble under `jax.vmap` with independent
    sketches, split a key and build the optimizer inside the vmapped function (a fixed `seed`
    would give every member the same sketches); `update` does not depend on the key, so one
    optimizer serves the vmapped updates:

        keys = jax.random.split(jax.random.key(0), num_models)
        states = jax.vmap(lambda k, p: nystrom_sgd(key=k).init(p))(keys, batched_params)

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
    for _ in range(5):  # value= saves the safeguard one evaluation of the loss
        value, grads = jax.value_and_grad(loss)(w)
        updates, state = opt.update(grads, state, w, value_fn=loss, value=value)
        w = optax.apply_updates(w, updates)
    ```
    """
    name = "nystrom_sgd"
    objective = Objective(name, curvature, model_fn, loss_fn)
    check_learning_rate("learning_rate", learning_rate, allow_none=True)
    check_int("rank", rank)
    if rho is not None:
        check_number("rho", rho, low=0.0, low_open=True)
    check_int("update_freq", update_freq)
    check_int("power_iters", power_iters)
    stream = KeyStream(name, key, seed)
    automatic = learning_rate is None

    def init(params):
        check_init_params('nystrom_sgd', params, half_precision=False)
        flat, _ = ravel(params)
        n, dtype = flat.size, flat.dtype
        r = min(static_int(name, "rank", rank), n)  # a rank-n sketch is already exact
        return NystromSGDState(
            count=jnp.zeros((), jnp.int32), key=stream.init(), U=jnp.zeros((n, r), dtype),
            eigenvalues=jnp.zeros((r,), dtype), rho=scalar(1.0, dtype),
            step_size=scalar(0.0, dtype), scale=scalar(1.0, dtype), stale=jnp.array(False))

    def refresh(problem, params, state):
        op = problem.operator()
        dtype = state.U.dtype
        new_key, sub = stream.split(state.key)
        sketch_key, power_key = jax.random.split(sub)
        # the unchecked sketch: an indefinite minibatch curvature falls back below, no error
        approx, _ = _nystrom(op, state.U.shape[1], sketch_key, None, name)
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
        return new_key, u, lam, reg.astype(dtype), eta.astype(dtype)

    def update(grads, state, params=None, *, value_fn=None, batch=None, value=None,
               **extra_args):
        del extra_args
        problem, g, finite = objective.begin(grads, params, value_fn, batch,
                                             needs_value=safeguard)
        n = sum(jnp.size(leaf) for leaf in jax.tree_util.tree_leaves(params))
        if state.U.shape[0] != n:
            raise ValueError(f"nystrom_sgd.update: `state.U` has {state.U.shape[0]} rows but "
                             f"`params` has {n} entries; make the state with "
                             "nystrom_sgd(...).init(params) for these params.")
        due = (state.count % update_freq == 0) | state.stale
        new_key, u, lam, reg, eta = jax.lax.cond(
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
        new_state = NystromSGDState(state.count + 1, new_key, u, lam, reg, eta, scale, stale)
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
