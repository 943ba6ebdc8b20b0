"""Sketching operators and randomized linear algebra: unbiasedness E[SᵀS] = I of every sketch,
pytree inputs, transposes, leverage-score sampling, randomized eigh/SVD against the best
low-rank error, Hutch++ against Hutchinson, and SLQ log-determinants. Main functions run
under `jax.jit`. Fixed seeds throughout.
"""

import functools

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxopt2 import _estimators
from jaxopt2._tree import tree_dot
from jaxopt2.sketch import (
    gaussian_sketch,
    hutchpp,
    leverage_scores,
    logdet_slq,
    rademacher_sketch,
    randomized_eigh,
    randomized_svd,
    row_sampling_sketch,
    slq,
    sparse_sign_sketch,
    srht_sketch,
)

pytestmark = pytest.mark.float64  # written for float64 tolerances

N, K = 8, 4
PROBS = np.arange(1.0, N + 1)
SKETCHES = {
    "gaussian": gaussian_sketch,
    "rademacher": rademacher_sketch,
    "srht": srht_sketch,
    "sparse_sign": functools.partial(sparse_sign_sketch, nonzeros=2),
    "rows_uniform": row_sampling_sketch,
    "rows_weighted": lambda key, k, n: row_sampling_sketch(key, k, n, PROBS),
}
STRUCTURE = {"a": jax.ShapeDtypeStruct((3, 2), jnp.float64), "b": jnp.zeros(4)}


def orthogonal(n, seed):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))[0]


@pytest.mark.parametrize("name", SKETCHES)
def test_unbiased(name):
    draws = 1000
    make = SKETCHES[name]

    def gram(key):
        S = make(key, K, N).as_matrix()
        assert S.shape == (K, N) and S.dtype == jnp.float64
        return S.T @ S

    mean = jax.vmap(gram)(jax.random.split(jax.random.key(0), draws)).mean(0)
    # Per-entry variance of SᵀS is at most ~max(2, n/k, 1/(k p_min)) for these sketches; five
    # standard errors of the mean.
    variance = max(2.0, N / K, PROBS.sum() / (K * PROBS.min()))
    np.testing.assert_allclose(mean, np.eye(N), atol=5 * np.sqrt(variance / draws))


@pytest.mark.parametrize("name", SKETCHES)
def test_pytree_and_transpose(name):
    make = SKETCHES[name]
    n = 10
    key = jax.random.key(1)
    x = {"a": jnp.asarray(np.random.default_rng(0).normal(size=(3, 2))), "b": jnp.arange(4.0)}
    y = jnp.asarray(np.random.default_rng(1).normal(size=5))

    @jax.jit
    def products(key, x, y):
        if name == "rows_weighted":
            S = row_sampling_sketch(key, 5, STRUCTURE, np.arange(1.0, n + 1))
        else:
            S = make(key, 5, STRUCTURE)
        return S.mv(x), S.as_matrix(), S.transpose().mv(y), S.transpose().as_matrix()

    Sx, M, Sty, Mt = products(key, x, y)
    assert Sx.shape == (5,) and Sx.dtype == jnp.float64
    assert M.shape == (5, n)
    np.testing.assert_allclose(Sx, M @ ravel_pytree(x)[0], rtol=1e-12, atol=1e-12)
    assert jtu.tree_structure(Sty) == jtu.tree_structure(x)
    np.testing.assert_allclose(jnp.vdot(Sx, y), tree_dot(x, Sty), rtol=1e-12)
    np.testing.assert_allclose(Mt, M.T, atol=1e-14)


def test_float32_and_sparse_structure():
    S = srht_sketch(jax.random.key(0), 3, 16, dtype=jnp.float32)
    assert S.mv(jnp.ones(16, jnp.float32)).dtype == jnp.float32
    M = jax.jit(lambda key: sparse_sign_sketch(key, 6, 20, nonzeros=3).as_matrix())(
        jax.random.key(0)
    )
    # Every column has exactly `nonzeros` entries ±1/√3 in distinct rows.
    np.testing.assert_array_equal((M != 0).sum(0), 3)
    np.testing.assert_allclose(jnp.abs(M[M != 0]), 1 / np.sqrt(3))


