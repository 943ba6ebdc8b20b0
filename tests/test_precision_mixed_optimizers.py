"""Mixed precision in the curvature-based optax transformations (issue 18): `hessian_free`
and `regularized_newton` with `precision=MixedPrecision(bfloat16)` run their curvature
products in bfloat16 on a bfloat16 copy of the parameters, the direction and the minibatch,
while the gradient, CG's vectors, the losses and the damping stay in the parameters' dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt2
from jaxopt2 import MixedPrecision
from jaxopt2.optimizers._common import Problem

N, D = 256, 10
_rng = np.random.default_rng(7)
X = (_rng.normal(size=(N, D)) * np.linspace(1.0, 4.0, D)).astype(np.float32)
T = (X @ _rng.normal(size=D) + 0.1 * _rng.normal(size=N)).astype(np.float32)
BATCH = (jnp.asarray(X), jnp.asarray(T))
UNIT = 2.0**-8


def model_fn(p, b):
    return b[0] @ p["w"] + p["c"]


def loss_fn(out, b):
    return 0.5 * jnp.mean((out - b[1]) ** 2)


def _params():
    return {"w": jnp.asarray(0.1 * _rng.normal(size=D), jnp.float32), "c": jnp.zeros(())}


def _ggn_dense(params):
    """C = [X 1]ᵀ[X 1]/n: the Gauss-Newton matrix of the linear model, exactly."""
    A = np.c_[X, np.ones(N)].astype(np.float64)
    return A.T @ A / N


def test_products_are_low_precision_and_returned_in_the_params_dtype():
    params = _params()
    exact = Problem("hessian_free", "ggn", params, None, BATCH, model_fn, loss_fn,
                    needs_value=False).operator()
    low = Problem("hessian_free", "ggn", params, None, BATCH, model_fn, loss_fn,
                  needs_value=False, precision=MixedPrecision(jnp.bfloat16)).operator()
    v = {"w": jnp.asarray(_rng.normal(size=D), jnp.float32), "c": jnp.ones(())}
    out, ref = low.mv(v), exact.mv(v)
    assert out["w"].dtype == jnp.float32 and out["c"].dtype == jnp.float32
    flat = lambda t: np.r_[np.asarray(t["w"], np.float64), float(t["c"])]  # noqa: E731
    scale = np.linalg.norm(_ggn_dense(params), 2) * np.linalg.norm(flat(v))
    err = np.linalg.norm(flat(out) - flat(ref)) / scale
    assert 10 * float(jnp.finfo(jnp.float32).eps) < err < 8 * UNIT, err


@pytest.mark.parametrize("name", ["hessian_free", "regularized_newton"])
def test_step_solves_the_damped_system_to_bfloat16_accuracy(name):
    """One update with a tight CG solve: the step solves (C + λI)p = −g with C in bfloat16,
    so it is off the float32 step by at most about κ·δ (first-order perturbation), and by
    more than float32 round-off; the update comes back in float32."""
    params = _params()
    kw = dict(model_fn=model_fn, loss_fn=loss_fn, cg_max_steps=60, cg_rtol=1e-7)
    if name == "hessian_free":
        kw.update(adapt_damping=False, damping=1e-2)
    else:
        kw.update(adaptive=False)
    make = getattr(jaxopt2.optimizers, name)
    grads = jax.grad(lambda p: loss_fn(model_fn(p, BATCH), BATCH))(params)
    steps = {}
    for label, prec in (("full", None), ("bf16", MixedPrecision(jnp.bfloat16))):
        opt = make(precision=prec, **kw)
        upd, _ = jax.jit(opt.update)(grads, opt.init(params), params, batch=BATCH)
        assert upd["w"].dtype == jnp.float32
        steps[label] = np.r_[np.asarray(upd["w"], np.float64), float(upd["c"])]
    rel = np.linalg.norm(steps["bf16"] - steps["full"]) / np.linalg.norm(steps["full"])
    C = _ggn_dense(params)
    kappa = np.linalg.cond(C)
    assert rel < kappa * UNIT, (rel, kappa)  # measured 1.2e-3–3.1e-3 at κ = 22
    assert rel > 10 * float(jnp.finfo(jnp.float32).eps)  # the products really were bf16


def test_training_tracks_float32():
    """50 hessian_free steps on the same minibatches: the bfloat16-product run ends at a
    training loss within 5% (relative) of the float32 run's, both far below the start."""
    def run(prec):
        opt = jaxopt2.optimizers.hessian_free(model_fn=model_fn, loss_fn=loss_fn,
                                              precision=prec)
        params = _params()
        state = opt.init(params)

        @jax.jit
        def step(p, s, b):
            g = jax.grad(lambda q: loss_fn(model_fn(q, b), b))(p)
            u, s = opt.update(g, s, p, batch=b)
            return optax.apply_updates(p, u), s

        rng = np.random.default_rng(0)
        for _ in range(50):
            idx = rng.choice(N, 64, replace=False)
            params, state = step(params, state, (BATCH[0][idx], BATCH[1][idx]))
        return float(loss_fn(model_fn(params, BATCH), BATCH))

    start = float(loss_fn(model_fn(_params(), BATCH), BATCH))
    full, low = run(None), run(MixedPrecision(jnp.bfloat16))
    assert full < 0.05 * start and low < 0.05 * start
    assert abs(low - full) <= 0.05 * full + 1e-6, (low, full)


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="MixedPrecision"):
        jaxopt2.optimizers.hessian_free(model_fn=model_fn, loss_fn=loss_fn,
                                        precision="bfloat16")
    with pytest.raises(ValueError, match="leave MixedPrecision's `curvature` None"):
        jaxopt2.optimizers.regularized_newton(
            precision=MixedPrecision(curvature=jaxopt2.curvature.hessian))
