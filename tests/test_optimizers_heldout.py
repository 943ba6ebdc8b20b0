"""hessian_free's damping (and regularized_newton's H) judged on a held-out minibatch, and
their curvature taken on a separate minibatch (issue 17): on the minibatch the step was
fitted to, a linear least-squares model is its own quadratic model, ρ = 1 every step and
λ collapses to the float floor; on a held-out minibatch ρ is the hand-computed ratio of that
minibatch and λ stays away from the floor."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt2 import optimizers as O

DIM, BATCH = 20, 8


def data(dtype):
    kx, kw, kn = jax.random.split(jax.random.key(0), 3)
    X = jax.random.normal(kx, (400, DIM), dtype)
    y = X @ jax.random.normal(kw, (DIM,), dtype) + 2.0 * jax.random.normal(kn, (400,), dtype)
    return X, y


def model_fn(w, b):
    return b[0] @ w


def loss_fn(out, b):
    return 0.5 * jnp.mean((out - b[1]) ** 2)


def minibatch(X, y, k):
    idx = jax.random.choice(jax.random.fold_in(jax.random.key(1), k), len(X), (BATCH,),
                            replace=False)
    return X[idx], y[idx]


def run(opt, X, y, steps, heldout):
    def step(k, carry):
        w, s = carry
        b = minibatch(X, y, 2 * k)
        g = jax.grad(lambda w: loss_fn(model_fn(w, b), b))(w)
        kw = dict(heldout_batch=minibatch(X, y, 2 * k + 1)) if heldout else {}
        u, s = opt.update(g, s, w, batch=b, **kw)
        return optax.apply_updates(w, u), s

    w = jnp.zeros(DIM, X.dtype)
    return jax.jit(lambda w: jax.lax.fori_loop(0, steps, step, (w, opt.init(w))))(w)


@pytest.mark.parametrize("name, field, above", [("hessian_free", "damping", 1e-3),
                                                  ("regularized_newton", "lipschitz", 1e-4)])
def test_heldout_ratio_keeps_damping_off_the_float_floor(name, field, above):
    """float32, 40 steps on minibatches of 8 with 20 weights: the same-minibatch rule shrinks
    hessian_free's λ (by 2/3) or regularized_newton's H (by 1/2) every step to eps (ρ = 1);
    the held-out rule keeps it orders of magnitude above (H: 2⁻¹⁰ here, eps ≈ 2⁻²³); both
    losses stay finite."""
    X, y = data(jnp.float32)
    opt = (O.hessian_free(model_fn=model_fn, loss_fn=loss_fn, damping=1.0)
           if name == "hessian_free"
           else O.regularized_newton(model_fn=model_fn, loss_fn=loss_fn, lipschitz=1.0))
    eps = float(jnp.finfo(jnp.float32).eps)
    w_same, s_same = run(opt, X, y, 40, heldout=False)
    w_held, s_held = run(opt, X, y, 40, heldout=True)
    assert float(getattr(s_same, field)) <= 2 * eps
    assert float(getattr(s_held, field)) > above
    full = lambda w: float(loss_fn(model_fn(w, (X, y)), (X, y)))  # noqa: E731
    assert np.isfinite(full(w_same)) and np.isfinite(full(w_held))


@pytest.mark.float64
def test_heldout_ratio_equals_hand_computation():
    """One step from w = 0: state.rho is (f_h(s) − f_h(0)) / (g_hᵀs + ½ sᵀ(X_hᵀX_h/n)s) on the
    held-out minibatch h, with s the update taken (judged on the fitted minibatch b)."""
    X, y = data(jnp.float64)
    b, h = minibatch(X, y, 0), minibatch(X, y, 1)
    opt = O.hessian_free(model_fn=model_fn, loss_fn=loss_fn, damping=0.5, cg_rtol=1e-12,
                         cg_max_steps=50)
    w = jnp.zeros(DIM)
    g = jax.grad(lambda w: loss_fn(model_fn(w, b), b))(w)
    s, state = opt.update(g, opt.init(w), w, batch=b, heldout_batch=h)
    f_h = lambda w: loss_fn(model_fn(w, h), h)  # noqa: E731
    q = jnp.dot(jax.grad(f_h)(w), s) + 0.5 * s @ (h[0].T @ h[0] / BATCH) @ s
    expected = (f_h(s) - f_h(w)) / q
    assert float(jnp.linalg.norm(s)) > 0
    np.testing.assert_allclose(state.rho, expected, rtol=1e-10)
    # the damping followed that ratio (Martens' bands 1/4, 3/4: ×3/2, ×2/3)
    factor = 1.5 if expected < 0.25 else (2 / 3 if expected > 0.75 else 1.0)
    np.testing.assert_allclose(state.damping, 0.5 * factor, rtol=1e-12)


def test_heldout_needs_adaptive_damping():
    opt = O.hessian_free(model_fn=model_fn, loss_fn=loss_fn, adapt_damping=False)
    X, y = data(jnp.float32)
    b = minibatch(X, y, 0)
    w = jnp.zeros(DIM)
    with pytest.raises(ValueError, match="held-out"):
        opt.update(jnp.ones(DIM), opt.init(w), w, batch=b, heldout_batch=b)


# ----------------------------------------------------------------- curvature minibatch


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.float64,
                                                                marks=pytest.mark.float64)])
@pytest.mark.parametrize("name", ["hessian_free", "regularized_newton"])
def test_curvature_batch_takes_the_products_on_its_own_minibatch(name, dtype):
    """One jitted step from w = 0 with `curvature_batch=c`: the CG direction solves
    (X_cᵀX_c/n_c + λI) p = −g_b, the curvature of c and the gradient of b (against
    `jnp.linalg.solve`); with c = b it is the plain step, and a c that differs from b gives
    a different step; under `vmap` over two curvature minibatches each step is its own.
    regularized_newton's λ = √(H‖g_b‖)."""
    X, y = data(dtype)
    b = minibatch(X, y, 0)
    c = (X[300:302], y[300:302])  # 2 examples: a rank-2 curvature, far from b's
    w = jnp.zeros(DIM, dtype)
    g = jax.grad(lambda w: loss_fn(model_fn(w, b), b))(w)
    if name == "hessian_free":
        opt = O.hessian_free(model_fn=model_fn, loss_fn=loss_fn, damping=0.5, cg_rtol=1e-13,
                             cg_max_steps=100, adapt_damping=False)
        lam = 0.5
    else:
        opt = O.regularized_newton(model_fn=model_fn, loss_fn=loss_fn, lipschitz=2.0,
                                   cg_rtol=1e-13, cg_max_steps=100, adaptive=False)
        lam = jnp.sqrt(2.0 * jnp.linalg.norm(g))
    state = opt.init(w)
    update = jax.jit(lambda b, c: opt.update(g, state, w, batch=b, curvature_batch=c)[0])
    step = update(b, c)
    assert step.dtype == dtype
    want = jnp.linalg.solve(c[0].T @ c[0] / 2 + lam * jnp.eye(DIM, dtype=dtype), -g)
    tol = 1e-8 if dtype == jnp.float64 else 2e-4
    np.testing.assert_allclose(step, want, rtol=tol, atol=tol * float(jnp.abs(want).max()))
    plain, _ = jax.jit(lambda b: opt.update(g, state, w, batch=b))(b)
    np.testing.assert_allclose(update(b, b), plain, rtol=10 * tol, atol=1e-6 * tol)
    assert float(jnp.linalg.norm(step - plain)) > 1e-3 * float(jnp.linalg.norm(plain))
    c2 = (X[310:312], y[310:312])
    both = jax.vmap(update, in_axes=(None, 0))(b, jax.tree.map(lambda u, v: jnp.stack([u, v]),
                                                               c, c2))
    np.testing.assert_allclose(both[0], step, rtol=tol, atol=tol * float(jnp.abs(want).max()))
    np.testing.assert_allclose(both[1], update(b, c2), rtol=tol,
                               atol=tol * float(jnp.abs(want).max()))


def test_curvature_batch_needs_the_model_split():
    opt = O.hessian_free()
    X, y = data(jnp.float32)
    w = jnp.zeros(DIM)
    value_fn = lambda w: loss_fn(model_fn(w, (X, y)), (X, y))  # noqa: E731
    with pytest.raises(ValueError, match="curvature_batch.*model_fn= and loss_fn="):
        opt.update(jnp.ones(DIM), opt.init(w), w, value_fn=value_fn,
                   curvature_batch=(X[:2], y[:2]))
