"""`Newton(sqrt_hessian=...)` (issue 20, dense curvature at BLAS speed): with ∇²f = BᵀB + R
from the model/loss split, the Hessian is one matrix product instead of d Hessian-vector
products. The iterates must be Newton's own (the same Hessian up to rounding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2

N, D = 400, 12
_rng = np.random.default_rng(0)
X = _rng.normal(size=(N, D)) * np.linspace(0.5, 4.0, D)
Y = (_rng.uniform(size=N) < 1 / (1 + np.exp(-X @ _rng.normal(size=D) / 3))).astype(float)
LAM = 1e-2


def loss(p, data):
    X, y, lam = data
    z = X @ p["w"] + p["b"]
    return (jnp.mean(jnp.logaddexp(0.0, z) - y * z)
            + 0.5 * lam * (jnp.sum(p["w"] ** 2) + p["b"] ** 2))


def sqrt_hessian(p, data):
    """B = diag(√(σ'(z)/n)) [1 X] (columns in the flattened order of {"b", "w"}), R = λ."""
    X, _, lam = data
    s = jax.nn.sigmoid(X @ p["w"] + p["b"])
    weights = jnp.sqrt(s * (1 - s) / X.shape[0])[:, None]
    return jnp.concatenate([weights, weights * X], axis=1), lam


def _data(dtype):
    return (jnp.asarray(X, dtype), jnp.asarray(Y, dtype), jnp.asarray(LAM, dtype))


def _p0(dtype):
    return {"b": jnp.zeros((), dtype), "w": jnp.zeros(D, dtype)}


def _solve(solver, data, dtype, **kw):
    return jaxopt2.minimize(loss, _p0(dtype), data, solver=solver, throw=False, **kw)


def _flat(p):
    return np.concatenate([np.atleast_1d(np.asarray(p["b"], np.float64)),
                           np.asarray(p["w"], np.float64)])


@pytest.mark.float64
def test_same_iterates_as_newton_with_jax_hessian():
    ref = _solve(jaxopt2.Newton(rtol=1e-12), _data(jnp.float64), jnp.float64)
    sol = _solve(jaxopt2.Newton(rtol=1e-12, sqrt_hessian=sqrt_hessian), _data(jnp.float64),
                 jnp.float64)
    assert jaxopt2.status_name(sol.status) == "successful"
    np.testing.assert_allclose(_flat(sol.params), _flat(ref.params), rtol=1e-11, atol=1e-12)
    assert int(sol.stats["num_steps"]) == int(ref.stats["num_steps"])
    assert int(sol.stats["num_jac"]) == int(sol.stats["num_steps"])
    # one step from the same point: the same direction as the dense Hessian's
    one = lambda s: _solve(s, _data(jnp.float64), jnp.float64, max_steps=1)  # noqa: E731
    np.testing.assert_allclose(_flat(one(jaxopt2.Newton(sqrt_hessian=sqrt_hessian)).params),
                               _flat(one(jaxopt2.Newton()).params), rtol=1e-12, atol=1e-14)


def test_float32_jit_and_the_float64_answer():
    sol = jax.jit(lambda d: _solve(jaxopt2.Newton(sqrt_hessian=sqrt_hessian), d,
                                   jnp.float32))(_data(jnp.float32))
    assert jaxopt2.status_name(sol.status) == "successful"
    assert sol.params["w"].dtype == jnp.float32
    g = jax.grad(loss)(sol.params, _data(jnp.float32))
    g0 = jax.grad(loss)(_p0(jnp.float32), _data(jnp.float32))
    assert float(jnp.max(jnp.abs(g["w"]))) <= 1e-3 * float(jnp.max(jnp.abs(g0["w"])))


def test_vmap_one_bad_problem_and_implicit_gradient():
    solver = jaxopt2.Newton(sqrt_hessian=sqrt_hessian)
    good = _data(jnp.float32)
    bad = (good[0].at[0, 0].set(jnp.nan), good[1], good[2])
    batch = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), good, bad)
    sols = jax.vmap(lambda d: _solve(solver, d, jnp.float32))(batch)
    single = _solve(solver, good, jnp.float32)
    names = list(jaxopt2.status_name(sols.status))
    assert names[0] == "successful" and names[1] != "successful", names
    np.testing.assert_allclose(sols.params["w"][0], single.params["w"], rtol=1e-6, atol=1e-6)

    # d w*/d λ by the implicit function theorem, against plain Newton's (the same solution)
    def w_sum(lam, s):
        return jnp.sum(_solve(s, (good[0], good[1], lam), jnp.float32).params["w"])
    got = jax.grad(w_sum)(jnp.float32(LAM), solver)
    want = jax.grad(w_sum)(jnp.float32(LAM), jaxopt2.Newton())
    np.testing.assert_allclose(got, want, rtol=1e-3)


def test_bad_sqrt_hessian_is_refused():
    data = _data(jnp.float32)
    with pytest.raises(TypeError, match="sqrt_hessian"):
        jaxopt2.Newton(sqrt_hessian="BtB")
    with pytest.raises(ValueError, match=r"B of shape \(n, 13\)"):
        _solve(jaxopt2.Newton(sqrt_hessian=lambda p, a: (a[0], None)), data, jnp.float32)
    with pytest.raises(ValueError, match=r"R must be None, a scalar or a \(13, 13\)"):
        _solve(jaxopt2.Newton(sqrt_hessian=lambda p, a: (sqrt_hessian(p, a)[0], jnp.ones(13))),
               data, jnp.float32)
