"""jaxopt2.curvature.kronecker_factors (registration-free K-FAC statistics) against dense
Gauss-Newton matrices and hand-computed factors, and jaxopt2.optimizers.kfac: one exact
Newton step on a linear least-squares problem, the reduction ratio measured on the next
minibatch, and the optax contract."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jaxopt2
from jaxopt2 import optimizers as O

kronecker_factors = jaxopt2.curvature.kronecker_factors


def mse(out, batch):
    return 0.5 * jnp.mean(jnp.sum((out - batch[1]) ** 2, axis=1))


def dense_ggn(model_fn, loss_fn, params, batch):
    x, unravel = ravel_pytree(params)
    out = model_fn(params, batch)
    J = jax.jacobian(lambda v: model_fn(unravel(v), batch).ravel())(x)
    H = jax.hessian(lambda o: loss_fn(o.reshape(out.shape), batch))(out.ravel())
    return J.T @ H @ J


@pytest.mark.float64
def test_single_linear_layer_with_one_output_is_exact():
    """y = X w (one output per example): the GGN is XᵀX/N ⊗ [1], which K-FAC reproduces
    exactly with fisher="exact"; the sampled factors average to it."""
    X = jax.random.normal(jax.random.key(0), (40, 3), jnp.float64)
    batch = (X, jnp.zeros((40, 1)))
    model_fn = lambda p, b: b[0] @ p["w"]  # noqa: E731
    params = {"w": jnp.ones((3, 1))}
    f = kronecker_factors(model_fn, mse, params, batch, fisher="exact")
    np.testing.assert_allclose(jnp.kron(f.A["w"], f.G["w"]),
                               dense_ggn(model_fn, mse, params, batch), rtol=1e-12)
    sampled = jax.jit(jax.vmap(lambda k: kronecker_factors(model_fn, mse, params, batch,
                                                           key=k).G["w"]))
    mean = jnp.mean(sampled(jax.random.split(jax.random.key(1), 400)), axis=0)
    np.testing.assert_allclose(mean, f.G["w"], rtol=0.05)


def mlp(p, batch):
    h = jnp.tanh(batch[0] @ p[0]["W"] + p[0]["b"])
    return h @ p[1]["W"] + p[1]["b"]


@pytest.mark.float64
def test_mlp_factors_equal_hand_computation_and_equinox_layout():
    """A of the first layer is XᵀX/N, A of the second the mean of its hidden activations'
    outer products; G of the last layer (fisher="exact") is Σₙ ∇²ℓₙ of the loss in the
    outputs; the bias blocks have A = 1 and the same G; an equinox MLP with the same weights
    (W @ x under vmap) gives the same factors."""
    ks = jax.random.split(jax.random.key(2), 4)
    X = jax.random.normal(ks[0], (16, 3), jnp.float64)
    Y = jax.random.normal(ks[1], (16, 2), jnp.float64)
    params = [{"W": jax.random.normal(ks[2], (3, 4), jnp.float64), "b": jnp.full(4, 0.1)},
              {"W": jax.random.normal(ks[3], (4, 2), jnp.float64), "b": jnp.zeros(2)}]
    f = kronecker_factors(mlp, mse, params, (X, Y), fisher="exact")
    H = jnp.tanh(X @ params[0]["W"] + params[0]["b"])
    np.testing.assert_allclose(f.A[0]["W"], X.T @ X / 16, rtol=1e-12)
    np.testing.assert_allclose(f.A[1]["W"], H.T @ H / 16, rtol=1e-12)
    np.testing.assert_allclose(f.G[1]["W"], jnp.eye(2), rtol=1e-12)  # Σₙ (1/N)·I for MSE
    np.testing.assert_allclose(f.A[1]["b"], [[1.0]])
    np.testing.assert_allclose(f.G[1]["b"], f.G[1]["W"], rtol=1e-12)
    assert f.diagonal[0]["W"].shape == (0,)

    model = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jax.random.key(0),
                       dtype=jnp.float64)
    model = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight,
                                   m.layers[1].bias), model,
                        (params[0]["W"].T, params[0]["b"], params[1]["W"].T, params[1]["b"]))
    arrays, static = eqx.partition(model, eqx.is_array)
    eqx_fn = lambda p, b: jax.vmap(eqx.combine(p, static))(b[0])  # noqa: E731
    g = kronecker_factors(eqx_fn, mse, arrays, (X, Y), fisher="exact")
    for i in range(2):
        np.testing.assert_allclose(g.A.layers[i].weight, f.A[i]["W"], rtol=1e-10)
        np.testing.assert_allclose(g.G.layers[i].weight, f.G[i]["W"], rtol=1e-10)
        np.testing.assert_allclose(g.G.layers[i].bias, f.G[i]["b"], rtol=1e-10)


@pytest.mark.slow
@pytest.mark.float64
def test_convolution_factors_and_diagonal_fallback():
    """A conv kernel's A is the mean outer product of the input patches (im2col by hand), its
    G (fisher="exact", MSE over N examples) is (number of output positions)·I; a leaf used
    elementwise (a scale) gets an unbiased estimate of the GGN diagonal."""
    X = jax.random.normal(jax.random.key(3), (3, 5, 5, 2), jnp.float64)  # NHWC
    params = {"k": jax.random.normal(jax.random.key(4), (3, 3, 2, 4), jnp.float64),
              "s": jnp.array([1.5, -0.5, 2.0, 1.0])}

    def model_fn(p, b):
        z = jax.lax.conv_general_dilated(b[0], p["k"], (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (z * p["s"]).reshape(len(b[0]), -1)

    batch = (X, jnp.zeros((3, 36)))
    f = kronecker_factors(model_fn, mse, params, batch, fisher="exact")
    rows = [np.concatenate([np.asarray(X[n, i:i + 3, j:j + 3, c]).ravel() for c in range(2)])
            for n in range(3) for i in range(3) for j in range(3)]
    P = np.stack(rows)  # (27, 18): features ordered (channel, kh, kw)
    np.testing.assert_allclose(f.A["k"], P.T @ P / 27, rtol=1e-12)
    # G sees the cotangent of z·s, so it is 9·diag(s²)
    np.testing.assert_allclose(f.G["k"], 9 * jnp.diag(params["s"] ** 2), rtol=1e-12)
    full = dense_ggn(model_fn, mse, params, batch)
    diagonals = jax.jit(jax.vmap(lambda k: kronecker_factors(
        model_fn, mse, params, batch, key=k, fisher="exact").diagonal["s"]))
    mean = jnp.mean(diagonals(jax.random.split(jax.random.key(5), 300)), axis=0)
    np.testing.assert_allclose(mean, jnp.diag(full)[-4:], rtol=0.1)


# --------------------------------------------------------------------------- the optimizer


@pytest.mark.float64
def test_kfac_one_step_solves_linear_least_squares():
    """A linear model without bias and with one output: K-FAC is the exact GGN = Hessian,
    α from the quadratic model is 1, so one step (tiny damping) lands on the least-squares
    solution."""
    X = jax.random.normal(jax.random.key(5), (30, 4), jnp.float64)
    y = X @ jnp.array([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * jax.random.normal(
        jax.random.key(6), (30, 1), jnp.float64)
    model_fn = lambda p, b: b[0] @ p["w"]  # noqa: E731
    batch = (X, y)
    opt = O.kfac(model_fn=model_fn, loss_fn=mse, example_batch=batch, damping=1e-24,
                 fisher="exact")
    params = {"w": jnp.zeros((4, 1), jnp.float64)}
    grads = jax.grad(lambda p: mse(model_fn(p, batch), batch))(params)
    updates, state = jax.jit(lambda g, s, p: opt.update(g, s, p, batch=batch))(
        grads, opt.init(params), params)
    want = jnp.linalg.lstsq(X, y)[0]
    np.testing.assert_allclose(updates["w"], want, rtol=1e-6)  # α from the model, rounded
    assert float(state.predicted) < 0


@pytest.mark.float64
def test_reduction_ratio_is_measured_on_the_next_minibatch():
    """After a step δ fitted on minibatch 1, the next update (minibatch 2, gradient g₂ and
    dense Gauss-Newton C₂ at θ + δ) records ρ = (f₂(θ + δ) − f₂(θ)) / (g₂ᵀδ − ½ δᵀC₂δ), and
    λ moves by Martens' rule."""
    ks = jax.random.split(jax.random.key(7), 4)
    batches = [(jax.random.normal(ks[i], (16, 3), jnp.float64),
                jax.random.normal(ks[i + 2], (16, 2), jnp.float64)) for i in range(2)]
    params = [{"W": 0.5 * jnp.ones((3, 4)), "b": jnp.zeros(4)},
              {"W": 0.5 * jnp.ones((4, 2)), "b": jnp.zeros(2)}]
    opt = O.kfac(model_fn=mlp, loss_fn=mse, example_batch=batches[0])
    update = jax.jit(lambda g, s, p, b: opt.update(g, s, p, batch=b))
    loss = lambda p, b: mse(mlp(p, b), b)  # noqa: E731
    state = opt.init(params)
    u1, state = update(jax.grad(loss)(params, batches[0]), state, params, batches[0])
    p1 = optax.apply_updates(params, u1)
    g2 = jax.grad(loss)(p1, batches[1])
    _, state2 = update(g2, state, p1, batches[1])
    delta = ravel_pytree(u1)[0]
    C2 = dense_ggn(mlp, mse, p1, batches[1])
    model = ravel_pytree(g2)[0] @ delta - 0.5 * delta @ C2 @ delta
    want = (float(loss(p1, batches[1])) - float(loss(params, batches[1]))) / float(model)
    np.testing.assert_allclose(float(state2.rho), want, rtol=1e-8)
    factor = 19 / 20 if want > 0.75 else (20 / 19 if want < 0.25 else 1.0)
    np.testing.assert_allclose(float(state2.damping), factor * float(state.damping), rtol=1e-12)


