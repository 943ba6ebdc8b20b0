"""K-FAC (Martens & Grosse 2015) on registration-free Kronecker factors, as an optax gradient
transformation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from .._kronecker import FISHERS, MAX_FACTOR_SIZE, Model, statistics
from .._tree import tree_add, tree_dot, tree_scale, tree_sub, tree_zeros_like
from ._checks import check_init_params, check_int, check_learning_rate, check_number, check_state
from ._common import (
    KeyStream,
    adapt,
    bounds,
    every_member_cond,
    guard,
    learning_rate_at,
    sanitize,
    scalar,
)


class KFACState(NamedTuple):
    count: jax.Array  # int32: steps taken (skipped non-finite steps do not count)
    key: jax.Array  # uint32 raw PRNG key data (the sampled cotangents)
    A: Any  # per leaf: the average of the input factors A (d_in × d_in), or (0,)
    G: Any  # per leaf: the average of the output-cotangent factors G (d_out × d_out), or (0,)
    diagonal: Any  # per fallback leaf: the average diagonal estimate (params-shaped), or (0,)
    A_inv: Any  # (A + π√λ I)⁻¹ as of the last refresh
    G_inv: Any  # (G + √λ/π I)⁻¹ as of the last refresh
    damping: jax.Array  # λ
    velocity: Any  # δ, the last update (params-shaped): momentum, and the step ρ judges
    predicted: jax.Array  # M(δ), the quadratic model's change for δ (0: nothing to judge)
    rho: jax.Array  # the last reduction ratio (measured on the next minibatch)


def _inverse(S, shift):
    """(S + shift·I)⁻¹ of a symmetric PSD S by eigh (clipping its roundoff negatives)."""
    w, q = jnp.linalg.eigh(S)
    return ((q / (jnp.maximum(w, 0) + shift)[..., None, :]) @ q.T).astype(S.dtype)


def _damped_inverses(A, G, lam):
    """Factored Tikhonov damping (Martens & Grosse §6.3): A + π√λ I and G + (√λ/π) I with
    π² = (tr A / d_A) / (tr G / d_G), which balances the two factors' scales."""
    ta = jnp.trace(A) / A.shape[0]
    tg = jnp.trace(G) / G.shape[0]
    pi = jnp.where((ta > 0) & (tg > 0), jnp.sqrt(ta / jnp.where(tg > 0, tg, 1)), 1.0)
    root = jnp.sqrt(lam)
    return _inverse(A, pi * root), _inverse(G, root / pi)


