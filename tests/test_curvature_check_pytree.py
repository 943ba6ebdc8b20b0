"""The final curvature check (`_stopping.curvature_check`) on parameter pytrees (issue 20): on one
device it ravels the parameters into one vector (the smaller program); under a mesh it works
leaf by leaf, with no ravel (each leaf keeps its own sharding). Both paths must reach the same
verdict, curvature and direction, and the leaf-by-leaf Lanczos basis must be orthonormal.
(The multi-device run, Explicit mesh axes included, is in tests/test_distributed_params.py.)"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt2 import _stopping
from jaxopt2._base import Iterate
from jaxopt2._linalg.lanczos import basis_combine, basis_dot, lanczos
from jaxopt2._results import RESULTS

pytestmark = pytest.mark.float64


def _split(x):
    return {"a": x[:3].reshape(3, 1), "b": x[3:]}


def _check(f, x, pytree_path: bool):
    """curvature_check of f at x, with params as the pytree `_split(x)`; `pytree_path` runs
    the leaf-by-leaf code (what a mesh gets) instead of the raveled one."""
    p = _split(x)
    fun = lambda q: f(jax.flatten_util.ravel_pytree(q)[0])  # noqa: E731
    g = jax.grad(fun)(p)
    hvp = lambda v: jax.jvp(jax.grad(fun), (p,), (v,))[1]  # noqa: E731
    c = _stopping.curvature_check(fun, hvp, Iterate(p, fun(p), g, None), RESULTS.successful,
                                  _raveled=pytree_path)
    return c.result._value, c.curvature, jax.flatten_util.ravel_pytree(c.direction)[0]


def _indefinite(x):
    # a saddle at 0: curvatures 2, 1, 0.5, 4, −3 (and a cubic term, so H varies)
    d = jnp.array([2.0, 1.0, 0.5, 4.0, -3.0])
    return 0.5 * jnp.sum(d * x**2) + 0.1 * jnp.sum(x**3)


def _ill(x):
    # curvatures 1 … 1e−10: at x = 0 the gradient is tiny, the Newton step is not
    d = jnp.logspace(0, -10, 5)
    return 0.5 * jnp.sum(d * (x - 1.0) ** 2)


@pytest.mark.parametrize("f, x, want", [
    (_indefinite, jnp.zeros(5), RESULTS.saddle_point),
    (_ill, 1.0 - 1e-9 / jnp.logspace(0, -10, 5), RESULTS.ill_conditioned),
    (lambda x: jnp.sum((x - 1.0) ** 2), jnp.ones(5), RESULTS.successful),
])
def test_pytree_and_raveled_paths_agree(f, x, want):
    raveled = jax.jit(lambda x: _check(f, x, False))(x)
    leafwise = jax.jit(lambda x: _check(f, x, True))(x)
    assert int(raveled[0]) == int(leafwise[0]) == int(want._value)
    np.testing.assert_allclose(leafwise[1], raveled[1], rtol=1e-10, atol=1e-12)
    if want == RESULTS.saddle_point:  # the direction matters only there (`escape`)
        np.testing.assert_allclose(raveled[1], -3.0, rtol=1e-8)  # the exact negative curvature
        np.testing.assert_allclose(leafwise[2], raveled[2], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(np.abs(raveled[2]), [0, 0, 0, 0, 1], atol=1e-8)


def test_pytree_lanczos_matches_dense():
    """Lanczos on a pytree {a: 3 × 1, b: 3}: the same α, β as on the flat vector, and its basis
    (stacked per leaf) orthonormal, with `basis_dot`/`basis_combine` as Q w and Qᵀc."""
    rng = np.random.default_rng(0)
    m = rng.standard_normal((6, 6))
    h = jnp.asarray(m + m.T)
    q = jnp.cos(1.0 + 2.4 * jnp.arange(6.0))
    q = q / jnp.linalg.norm(q)
    flat = lanczos(lambda v: h @ v, q, 5, return_basis=True)

    def matvec(t):
        return _split(h @ jax.flatten_util.ravel_pytree(t)[0])

    tree = lanczos(matvec, _split(q), 5, return_basis=True)
    for a, b in zip(flat[:3], tree[:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    basis = tree[3]
    dense = jnp.concatenate([basis["a"].reshape(5, 3), basis["b"]], axis=1)
    np.testing.assert_allclose(dense @ dense.T, np.eye(5), atol=1e-12)
    w = _split(jnp.arange(6.0))
    np.testing.assert_allclose(basis_dot(basis, w), dense @ jnp.arange(6.0), rtol=1e-12)
    c = jnp.arange(5.0)
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(basis_combine(basis, c))[0],
                               dense.T @ c, rtol=1e-12, atol=1e-12)