def test_leverage_score_sampling():
    m, d = 500, 5
    A = np.random.default_rng(0).normal(size=(m, d))
    A[:3] *= 100.0  # three rows dominate: leverage ≈ 1 each.
    exact = np.sum(np.linalg.qr(A)[0] ** 2, axis=1)
    scores = jax.jit(leverage_scores)(jnp.asarray(A), jax.random.key(0))
    assert scores.shape == (m,)
    assert set(np.argsort(-np.asarray(scores))[:3]) == {0, 1, 2}
    np.testing.assert_allclose(np.sum(scores), d, rtol=0.5)
    # Within a constant factor of the truth, row by row.
    ratio = np.asarray(scores) / exact
    assert 0.2 < ratio.min() and ratio.max() < 5
    S = row_sampling_sketch(jax.random.key(1), 30, m, probabilities=scores).as_matrix()
    picked = set(np.nonzero(np.asarray(S).any(0))[0])
    assert {0, 1, 2} <= picked
    # The sketch embeds range(A): the singular values of S A Σ⁻¹-whitened stay near 1.
    U = np.linalg.qr(A)[0]
    sv = np.linalg.svd(np.asarray(S) @ U, compute_uv=False)
    assert 0.3 < sv.min() and sv.max() < 2.0


def test_randomized_eigh():
    n, rank = 100, 10
    evals = 0.6 ** np.arange(n)
    Q = orthogonal(n, 0)
    A = jnp.asarray((Q * evals) @ Q.T)
    op = lx.MatrixLinearOperator(A, lx.symmetric_tag)
    lam, V = jax.jit(lambda op, key: randomized_eigh(op, rank, key))(op, jax.random.key(0))
    assert lam.shape == (rank,) and V.shape == (rank, n)
    np.testing.assert_allclose(lam[:5], evals[:5], rtol=1e-10)
    np.testing.assert_allclose(lam, evals[:rank], rtol=1e-4)
    np.testing.assert_allclose(V @ V.T, np.eye(rank), atol=1e-10)
    error = np.linalg.norm(A - (V.T * lam) @ V, 2)
    assert error <= 1.1 * evals[rank]  # best rank-k error is λ_{k+1}


def test_randomized_eigh_pytree_indefinite():
    # A pytree operator with eigenvalues of both signs: largest |λ| first.
    evals = np.array([-5.0, 4.0, 3.0, -2.0, 1e-3, 1e-4])
    Q = orthogonal(6, 1)
    A = jnp.asarray((Q * evals) @ Q.T)
    structure = {"u": jnp.zeros(2), "v": jnp.zeros(4)}

    def mv(x):
        y = A @ ravel_pytree(x)[0]
        return {"u": y[:2], "v": y[2:]}

    op = lx.FunctionLinearOperator(mv, structure, lx.symmetric_tag)
    lam, V = randomized_eigh(op, 4, jax.random.key(0), oversampling=2)
    np.testing.assert_allclose(lam, evals[:4], rtol=1e-8)
    assert V["u"].shape == (4, 2) and V["v"].shape == (4, 4)
    v0 = ravel_pytree(jtu.tree_map(lambda v: v[0], V))[0]
    np.testing.assert_allclose(A @ v0, lam[0] * v0, atol=1e-8)


