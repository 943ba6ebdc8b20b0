"""Curvature products on data sharded over devices along the example axis.

The check runs in its own process: the number of host devices is fixed when JAX starts, and
the rest of the suite must keep seeing one device.
"""

import textwrap

import pytest

from .multidevice import run_on_devices

pytestmark = pytest.mark.float64  # written for float64 tolerances

SCRIPT = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxopt2 import curvature

    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    n, d, lam = 64, 5, 1e-2
    X = rng.normal(size=(n, d))
    y = (rng.random(n) < 0.5).astype(np.float64)
    params = {"w": jnp.asarray(rng.normal(size=d)), "b": jnp.asarray(0.3)}
    v = {"w": jnp.asarray(rng.normal(size=d)), "b": jnp.asarray(-1.2)}

    def logits(p, a):
        return a[0] @ p["w"] + p["b"]

    def loss(z, a):
        return jnp.mean(jax.nn.softplus(z) - a[1] * z)

    def objective(p, a):
        return loss(logits(p, a), a) + 0.5 * lam * p["w"] @ p["w"]

    @jax.jit
    def products(p, a, v):
        H = curvature.hessian(objective, p, a)
        G = curvature.gauss_newton(logits, loss, p, a)
        return H.mv(v), G.mv(v)

    mesh = Mesh(np.array(jax.devices()), ("data",))
    X_sharded = jax.device_put(X, NamedSharding(mesh, P("data", None)))
    y_sharded = jax.device_put(y, NamedSharding(mesh, P("data")))
    for a in (X_sharded, y_sharded):
        assert len(a.sharding.device_set) == 2, a.sharding
        assert {s.data.shape[0] for s in a.addressable_shards} == {n // 2}

    one = jax.devices()[0]
    sharded = products(params, (X_sharded, y_sharded), v)
    single = products(params, (jax.device_put(X, one), jax.device_put(y, one)), v)

    # The closed form: with s = σ(z), both are Aᵀ diag(s(1-s)) A / n on A = [1, X], plus
    # λ on w for the Hessian.
    s = 1 / (1 + np.exp(-(X @ np.asarray(params["w"]) + float(params["b"]))))
    Dv = s * (1 - s) * (float(v["b"]) + X @ np.asarray(v["w"])) / n
    ggn = {"b": Dv.sum(), "w": X.T @ Dv}
    hess = {"b": ggn["b"], "w": ggn["w"] + lam * np.asarray(v["w"])}
    for got, want in [(sharded[0], hess), (sharded[1], ggn), (single[0], hess), (single[1], ggn)]:
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-14)
    for a, b in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(single)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    # The products reduce over examples (all-reduce of parameter-sized vectors); the data is
    # never gathered onto one device.
    hlo = products.lower(params, (X_sharded, y_sharded), v).compile().as_text()
    assert "all-reduce" in hlo and "all-gather" not in hlo
    print("SHARDING OK")
    """
)


def test_curvature_products_on_sharded_data():
    run_on_devices(SCRIPT, (), "SHARDING OK", devices=2, x64=True)