def kfac(
    learning_rate: float | None = None, *, model_fn: Callable, loss_fn: Callable,
    example_batch: Any, damping: float = 1.0, decay: float = 0.95, inverse_freq: int = 10,
    fisher: str = "sampled", adapt_damping: bool = True, key: jax.Array | None = None,
    seed: int = 0, max_factor_size: int = MAX_FACTOR_SIZE,
) -> optax.GradientTransformationExtraArgs:
    """K-FAC: natural-gradient steps with the Kronecker-factored Gauss-Newton (Fisher) matrix
    of `jaxopt2.curvature.kronecker_factors`, found by tracing `model_fn` (no layer
    registration). Per dense or convolution layer W (gradient ∇W as a d_in × d_out matrix):

        A ← ε A + (1 − ε) A_batch,   G ← ε G + (1 − ε) G_batch     (ε = min(1 − 1/t, decay)),
        Δ_W = −(A + π√λ I)⁻¹ ∇W (G + √λ/π I)⁻¹                     (inverses every T steps),

    with factored Tikhonov damping (π balances the factors' traces); biases are their own
    blocks (A = 1), and leaves the tracer cannot factor (a `scan`, a product, ...) take
    Δ = −∇ / (d + λ) with d the averaged diagonal estimate.

    **Step length and momentum** (Martens & Grosse §7): the update is αΔ + μδ, δ the last
    update, with α, μ minimizing the damped quadratic model on the minibatch,

        M(s) = gᵀs + ½ sᵀ(C + λI)s,   C the exact Gauss-Newton matrix (two products),

    so no learning rate is needed (`learning_rate=α` fixes α instead, with no momentum).

    **Damping** (Levenberg-Marquardt) from a minibatch the step was not fitted to: at the
    next `update`, with its minibatch f, gradient g and Gauss-Newton matrix C at θ + δ,

        ρ = (f(θ + δ) − f(θ)) / (gᵀδ − ½ δᵀCδ),

    the actual change of f against its quadratic model (expanded at θ + δ, so the products
    of the momentum term are reused). λ ← λ·19/20 if ρ > 3/4, λ ← λ·20/19 if ρ < 1/4. On the
    minibatch δ was fitted to, ρ is biased upward and drives λ to the float floor (as in
    `hessian_free`); comparing the new minibatch's change with the old minibatch's
    prediction is biased downward near the noise floor (the fitted part of the prediction
    does not generalize) and drives λ up without bound. One extra forward pass.
    `adapt_damping=False` keeps λ = `damping`.

    **Arguments:** `model_fn(params, batch) -> outputs` and `loss_fn(outputs, batch) ->
    scalar` (the loss a sum or mean over the leading axis of the outputs); `example_batch`:
    a minibatch or a pytree of `jax.ShapeDtypeStruct` like one (`init` traces `model_fn` on
    it to find the layers, which fixes the state's shapes); `damping` the initial λ; `decay`
    ε; `inverse_freq` T; `fisher` ("sampled", "exact", "empirical": see
    `kronecker_factors`); `key`/`seed` for the sampled cotangents; `max_factor_size`: a
    leaf whose factor would be larger on either side takes the diagonal fallback. Pass the
    minibatch as `update(grads, state, params, batch=batch)`.

    **Cost per step:** a forward and a backward pass with probes (the statistics), k
    output-space Hessian-vector products and a k × k Cholesky per example (k outputs per
    example, e.g. the vocabulary of a language model with one row per position; none for
    "empirical"),
    one linearization and three Jacobian-vector products with output-space products (the
    quadratic model and ρ), one forward pass (ρ), the products aᵀa and gᵀg, and every T steps
    `eigh` of every factor (d_in³ + d_out³ per layer; under `jax.vmap` too, unless the
    members' step counts disagree, when a refresh runs both branches). Memory: d_in² +
    d_out² per layer, twice.

    The state is a `KFACState` of fixed structure; statistics are in the parameters' dtype
    (float32 or float64; half-precision parameters are refused, `eigh` has no such kernel);
    a non-finite gradient or step skips the update (zero update, state unchanged).

    References: J. Martens and R. Grosse, "Optimizing neural networks with
    Kronecker-factored approximate curvature", ICML 2015; R. Grosse and J. Martens, "A
    Kronecker-factored approximate Fisher matrix for convolution layers", ICML 2016.

    ```python
    import jax, jax.numpy as jnp, optax, jaxopt2
    X = jax.random.normal(jax.random.key(0), (64, 3))
    batch = (X, jnp.tanh(X @ jnp.array([[1.0], [-2.0], [0.5]])))
    model_fn = lambda p, b: jnp.tanh(b[0] @ p["W"] + p["b"])
    loss_fn = lambda out, b: 0.5 * jnp.mean((out - b[1]) ** 2)
    opt = jaxopt2.optimizers.kfac(model_fn=model_fn, loss_fn=loss_fn, example_batch=batch)
    params = {"W": jnp.zeros((3, 1)), "b": jnp.zeros(1)}
    state = opt.init(params)
    for _ in range(5):
        grads = jax.grad(lambda p: loss_fn(model_fn(p, batch), batch))(params)
        updates, state = opt.update(grads, state, params, batch=batch)
        params = optax.apply_updates(params, updates)
    ```
    """
    name = "kfac"
    for label, fn in (("model_fn", model_fn), ("loss_fn", loss_fn)):
        if not callable(fn):
            raise ValueError(f"kfac needs `{label}` (a function); got {fn!r}. K-FAC's factors "
                             f"come from the split loss_fn(model_fn(params, batch), batch).")
    if example_batch is None:
        raise ValueError("kfac needs `example_batch=` (a minibatch, or its shapes as "
                         "jax.ShapeDtypeStruct): `init` traces model_fn on it to find the "
                         "layers, which fixes the state's shapes.")
    check_learning_rate("learning_rate", learning_rate, allow_none=True)
    check_number("damping", damping, low=0.0, low_open=True)
    check_number("decay", decay, low=0.0, high=1.0, high_open=True)
    check_int("inverse_freq", inverse_freq)
    check_int("max_factor_size", max_factor_size)
    if fisher not in FISHERS:
        raise ValueError(f"kfac: `fisher` must be one of {FISHERS}; got {fisher!r}.")
    stream = KeyStream(name, key, seed)

    def empty(p):
        return jnp.zeros((0,), p.dtype)

    def init(params):
        check_init_params(name, params, half_precision=False)
        model = Model(model_fn, params, example_batch, max_factor_size)
        leaves, treedef = jtu.tree_flatten(params)

        def factor(side):
            return [empty(p) if lay is None else
                    jnp.zeros((lay.d_in, lay.d_in) if side == 0 else (lay.d_out, lay.d_out),
                              p.dtype)
                    for p, lay in zip(leaves, model.layouts, strict=True)]

        def eye(side):
            return [jnp.eye(len(x), dtype=x.dtype) if x.ndim == 2 else x for x in factor(side)]

        diag = [jnp.zeros_like(p) if lay is None else empty(p)
                for p, lay in zip(leaves, model.layouts, strict=True)]
        dtype = jnp.result_type(*leaves)
        pack = lambda xs: jtu.tree_unflatten(treedef, xs)  # noqa: E731
        return KFACState(jnp.zeros((), jnp.int32), stream.init(), pack(factor(0)),
                         pack(factor(1)), pack(diag), pack(eye(0)), pack(eye(1)),
                         scalar(damping, dtype), tree_zeros_like(params), scalar(0.0, dtype),
                         scalar(0.0, dtype))

    def update(grads, state, params=None, *, batch=None, value=None, **extra_args):
        del extra_args
        if params is None or batch is None:
            raise ValueError("kfac: pass the parameters and the minibatch: "
                             "`update(grads, state, params, batch=batch)`.")
        check_state(name, "state.velocity", state.velocity, params)
        g, finite = sanitize(grads, params)
        leaves, treedef = jtu.tree_flatten(params)
        flat = treedef.flatten_up_to
        pack = lambda xs: jtu.tree_unflatten(treedef, list(xs))  # noqa: E731
        model = Model(model_fn, params, batch, max_factor_size)
        for lay, A in zip(model.layouts, flat(state.A), strict=True):
            if (lay is None) != (A.ndim != 2) or (lay is not None and A.shape[0] != lay.d_in):
                raise ValueError("kfac.update: the state's factors do not match how model_fn "
                                 "uses the parameters on this batch; build the optimizer with "
                                 "an `example_batch` like the minibatches you train on.")
        dtype = jnp.result_type(*leaves)
        t = state.count
        new_key, sub = stream.split(state.key)
        A_b, G_b, d_b, outputs = statistics(model, loss_fn, leaves, batch, fisher, sub)
        f0 = loss_fn(outputs, batch).astype(dtype) if value is None else \
            jnp.asarray(value, dtype)

        w = jnp.minimum(1 - 1 / (t + 1).astype(dtype), decay).astype(dtype)
        ema = lambda old, new: old if new is None else (w * old + (1 - w) * new).astype(  # noqa: E731
            old.dtype)
        A = [ema(o, n) for o, n in zip(flat(state.A), A_b, strict=True)]
        G = [ema(o, n) for o, n in zip(flat(state.G), G_b, strict=True)]
        diag = [ema(o, n) for o, n in zip(flat(state.diagonal), d_b, strict=True)]

        # the quadratic model on the exact GGN: J s by jvp, then ∇²L in output space
        velocity = state.velocity
        _, lin = jax.linearize(lambda p: model_fn(p, batch), params)
        grad_out = jax.grad(lambda o: loss_fn(o, batch))

        def curvature(u, v):  # uᵀ C v with C = Jᵀ ∇²L J
            Ju, Jv = lin(u), lin(v)
            HJv = jax.jvp(grad_out, (outputs,), (Jv,))[1]
            return tree_dot(Ju, HJv).astype(dtype)

        c22 = curvature(velocity, velocity)
        b2 = tree_dot(g, velocity).astype(dtype)

        # ρ of the last update δ on this minibatch, which δ was not fitted to: the change
        # f(θ) − f(θ − δ) against the quadratic model of this minibatch at θ, gᵀδ − ½δᵀCδ
        lam = state.damping
        rho = state.rho
        if adapt_damping:
            f_before = loss_fn(model_fn(tree_sub(params, state.velocity), batch), batch)
            modelled = b2 - 0.5 * c22
            judged = (state.predicted < 0) & (jnp.abs(modelled) > 0)
            rho = jnp.where(judged, (f0 - f_before.astype(dtype)) / jnp.where(
                judged, modelled, 1), 0.0).astype(dtype)
            low, high = bounds(dtype)
            lam = adapt(lam, rho, jnp.isfinite(rho), ~judged, grow=20 / 19, shrink=19 / 20,
                        low=low, high=high)

        def inverses(A, G, lam, A_inv, G_inv):
            out = [_damped_inverses(a, gg, lam) if a.ndim == 2 else (a, gg)
                   for a, gg in zip(A, G, strict=True)]
            return [x for x, _ in out], [y for _, y in out]

        def kept(A, G, lam, A_inv, G_inv):
            return A_inv, G_inv

        # (a branch under jax.vmap too, unless the members' step counts disagree)
        A_inv, G_inv = every_member_cond(t % inverse_freq == 0, inverses, kept, list(A),
                                         list(G), lam, flat(state.A_inv), flat(state.G_inv))

        direction = []
        for gl, lay, Ai, Gi, d in zip(flat(g), model.layouts, A_inv, G_inv, diag, strict=True):
            if lay is None:
                direction.append(-gl / (d + lam))
                continue
            moved = jnp.transpose(gl, lay.perm)
            nat = Ai @ moved.reshape(lay.d_in, lay.d_out) @ Gi
            back = tuple(int(i) for i in np.argsort(lay.perm))
            direction.append(-jnp.transpose(nat.reshape(moved.shape), back).astype(gl.dtype))
        direction = pack(direction)

        q11 = curvature(direction, direction) + lam * tree_dot(direction, direction)
        b1 = tree_dot(g, direction).astype(dtype)
        if learning_rate is None:
            q12 = curvature(direction, velocity) + lam * tree_dot(direction, velocity)
            q22 = c22 + lam * tree_dot(velocity, velocity)
            det = q11 * q22 - q12 * q12
            two = (det > 1e-6 * q11 * q22) & (q22 > 0)
            safe = jnp.where(two, det, 1.0)
            alpha = jnp.where(two, (-q22 * b1 + q12 * b2) / safe, -b1 / q11)
            mu = jnp.where(two, (q12 * b1 - q11 * b2) / safe, 0.0)
            predicted = 0.5 * (alpha * b1 + mu * b2)  # M at its minimizer: ½ bᵀx
        else:
            alpha = learning_rate_at(learning_rate, t, dtype)
            mu = jnp.zeros((), dtype)
            predicted = alpha * b1 + 0.5 * alpha * alpha * q11
        step = tree_add(tree_scale(alpha, direction), tree_scale(mu, velocity))
        step = jtu.tree_map(lambda s, p: s.astype(p.dtype), step, params)

        new_state = KFACState(t + 1, new_key, pack(A), pack(G), pack(diag), pack(A_inv),
                              pack(G_inv), lam, step, predicted.astype(dtype), rho)
        ok = finite & jnp.isfinite(f0) & (predicted <= 0)
        return guard(ok, step, new_state, state)

    return optax.GradientTransformationExtraArgs(init, update)
