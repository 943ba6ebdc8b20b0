"""jaxopt2.curvature.kronecker_factors and optimizers.kfac on a transformer (issue 17's third
task): the dense layers inside attention and the MLP are found as Kronecker layers, the
embeddings and LayerNorm scales take the diagonal fallback, LayerNorm shifts are bias blocks,
a factor larger than `max_factor_size` falls back to the diagonal, and the cheap
(Cholesky) square root of the softmax's Hessian gives the sampled Fisher the exact one
averages to."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt2
from jaxopt2 import optimizers as O
from jaxopt2._kronecker import Model, _clipped_sqrt, _psd_sqrt

kronecker_factors = jaxopt2.curvature.kronecker_factors
N, T, D, HEADS, V = 3, 5, 8, 2, 7


def init(key, dtype=jnp.float32):
    ks = jax.random.split(key, 6)
    normal = lambda k, shape: (jax.random.normal(k, shape) / math.sqrt(shape[0])).astype(  # noqa: E731
        dtype)
    return {"embed": normal(ks[0], (V, D)), "position": normal(ks[1], (T, D)),
            "norm": {"g": jnp.ones(D, dtype), "b": jnp.full(D, 0.1, dtype)},
            "qkv": normal(ks[2], (D, 3 * D)), "proj": normal(ks[3], (D, D)),
            "head": {"W": normal(ks[4], (D, V)), "b": jnp.zeros(V, dtype)}}


def layer_norm(p, x):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["g"] + p["b"]


def hidden(p, tokens):
    """The input of the attention block's dense layer (after the LayerNorm)."""
    return layer_norm(p["norm"], p["embed"][tokens] + p["position"])


def model_fn(p, batch):
    tokens = batch[0][:, :-1]
    n, hd = tokens.shape[0], D // HEADS
    x = hidden(p, tokens)
    split = lambda z: z.reshape(n, T, HEADS, hd).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = map(split, jnp.split(x @ p["qkv"], 3, axis=-1))
    scores = jnp.where(jnp.tril(jnp.ones((T, T), bool)), q @ k.swapaxes(-1, -2), -1e9)
    att = (jax.nn.softmax(scores / math.sqrt(hd), -1) @ v).transpose(0, 2, 1, 3)
    h = x + att.reshape(n, T, D) @ p["proj"]
    return (h @ p["head"]["W"] + p["head"]["b"]).reshape(n * T, V)  # one row per prediction


def xent(z, batch):
    y = batch[0][:, 1:].reshape(-1)
    return jnp.mean(jax.nn.logsumexp(z, 1) - jnp.take_along_axis(z, y[:, None], 1)[:, 0])


def tokens(key, n=N):
    return (jax.random.randint(key, (n, T + 1), 0, V),)


