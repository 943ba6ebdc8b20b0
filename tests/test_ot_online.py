"""`jaxopt2.ot.sinkhorn_points`: blockwise Sinkhorn on point clouds, against the dense
`sinkhorn` on the same problem (cost matrix built densely), finite differences, and the
compiled program's memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt2 import RESULTS, ot

pytestmark = pytest.mark.float64

# jitted once per static configuration: a third of the eager calls' compile time
_points = jax.jit(ot.sinkhorn_points, static_argnames=(
    "cost", "block_size", "rtol", "atol", "max_steps", "relaxation", "throw"))
_sinkhorn = jax.jit(ot.sinkhorn, static_argnames=("rtol", "atol", "max_steps", "throw"))


def _clouds(n=23, m=17, d=2, seed=0, dtype=jnp.float64):
    kx, ky, ka, kb = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.uniform(kx, (n, d), dtype)
    y = 0.5 * jax.random.normal(ky, (m, d), dtype)
    a = jax.random.uniform(ka, (n,), dtype, 0.5, 1.5)
    b = jax.random.uniform(kb, (m,), dtype, 0.5, 1.5)
    return x, y, a / a.sum(), b / b.sum()


def _dense(x, y):
    return jnp.sum((x[:, None] - y[None]) ** 2, -1)


def _smooth_cost(xi, yj):
    return jnp.log1p(jnp.sum((xi - yj) ** 2)) + 0.1 * jnp.sum(xi * yj)


def test_matches_dense_sinkhorn_f64():
    x, y, a, b = _clouds()
    eps = 0.05
    # a block size that divides neither n nor m (padded last blocks)
    out = _points(x, y, a, b, eps, block_size=5, rtol=1e-11)
    ref = _sinkhorn(_dense(x, y), a, b, eps, rtol=1e-11)
    assert out.status == RESULTS.successful
    assert np.all(np.asarray(out.marginal_errors) <= 1e-11)
    np.testing.assert_allclose(out.f, ref.f, atol=1e-8)
    np.testing.assert_allclose(out.g, ref.g, atol=1e-8)
    np.testing.assert_allclose(out.regularized_cost, ref.regularized_cost, rtol=1e-10)
    np.testing.assert_allclose(out.transport_cost, ref.transport_cost, rtol=1e-8)


def test_overrelaxation_same_solution_fewer_steps():
    x, y, a, b = _clouds(seed=7)
    plain = _points(x, y, a, b, 0.01, block_size=8, rtol=1e-9)
    fast = _points(x, y, a, b, 0.01, block_size=8, rtol=1e-9, relaxation=1.8)
    assert plain.status == RESULTS.successful and fast.status == RESULTS.successful
    assert int(fast.stats["num_steps"]) < int(plain.stats["num_steps"]) / 2
    np.testing.assert_allclose(fast.f, plain.f, atol=1e-6)
    np.testing.assert_allclose(fast.regularized_cost, plain.regularized_cost, rtol=1e-8)


def test_callable_cost_matches_dense():
    x, y, a, b = _clouds(n=11, m=14, d=3, seed=1)
    C = jax.vmap(jax.vmap(_smooth_cost, (None, 0)), (0, None))(x, y)
    out = _points(x, y, a, b, 0.1, cost=_smooth_cost, block_size=4, rtol=1e-11)
    ref = _sinkhorn(C, a, b, 0.1, rtol=1e-11)
    np.testing.assert_allclose(out.f, ref.f, atol=1e-8)
    np.testing.assert_allclose(out.regularized_cost, ref.regularized_cost, rtol=1e-10)


def test_gradients_match_dense_implicit():
    x, y, a, b = _clouds(seed=2)

    def points(x, y, a, b, eps):
        return _points(x, y, a, b, eps, block_size=6, rtol=1e-12).regularized_cost

    def dense(x, y, a, b, eps):
        return _sinkhorn(_dense(x, y), a, b, eps, rtol=1e-12).regularized_cost

    args = (x, y, a, b, jnp.asarray(0.07))
    got = jax.grad(points, argnums=(0, 1, 2, 3, 4))(*args)
    want = jax.grad(dense, argnums=(0, 1, 2, 3, 4))(*args)
    for gg, ww in zip(got, want, strict=True):
        np.testing.assert_allclose(gg, ww, rtol=1e-6, atol=1e-9)


def test_gradient_finite_differences_callable_cost():
    x, y, a, b = _clouds(n=9, m=12, d=2, seed=3)

    def value(x, y, eps):
        return _points(x, y, a, b, eps, cost=_smooth_cost, block_size=4,
                                  rtol=1e-13).regularized_cost

    kx, ky, ke = jax.random.split(jax.random.key(4), 3)
    dx = jax.random.normal(kx, x.shape, jnp.float64)
    dy = jax.random.normal(ky, y.shape, jnp.float64)
    de = jax.random.normal(ke, (), jnp.float64)
    gx, gy, ge = jax.grad(value, argnums=(0, 1, 2))(x, y, jnp.asarray(0.2))
    h = 1e-5
    fd = (value(x + h * dx, y + h * dy, 0.2 + h * de)
          - value(x - h * dx, y - h * dy, 0.2 - h * de)) / (2 * h)
    lin = jnp.vdot(gx, dx) + jnp.vdot(gy, dy) + ge * de
    np.testing.assert_allclose(lin, fd, rtol=1e-6)


def test_vmap_batch_and_bad_problem():
    clouds = [_clouds(n=10, m=8, seed=s) for s in range(3)]
    xs, ys = jnp.stack([c[0] for c in clouds]), jnp.stack([c[1] for c in clouds])
    xs = xs.at[1, 0, 0].set(jnp.nan)   # one invalid problem in the batch

    def solve(x, y):
        return _points(x, y, epsilon=0.1, block_size=3, rtol=1e-10, throw=False)

    out = jax.jit(jax.vmap(solve))(xs, ys)
    assert list(out.status.name) == ["successful", "nonfinite", "successful"]
    assert not np.any(np.isfinite(np.asarray(out.f[1])))
    for i in (0, 2):
        single = solve(xs[i], ys[i])
        np.testing.assert_allclose(out.f[i], single.f, atol=1e-10)
        np.testing.assert_allclose(out.regularized_cost[i], single.regularized_cost, rtol=1e-12)
    # gradients under vmap: the good problems' agree with one-at-a-time, the bad one is NaN
    grads = jax.vmap(jax.grad(lambda x, y: solve(x, y).regularized_cost))(xs, ys)
    assert np.all(np.isnan(np.asarray(grads[1])))
    np.testing.assert_allclose(grads[0], jax.grad(lambda x: solve(x, ys[0]).regularized_cost)(
        xs[0]), rtol=1e-10)


def test_float32():
    x, y, a, b = _clouds(n=30, m=20, seed=5, dtype=jnp.float32)
    out = _points(x, y, a, b, jnp.float32(0.05), block_size=8)
    assert out.f.dtype == jnp.float32 and out.regularized_cost.dtype == jnp.float32
    assert out.status == RESULTS.successful
    # the float64 reference, on the same (float32-rounded) data renormalised in float64
    x64, y64, a64, b64 = (z.astype(jnp.float64) for z in (x, y, a, b))
    a64, b64 = a64 / a64.sum(), b64 / b64.sum()
    ref = _sinkhorn(_dense(x64, y64), a64, b64, 0.05, rtol=1e-10)
    np.testing.assert_allclose(out.regularized_cost, ref.regularized_cost, rtol=1e-4)
    g = jax.grad(lambda x: _points(x, y, a, b, 0.05, block_size=8).regularized_cost)(x)
    assert g.dtype == jnp.float32
    gref = jax.grad(lambda x: _sinkhorn(_dense(x, y64), a64, b64, 0.05,
                                          rtol=1e-10).regularized_cost)(x64)
    # the default float32 tolerance (L1 marginal error 1e-4) moves each row's mass, hence its
    # gradient, by up to ~1e-4 relative to the whole: allow 1e-3 of the largest entry
    np.testing.assert_allclose(g, gref, atol=1e-3 * float(jnp.abs(gref).max()))


def test_no_dense_temporary_in_compiled_program():
    n = m = 4096
    x = jax.ShapeDtypeStruct((n, 2), jnp.float32)
    y = jax.ShapeDtypeStruct((m, 2), jnp.float32)

    def value(x, y):
        return _points(x, y, epsilon=0.1, block_size=128, throw=False,
                                  max_steps=100).regularized_cost

    dense_bytes = n * m * 4
    for fn in (value, jax.grad(value)):
        mem = jax.jit(fn).lower(x, y).compile().memory_analysis()
        if mem is None:
            pytest.skip("this backend reports no memory analysis")
        assert mem.temp_size_in_bytes < dense_bytes / 8, (mem.temp_size_in_bytes, dense_bytes)


def test_failures_and_bad_input():
    x, y, a, b = _clouds(n=8, m=6, seed=6)
    with pytest.raises(RuntimeError, match="max_steps"):
        ot.sinkhorn_points(x, y, a, b, 0.01, max_steps=2, rtol=1e-12)
    out = ot.sinkhorn_points(x, y, a, b, 0.01, max_steps=2, rtol=1e-12, throw=False)
    assert out.status == RESULTS.max_steps_reached and int(out.stats["num_steps"]) == 2
    g = jax.grad(lambda x: ot.sinkhorn_points(x, y, a, b, 0.01, max_steps=2, rtol=1e-12,
                                              throw=False).regularized_cost)(x)
    assert np.all(np.isnan(np.asarray(g)))
    for kwargs, match in [(dict(x=x[0]), "point clouds"), (dict(a=a[:-1]), "shapes"),
                          (dict(a=2 * a), "same total mass"), (dict(epsilon=-1.0), "epsilon"),
                          (dict(cost="cosine"), "sqeuclidean"), (dict(block_size=0), "block"),
                          (dict(relaxation=2.0), "relaxation"),
                          (dict(x=x.at[0, 0].set(jnp.inf)), "finite")]:
        args = dict(x=x, y=y, a=a, b=b, epsilon=0.1) | kwargs
        with pytest.raises(ValueError, match=match):
            ot.sinkhorn_points(**args)
