"""Shampoo (Gupta, Koren and Singer 2018) with Adam grafting, as an optax gradient
transformation."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax

from . import _blocks as B
from ._checks import check_init_params, check_state
from ._common import ScalarOrSchedule, guard, learning_rate_at


class ShampooState(NamedTuple):
    count: jax.Array  # int32: steps taken (skipped non-finite steps do not count)
    mu: Any  # m, the average of gradients (params-shaped, float32 at least)
    nu: Any  # v, the average of squared gradients: Adam's, for grafting and vector leaves
    left: Any  # per leaf: L per block, (nb_r, nb_c, b_r, b_r); (0,) for scalars and vectors
    right: Any  # per leaf: R per block, (nb_r, nb_c, b_c, b_c); (0,) for scalars and vectors
    left_root: Any  # (L + ε λ_max I)^(−1/4) as of the last refresh (the identity before)
    right_root: Any  # (R + ε λ_max I)^(−1/4) as of the last refresh


def shampoo(
    learning_rate: ScalarOrSchedule = 1e-3, *, b1: float = 0.9, b2: float = 0.999,
    eps: float = 1e-8, matrix_eps: float = 1e-6, precondition_freq: int = 10,
    block_size: int = 256, weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Shampoo with learning-rate grafting from Adam. For every matrix-shaped parameter (a
    tensor is seen as a matrix, cut into blocks of at most `block_size` rows and columns; see
    below), with G the gradient block and M the average of gradients:

        L ← β₂ L + (1 − β₂) G Gᵀ,    R ← β₂ R + (1 − β₂) GᵀG,
        P = (L + ε λ_max(L) I)^(−1/4) · M · (R + ε λ_max(R) I)^(−1/4)   (roots every T steps),
        A = m̂ / (√v̂ + eps)                                               (Adam's direction),
        update = −lr · (‖A‖/‖P‖) · P   per block,

    i.e. the preconditioner (R^(−1/4) ⊗ L^(−1/4)) on vec(M), a Kronecker-factored
    approximation of full-matrix AdaGrad's (Σ vec(G) vec(G)ᵀ)^(−1/2), with the step length of
    Adam's update of the same block (grafting, Agarwal et al. 2020): the learning rate means
    what Adam's means, and Adam's tuned rate is a good start. Scalars and vectors (biases,
    scales) take Adam's step. Decoupled weight decay as in AdamW: −lr·wd·θ is added.

    **Roots.** The inverse 4th roots are recomputed from eigendecompositions (`eigh`, batched
    over the blocks) at steps 0, T, 2T, ... (T = `precondition_freq`) under `lax.cond`, and
    reused in between. The damping ε = `matrix_eps` is relative to the largest eigenvalue,
    so it does not depend on the gradients' scale: a direction is amplified at most
    ε^(−1/4) (≈ 32× for 1e-6) relative to the top one.

    **Blocks.** A leaf of shape s is the matrix (prod(s[:k]), prod(s[k:])) at the axis k
    that makes the larger side smallest (a (3, 3, 16, 32) conv kernel is (144, 32),
    equinox's (32, 16, 3, 3) is (32, 144)); a side longer than `block_size` is cut into
    equal blocks of at most that length (zero-padded), and each block has its own L and R:
    the cost stays O(block_size³) per block however large the layer.

    **Cost per step** for an m × n block: O(mn(m + n)) for the statistics and the
    preconditioned direction, plus O(m³ + n³) for the eigendecompositions every T steps
    (under `jax.vmap` over an ensemble too: the refresh stays a branch for the whole batch,
    `jaxopt2._branch.every_member_cond`, and runs alongside the other branch only at a refresh
    where the members' step counts disagree; four vmapped autoencoders cost 1.12× four
    separate runs, 3.8× while `lax.cond` turned into a select). Memory: two moment trees
    like the parameters, and 2(m² + n²) per block.

    **Dtypes.** Statistics, moments and roots are float32 at least (bfloat16 parameters get
    float32 statistics, float64 parameters keep float64); updates are in the parameters'
    dtypes. The state is a `ShampooState` of fixed structure (scalars and vectors carry empty
    (0,) statistics). A non-finite gradient skips the step (zero update, state unchanged).
    `optax.inject_hyperparams(jaxopt2.optimizers.shampoo)(learning_rate=...)` works;
    `block_size` fixes the state's shapes, so it is read by `init` only (call `init`
    outside `jax.jit`, or pass `static_args=("block_size",)`).

    References: V. Gupta, T. Koren, Y. Singer, "Shampoo: Preconditioned stochastic tensor
    optimization", ICML 2018; R. Anil, V. Gupta, T. Koren, K. Regan, Y. Singer, "Scalable
    second order optimization for deep learning", 2020 (blocking, grafting, relative
    damping); N. Agarwal, R. Anil, E. Hazan, T. Koren, C. Zhang, "Disentangling adaptive
    gradient methods from learning rates", 2020 (grafting).

    ```python
    import jax, jax.numpy as jnp, optax, jaxopt2
    A = jnp.diag(jnp.array([1.0, 3.0, 10.0]))
    loss = lambda p: 0.5 * jnp.sum((A @ p["W"] @ A - jnp.eye(3)) ** 2) + jnp.sum(p["b"] ** 2)
    opt = jaxopt2.optimizers.shampoo(1e-3)
    params = {"W": jnp.zeros((3, 3)), "b": jnp.ones(3)}
    state = opt.init(params)
    for _ in range(5):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    ```
    """
    name = "shampoo"
    B.check_hyperparameters(learning_rate, b1, b2, eps, matrix_eps, precondition_freq,
                          block_size, weight_decay)

    def init(params):
        check_init_params(name, params)
        left, right, left_id, right_id = B.init_factors(params, block_size, name)
        zeros = jtu.tree_map(lambda p: jnp.zeros_like(p, dtype=B.stat_dtype(p.dtype)), params)
        return ShampooState(jnp.zeros((), jnp.int32), zeros, zeros, left, right, left_id,
                            right_id)

    def update(grads, state, params=None, **extra_args):
        del extra_args
        with_params = params is not None
        params, g, finite = B.begin(name, grads, params, weight_decay)
        check_state(name, "state.mu", state.mu, params)
        t = state.count
        treedef = jtu.tree_structure(params)
        leaves = lambda tree: treedef.flatten_up_to(tree)  # noqa: E731
        shapes = [p.shape for p in leaves(params)]

        moments = [B.adam_moments(m, v, gl, b1, b2) for m, v, gl in
                   zip(leaves(state.mu), leaves(state.nu), leaves(g), strict=True)]
        mu, nu = [m for m, _ in moments], [v for _, v in moments]
        dtype = B.stat_dtype(jnp.result_type(*[m.dtype for m in mu]))
        lr = learning_rate_at(learning_rate, t, dtype)
        # a skipped step changes nothing: a non-finite learning rate skips the statistics too
        stats_ok = B.statistics_ok(finite, leaves(g), shapes) & jnp.isfinite(lr)
        layouts, left, right, left_root, right_root, _ = B.update_factors(
            leaves(g), leaves(state.left), leaves(state.right), shapes, t, precondition_freq,
            lambda S, _, __: B.inverse_root(S, 4, matrix_eps), leaves(state.left_root),
            leaves(state.right_root), b2, ok=stats_ok)

        c1, c2 = B.bias_corrections(b1, b2, t + 1, dtype)
        direction = []
        for s, lay, m, v, QL, QR in zip(shapes, layouts, mu, nu, left_root, right_root,
                                        strict=True):
            adam = B.ratio_or_zero(m / c1, jnp.sqrt(v / c2) + eps)
            if lay is None:
                direction.append(adam.astype(m.dtype))
                continue
            P = QL @ B.to_blocks(m, *lay) @ QR
            A = B.to_blocks(adam, *lay)
            norm_p = jnp.sqrt(jnp.sum(P * P, axis=(-2, -1), keepdims=True))
            norm_a = jnp.sqrt(jnp.sum(A * A, axis=(-2, -1), keepdims=True))
            scale = B.ratio_or_zero(norm_a, norm_p)
            direction.append(B.from_blocks(P * scale, s).astype(m.dtype))

        direction = jtu.tree_unflatten(treedef, direction)
        updates = B.finish(direction, params, lr, weight_decay, with_params)
        unflat = lambda xs: jtu.tree_unflatten(treedef, list(xs))  # noqa: E731
        # The factors and roots are guarded where they are computed (`update_factors`, by
        # `stats_ok`); the guard below reads only the update and the moments.
        updates, (count, mu, nu) = guard(stats_ok, updates, (t + 1, unflat(mu), unflat(nu)),
                                         (state.count, state.mu, state.nu))
        return updates, ShampooState(count, mu, nu, unflat(left), unflat(right),
                                     unflat(left_root), unflat(right_root))

    return optax.GradientTransformationExtraArgs(init, update)