@pytest.mark.float64
def test_transformer_layers_found_and_factors_match_hand_computation():
    """qkv, proj and head are Kronecker layers (rows = every position of every sequence), the
    embedding (a gather) and the LayerNorm scale (a product) are diagonal, the LayerNorm shift
    and the head's bias are bias blocks; A of qkv is the mean outer product of the normalized
    inputs, G of the head (fisher="exact") is Σ over rows of the softmax's Hessian
    (diag p − p pᵀ)/rows, and the position table (a (T, D) "bias") takes the diagonal once
    its T·D side exceeds `max_factor_size`."""
    params = init(jax.random.key(0), jnp.float64)
    batch = tokens(jax.random.key(1))
    model = Model(model_fn, params, batch)
    lay = jax.tree.unflatten(jax.tree.structure(params), model.layouts)
    assert lay["embed"] is None and lay["norm"]["g"] is None
    assert (lay["qkv"].d_in, lay["qkv"].d_out) == (D, 3 * D)
    assert (lay["head"]["W"].d_in, lay["head"]["W"].d_out) == (D, V)
    assert (lay["norm"]["b"].d_in, lay["norm"]["b"].d_out) == (1, D)
    assert (lay["position"].d_in, lay["position"].d_out) == (1, T * D)

    f = kronecker_factors(model_fn, xent, params, batch, fisher="exact")
    x = hidden(params, batch[0][:, :-1]).reshape(-1, D)
    np.testing.assert_allclose(f.A["qkv"], x.T @ x / (N * T), rtol=1e-12)
    p = jax.nn.softmax(model_fn(params, batch), -1)
    hess = jnp.sum(jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :], 0) / (N * T)
    np.testing.assert_allclose(f.G["head"]["W"], hess, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(f.G["head"]["b"], hess, rtol=1e-10, atol=1e-14)
    assert f.diagonal["embed"].shape == (V, D) and f.diagonal["qkv"].shape == (0,)
    assert f.G["position"].shape == (T * D, T * D)

    small = kronecker_factors(model_fn, xent, params, batch, fisher="exact",
                              max_factor_size=T * D - 1)
    assert small.G["position"].shape == (0,) and small.diagonal["position"].shape == (T, D)
    np.testing.assert_allclose(small.G["qkv"], f.G["qkv"], rtol=1e-12)
    assert bool(jnp.all(small.diagonal["position"] >= 0))


@pytest.mark.float64
def test_sampled_fisher_with_the_cholesky_root_averages_to_the_exact_factor():
    """fisher="sampled" draws u = C z with C the Cholesky factor of the (singular) softmax
    Hessian plus √ε·max diag: the mean of its head factor G over keys is the exact G."""
    params = init(jax.random.key(3), jnp.float64)
    batch = tokens(jax.random.key(4))
    exact = kronecker_factors(model_fn, xent, params, batch, fisher="exact").G["head"]["W"]
    sampled = jax.jit(jax.vmap(lambda k: kronecker_factors(
        model_fn, xent, params, batch, key=k).G["head"]["W"]))(
        jax.random.split(jax.random.key(5), 400))
    np.testing.assert_allclose(jnp.mean(sampled, 0), exact, atol=0.1 * float(
        jnp.max(jnp.abs(exact))))


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.float64,
                                                              marks=pytest.mark.float64)])
def test_psd_sqrt_factors_a_singular_hessian_and_clips_an_indefinite_one(dtype):
    """C Cᵀ equals a softmax Hessian (PSD, one null vector) up to the √ε relative shift, in
    float32 and float64; an indefinite matrix (Cholesky fails) takes the clipped
    eigendecomposition, the same as `_clipped_sqrt`."""
    p = jax.nn.softmax(jax.random.normal(jax.random.key(6), (4, V))).astype(dtype)
    H = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
    C = _psd_sqrt(H)
    shift = float(jnp.sqrt(jnp.finfo(dtype).eps)) * 0.25
    np.testing.assert_allclose(C @ C.swapaxes(-1, -2), H, atol=3 * shift)
    assert C.dtype == dtype
    M = jnp.stack([H[0], jnp.diag(jnp.arange(-2.0, V - 2.0).astype(dtype))])
    C = _psd_sqrt(M)
    np.testing.assert_allclose(C @ C.swapaxes(-1, -2), (_clipped_sqrt(M) @ _clipped_sqrt(
        M).swapaxes(-1, -2)), atol=10 * float(jnp.finfo(dtype).eps) * V)
    np.testing.assert_allclose(jnp.diag(C[1] @ C[1].T), jnp.maximum(jnp.arange(-2.0, V - 2.0),
                                                                    0), atol=1e-5)


@pytest.mark.slow
def test_kfac_trains_the_transformer_in_float32():
    """Twenty jitted K-FAC steps on fresh minibatches (its own step length, default
    damping) lower the held-out loss of the small transformer, with finite state; the
    position table is factored by default and diagonal below `max_factor_size`."""
    params = init(jax.random.key(7))
    held_out = tokens(jax.random.key(8), 16)
    loss = lambda p, b: xent(model_fn(p, b), b)  # noqa: E731

    def run(opt):
        @jax.jit
        def step(k, carry):
            p, s = carry
            b = tokens(jax.random.fold_in(jax.random.key(9), k), 8)
            value, g = jax.value_and_grad(loss)(p, b)
            u, s = opt.update(g, s, p, batch=b, value=value)
            return optax.apply_updates(p, u), s

        p, s = jax.lax.fori_loop(0, 20, step, (params, opt.init(params)))
        return p, s

    example = tokens(jax.random.key(0), 8)
    p, s = run(O.kfac(model_fn=model_fn, loss_fn=xent, example_batch=example,
                      max_factor_size=T * D - 1))
    assert s.A["position"].shape == (0,) and s.diagonal["position"].shape == (T, D)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(s))
    before, after = float(loss(params, held_out)), float(loss(p, held_out))
    assert after < before - 0.05, (before, after)