def test_randomized_svd():
    m, n, rank = 80, 50, 8
    s_true = 0.7 ** np.arange(n)
    U0 = orthogonal(m, 2)[:, :n]
    V0 = orthogonal(n, 3)
    A = jnp.asarray((U0 * s_true) @ V0.T)
    # A function operator, so the transpose comes from `jax.linear_transpose`.
    structure = jax.ShapeDtypeStruct((n,), jnp.float64)

    @jax.jit
    def svd(A, key):
        op = lx.FunctionLinearOperator(lambda x: A @ x, structure)
        return randomized_svd(op, rank, key)

    U, s, V = svd(A, jax.random.key(0))
    assert U.shape == (rank, m) and s.shape == (rank,) and V.shape == (rank, n)
    np.testing.assert_allclose(s[:4], s_true[:4], rtol=1e-9)
    np.testing.assert_allclose(s, s_true[:rank], rtol=1e-4)
    np.testing.assert_allclose(U @ U.T, np.eye(rank), atol=1e-10)
    np.testing.assert_allclose(V @ V.T, np.eye(rank), atol=1e-10)
    error = np.linalg.norm(A - (U.T * s) @ V, 2)
    assert error <= 1.1 * s_true[rank]


def test_hutchpp_beats_hutchinson():
    n, matvecs, seeds = 100, 30, 20
    rng = np.random.default_rng(0)
    Q = orthogonal(n, 4)
    evals = np.concatenate([np.full(5, 100.0), rng.uniform(0, 1, n - 5)])
    A = jnp.asarray((Q * evals) @ Q.T)
    op = lx.MatrixLinearOperator(A, lx.symmetric_tag)
    keys = jax.random.split(jax.random.key(0), seeds)
    pp = jax.jit(jax.vmap(lambda key: hutchpp(op, matvecs, key)))(keys)
    hutch = jax.jit(jax.vmap(lambda key: _estimators.trace(op, key, matvecs)))(keys)
    exact = evals.sum()
    err_pp = np.mean(np.abs(pp - exact))
    err_h = np.mean(np.abs(hutch - exact))
    assert err_pp < 0.2 * err_h
    assert err_pp < 0.02 * exact


def test_slq_logdet():
    n = 200
    rng = np.random.default_rng(0)
    evals = rng.uniform(1.0, 10.0, n)
    Q = orthogonal(n, 5)
    A = jnp.asarray((Q * evals) @ Q.T)
    op = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)
    exact = jnp.linalg.slogdet(A)[1]
    estimate = jax.jit(lambda op, key: logdet_slq(op, key, 30, 25))(op, jax.random.key(0))
    np.testing.assert_allclose(estimate, exact, rtol=0.03)
    nodes, weights = jax.jit(lambda op, key: slq(op, key, 4, 10))(op, jax.random.key(1))
    assert nodes.shape == weights.shape == (4, 10)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-10)
    assert nodes.min() >= evals.min() - 1e-8 and nodes.max() <= evals.max() + 1e-8


def test_slq_breakdown_is_exact():
    # Three distinct eigenvalues: Lanczos breaks down after 3 steps; the quadrature is exact
    # for the probe and masked steps carry no weight (no NaN).
    evals = np.repeat([1.0, 2.0, 4.0], 4)
    Q = orthogonal(12, 6)
    op = lx.MatrixLinearOperator(jnp.asarray((Q * evals) @ Q.T), lx.positive_semidefinite_tag)
    nodes, weights = slq(op, jax.random.key(0), 2, 8)
    assert np.all(np.isfinite(nodes)) and np.all(np.isfinite(weights))
    live = np.asarray(weights) > 1e-12
    np.testing.assert_allclose(np.unique(np.round(np.asarray(nodes)[live], 8)), [1, 2, 4])
    assert np.isfinite(logdet_slq(op, jax.random.key(0), 2, 8))


def test_bad_arguments():
    op = lx.MatrixLinearOperator(jnp.eye(4), lx.symmetric_tag)
    with pytest.raises(ValueError, match="rank"):
        randomized_eigh(op, 5, jax.random.key(0))
    with pytest.raises(ValueError, match="num_matvecs"):
        hutchpp(op, 2, jax.random.key(0))
    with pytest.raises(ValueError, match="k ≤ n"):
        srht_sketch(jax.random.key(0), 5, 4)
