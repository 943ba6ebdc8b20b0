"""Diagonal Newton with Hutchinson curvature estimates (OASIS / Sophia style) as optax
gradient transformations: `scale_by_diag_newton` (the direction) and `diag_newton` (the
optimizer, with the learning rate)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax

from .._estimators import diagonal
from .._tree import tree_zeros_like
from ._checks import check_init_params, check_int, check_learning_rate, check_number, check_state
from ._common import KeyStream, Objective, ScalarOrSchedule, cast_like, dtype_of, guard


class DiagNewtonState(NamedTuple):
    count: jax.Array  # int32: steps taken
    key: jax.Array  # uint32 raw PRNG key data
    momentum: Any  # m, the exponential average of gradients (params-shaped)
    curvature: Any  # h, the exponential average of diagonal estimates (params-shaped)


def hutchinson_diagonal(op, key, num_probes):
    """(1/N) Σₖ zₖ ⊙ (C zₖ) over N = `num_probes` Rademacher probes, probe k drawn from
    `fold_in(key, k)`. The probes are vmapped when N is a Python int, and run in a loop when
    it is traced (`optax.inject_hyperparams` keeps it in the state): the same probes either
    way, so both give the same estimate."""
    def one(i):
        return diagonal(op, jax.random.fold_in(key, i), 1)

    if isinstance(num_probes, jax.core.Tracer):
        zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, 0))
        total = jax.lax.fori_loop(
            0, num_probes, lambda i, acc: jtu.tree_map(jnp.add, acc, one(i)), zeros)
    else:
        n = int(num_probes)
        # summed in the loop's order, so that both paths round alike
        total = jtu.tree_map(lambda e: sum((e[i] for i in range(1, n)), start=e[0]),
                             jax.vmap(one)(jnp.arange(n)))
    return jtu.tree_map(lambda t: (t / num_probes).astype(t.dtype), total)


def scale_by_diag_newton(
    *, b1: float = 0.9, b2: float = 0.99, update_freq: int = 10, num_probes: int = 1,
    gamma: float = 0.05, clip: float = 1.0, eps: float = 1e-12,
    model_fn: Callable | None = None, loss_fn: Callable | None = None,
    curvature: str | None = None, key: jax.Array | None = None, seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """The direction of `diag_newton` without the learning rate: the clipped diagonal Newton
    direction of the momentum,

        d = clip(m̂ / max(γ ĥ, ε), −clip, clip),

    with m̂, ĥ and every argument as in `diag_newton`, which is
    `optax.chain(scale_by_diag_newton(...), optax.scale_by_learning_rate(learning_rate))`.
    Like optax's `scale_by_*` transformations, the output has the sign of the gradient (the
    learning-rate stage flips it); it is zero, and the state unchanged, when the gradient or
    anything computed from it is not finite. The state is a `DiagNewtonState`.

    ```python
    import jax, jax.numpy as jnp, optax, jaxopt2
    loss = lambda w: 0.5 * jnp.sum(jnp.array([1.0, 100.0]) * w**2)
    opt = optax.chain(jaxopt2.optimizers.scale_by_diag_newton(gamma=1.0),
                      optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.1, 100)))
    w = jnp.ones(2)
    state = opt.init(w)
    updates, state = opt.update(jax.grad(loss)(w), state, w, value_fn=loss)
    ```
    """
    name = "scale_by_diag_newton"
    objective = Objective(name, curvature, model_fn, loss_fn)
    check_number("b1", b1, low=0.0, high=1.0, high_open=True)
    check_number("b2", b2, low=0.0, high=1.0, high_open=True)
    check_int("update_freq", update_freq)
    check_int("num_probes", num_probes)
    check_number("gamma", gamma, low=0.0, low_open=True)
    check_number("clip", clip, low=0.0, low_open=True)
    check_number("eps", eps, low=0.0, low_open=True)
    stream = KeyStream(name, key, seed)

    def init(params):
        check_init_params('diag_newton', params)
        return DiagNewtonState(jnp.zeros((), jnp.int32), stream.init(),
                               tree_zeros_like(params), tree_zeros_like(params))

    def probe(problem, params, state):
        new_key, sub = stream.split(state.key)
        estimate = cast_like(hutchinson_diagonal(problem.operator(), sub, num_probes), params)
        h = jtu.tree_map(lambda h, d: (b2 * h + (1 - b2) * d).astype(h.dtype),
                         state.curvature, estimate)
        return new_key, h

    def update(grads, state, params=None, *, value_fn=None, batch=None, **extra_args):
        del extra_args
        problem, g, finite = objective.begin(grads, params, value_fn, batch,
                                             needs_value=False, owner="diag_newton")
        check_state("diag_newton", "state.momentum", state.momentum, params)
        check_state("diag_newton", "state.curvature", state.curvature, params)
        t = state.count
        new_key, h = jax.lax.cond(t % update_freq == 0,
                                  lambda: probe(problem, params, state),
                                  lambda: (state.key, state.curvature))
        m = jtu.tree_map(lambda m, g: (b1 * m + (1 - b1) * g).astype(m.dtype),
                         state.momentum, g)
        dtype = dtype_of(params)
        # t + 1 gradients and t // update_freq + 1 probe rounds are in the averages now.
        m_corr = 1 - jnp.asarray(b1, dtype) ** (t + 1).astype(dtype)
        h_corr = 1 - jnp.asarray(b2, dtype) ** (t // update_freq + 1).astype(dtype)

        def leaf(m, h):
            newton = (m / m_corr) / jnp.maximum(gamma * h / h_corr, eps)
            return jnp.clip(newton, -clip, clip).astype(m.dtype)

        direction = jtu.tree_map(leaf, m, h)
        return guard(finite, direction, DiagNewtonState(t + 1, new_key, m, h), state)

    return optax.GradientTransformationExtraArgs(init, update)


def diag_newton(
    learning_rate: ScalarOrSchedule = 1e-2, *, b1: float = 0.9, b2: float = 0.99,
    update_freq: int = 10, num_probes: int = 1, gamma: float = 0.05, clip: float = 1.0,
    eps: float = 1e-12, model_fn: Callable | None = None, loss_fn: Callable | None = None,
    curvature: str | None = None, key: jax.Array | None = None, seed: int = 0,
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
    `key` draws the probes (a `jax.random.key`, or a legacy `jax.random.PRNGKey`; `seed=0`, an
    int, is the shortcut used when no key is given).

    This is optax's alias pattern: `optax.chain(scale_by_diag_newton(...),
    optax.scale_by_learning_rate(learning_rate))`, so the state is a pair whose first member
    is a `DiagNewtonState` (`state[0].curvature` is h, without bias correction). A schedule
    counts every `update` (optax's counter), skipped non-finite steps included.
    `optax.inject_hyperparams(jaxopt2.optimizers.diag_newton)(learning_rate=...)` keeps the
    numeric hyperparameters in the state, where a schedule or the training loop can change
    them (with `model_fn`/`loss_fn`, add `static_args=("model_fn", "loss_fn")`; `key` and
    `seed` are only read by `init`).

    **Independent streams in a vmapped ensemble.** The key is read by `init` only; from then
    on the state carries the stream. To train an ensemble under `jax.vmap` with independent
    probes, split a key and build the optimizer inside the vmapped function (a fixed `seed`
    would give every member the same probes); `update` does not depend on the key:

        keys = jax.random.split(jax.random.key(0), num_models)
        states = jax.vmap(lambda k, p: diag_newton(key=k).init(p))(keys, batched_params)

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
    check_learning_rate("learning_rate", learning_rate)
    return optax.chain(
        scale_by_diag_newton(b1=b1, b2=b2, update_freq=update_freq, num_probes=num_probes,
                             gamma=gamma, clip=clip, eps=eps, model_fn=model_fn,
                             loss_fn=loss_fn, curvature=curvature, key=key, seed=seed),
        optax.scale_by_learning_rate(learning_rate))