@pytest.mark.slow
def test_kfac_trains_stable_state_and_skips_non_finite():
    """float32: an MLP trained for 12 steps with one trace and a state of fixed signature
    lowers the loss below untuned Adam(1e-2)'s at the same step; a NaN gradient is a zero
    update and the state unchanged; bad construction is refused."""
    X = jax.random.normal(jax.random.key(8), (64, 3))
    Y = jnp.stack([jnp.sin(X[:, 0]), X[:, 1] * X[:, 2]], axis=1)
    batch = (X, Y)
    params = [{"W": 0.5 * jax.random.normal(jax.random.key(9), (3, 16)), "b": jnp.zeros(16)},
              {"W": 0.5 * jax.random.normal(jax.random.key(10), (16, 2)), "b": jnp.zeros(2)}]
    loss = lambda p: mse(mlp(p, batch), batch)  # noqa: E731
    traces = []

    def train(opt):
        @jax.jit
        def step(p, s):
            traces.append(None)
            u, s = opt.update(jax.grad(loss)(p), s, p, batch=batch)
            return optax.apply_updates(p, u), u, s

        p, s = params, opt.init(params)
        sig = jtu.tree_structure(s), [(x.shape, x.dtype) for x in jtu.tree_leaves(s)]
        for _ in range(12):
            p, u, s = step(p, s)
            assert (jtu.tree_structure(s), [(x.shape, x.dtype) for x in jtu.tree_leaves(s)]) \
                == sig
        return p, s

    kfac = O.kfac(model_fn=mlp, loss_fn=mse, example_batch=batch, inverse_freq=5)
    p, s = train(kfac)
    assert len(traces) == 1
    p_adam, _ = train(optax.adam(1e-2))
    assert float(loss(p)) < float(loss(p_adam))
    bad = jtu.tree_map(lambda x: jnp.full_like(x, jnp.nan), params)
    u, s2 = jax.jit(lambda g, s, p: kfac.update(g, s, p, batch=batch))(bad, s, p)
    assert all(bool(jnp.all(x == 0)) for x in jtu.tree_leaves(u))
    jtu.tree_map(np.testing.assert_array_equal, s2, s)
    with pytest.raises(ValueError, match="example_batch"):
        O.kfac(model_fn=mlp, loss_fn=mse, example_batch=None)
    with pytest.raises(ValueError, match="fisher"):
        O.kfac(model_fn=mlp, loss_fn=mse, example_batch=batch, fisher="true")
    with pytest.raises(ValueError, match="batch=batch"):
        kfac.update(bad, s, p)
    with pytest.raises(TypeError, match="float16"):
        kfac.init(jtu.tree_map(lambda x: x.astype(jnp.bfloat16), params))
