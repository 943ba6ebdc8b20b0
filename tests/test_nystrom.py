"""Randomized Nyström approximation and Nyström-preconditioned CG (jaxopt2._nystrom)."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jaxopt2
from jaxopt2._linalg import truncated_cg
from jaxopt2.sketch import (
    NystromApproximation,
    NystromPreconditioner,
    nystrom,
    nystrom_preconditioner,
)

pytestmark = pytest.mark.float64  # written for float64 tolerances


def _psd(n=200, decay="poly", seed=0, dtype=jnp.float64):
    """Q diag(λ) Qᵀ with a random orthogonal Q and a known decaying spectrum."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    k = np.arange(1, n + 1)
    lam = 1.0 / k**2 if decay == "poly" else np.exp(-k / 10.0)
    return jnp.asarray((q * lam) @ q.T, dtype), lam


def _dense(approx: NystromApproximation):
    return (approx.U * approx.eigenvalues) @ approx.U.T


@pytest.mark.parametrize("decay", ["poly", "exp"])
def test_nuclear_error_within_tropp_bound(decay):
    # Tropp et al. (2017), Thm. 4.1: with r = k + p, E‖A − Â‖_* ≤ (1 + k/(p−1)) ‖A − [A]_k‖_*.
    a, lam = _psd(decay=decay)
    k, p = 10, 10
    best_tail = lam[k:].sum()  # ‖A − [A]_k‖_* (eigenvalues sorted descending)
    bound = (1 + k / (p - 1)) * best_tail
    errors = []
    for seed in range(4):
        approx = nystrom(lx.MatrixLinearOperator(a), k + p, jax.random.key(seed))
        # Â ⪯ A, so A − Â is PSD and its nuclear norm is its trace
        err = a - _dense(approx)
        errors.append(float(jnp.sum(jnp.abs(jnp.linalg.eigvalsh(err)))))
        assert float(jnp.min(jnp.linalg.eigvalsh(err))) > -1e-10
        assert np.all(np.diff(np.asarray(approx.eigenvalues)) <= 1e-14)
    # the bound is on the mean; each draw gets a margin of 2
    assert np.mean(errors) <= bound
    assert max(errors) <= 2 * bound
    # a rank-(k + p) approximation cannot beat the best rank-(k + p) error (Eckart–Young)
    assert min(errors) >= lam[k + p:].sum() * (1 - 1e-8)


def test_mv_matches_dense_and_works_on_pytrees():
    a, _ = _psd(n=60, decay="exp")
    approx = nystrom(lx.MatrixLinearOperator(a), 15, jax.random.key(1))
    v = jax.random.normal(jax.random.key(2), (60,), a.dtype)
    ref = approx.U @ (approx.eigenvalues * (approx.U.T @ v))
    np.testing.assert_allclose(approx.mv(v), ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(approx.as_lineax().mv(v), ref, rtol=1e-12, atol=1e-14)
    assert lx.is_symmetric(approx.as_lineax()) and lx.is_positive_semidefinite(
        approx.as_lineax())

    # the same operator on a dict of arrays: params {"w": (10, 5), "b": (10,)}
    def unflat(x):
        return {"b": x[:10], "w": x[10:].reshape(10, 5)}

    def flat(t):
        return jnp.concatenate([t["b"], t["w"].ravel()])

    structure = jax.eval_shape(lambda: unflat(jnp.zeros(60, a.dtype)))
    tree_op = lx.FunctionLinearOperator(lambda t: unflat(a @ flat(t)), structure)
    tree_approx = nystrom(tree_op, 15, jax.random.key(1))
    out = tree_approx.mv(unflat(v))
    assert jax.tree.structure(out) == jax.tree.structure(structure)
    assert out["w"].shape == (10, 5)
    # ravel_pytree orders dict keys as flat() does, so the same Ω gives the same Â
    np.testing.assert_allclose(flat(out), ref, rtol=1e-10, atol=1e-12)
    sol = tree_approx.solve(unflat(v), 0.1)
    np.testing.assert_allclose(flat(sol), approx.solve(v, 0.1), rtol=1e-10)


@pytest.mark.parametrize("mu", [1e-3, 1.0])
def test_solve_matches_dense(mu):
    a, _ = _psd(n=80)
    approx = nystrom(lx.MatrixLinearOperator(a), 12, jax.random.key(3))
    v = jax.random.normal(jax.random.key(4), (80,), a.dtype)
    ref = jnp.linalg.solve(_dense(approx) + mu * jnp.eye(80), v)
    np.testing.assert_allclose(approx.solve(v, mu), ref, rtol=1e-9, atol=1e-12)


def _ridge(d=300, n=1000, mu=1e-6):
    """XᵀX/n + μI with column scales j⁻²: eigenvalues from ~1 down to ~μ, condition ~1e6."""
    rng = np.random.default_rng(0)
    scales = np.arange(1, d + 1, dtype=float) ** -2.0
    x = jnp.asarray(rng.standard_normal((n, d)) * scales)
    b = jnp.asarray(rng.standard_normal(d))
    gram = lx.FunctionLinearOperator(lambda v: x.T @ (x @ v) / n,
                                     jax.ShapeDtypeStruct((d,), x.dtype))
    return x, b, gram, mu


def test_nystrom_pcg_beats_cg_on_ridge():
    x, b, gram, mu = _ridge()
    d = b.shape[0]
    a = x.T @ x / x.shape[0] + mu * jnp.eye(d)
    cond = float(jnp.linalg.cond(a))
    assert cond > 1e5
    ref = jnp.linalg.solve(a, b)

    def matvec(v):
        return gram.mv(v) + mu * v

    @jax.jit
    def run(b):
        plain = truncated_cg(matvec, b, rtol=1e-10, max_iters=3000)
        precond = nystrom_preconditioner(gram, 80, jax.random.key(0), mu)
        pcg = truncated_cg(matvec, b, rtol=1e-10, max_iters=3000, precond=precond)
        return plain, pcg

    plain, pcg = run(b)
    print(f"cond={cond:.2e} plain CG: {int(plain.num_iters)} iters, "
          f"Nyström PCG: {int(pcg.num_iters)} iters")
    assert bool(plain.converged) and bool(pcg.converged)
    assert 5 * int(pcg.num_iters) <= int(plain.num_iters)
    rel = lambda y: float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))  # noqa: E731
    assert rel(pcg.x) < 1e-6
    assert rel(plain.x) < 1e-4 or rel(pcg.x) <= rel(plain.x)


def test_float32_and_jit():
    x, b, gram, mu = _ridge(d=100, n=400, mu=1e-3)
    x32, b32 = x.astype(jnp.float32), b.astype(jnp.float32)
    gram32 = lx.FunctionLinearOperator(lambda v: x32.T @ (x32 @ v) / x32.shape[0],
                                       jax.ShapeDtypeStruct((100,), jnp.float32))

    @jax.jit
    def run(b):
        approx = nystrom(gram32, 40, jax.random.key(0))
        precond = nystrom_preconditioner(gram32, 40, jax.random.key(0), mu)
        cg = truncated_cg(lambda v: gram32.mv(v) + mu * v, b, rtol=1e-5, max_iters=500,
                          precond=precond)
        return approx, cg

    approx, cg = run(b32)
    assert approx.U.dtype == jnp.float32 and cg.x.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(approx.eigenvalues)))
    ref = jnp.linalg.solve(x.T @ x / x.shape[0] + mu * jnp.eye(100), b)
    assert float(jnp.linalg.norm(cg.x - ref) / jnp.linalg.norm(ref)) < 1e-3
    # the top eigenvalues are captured to float32 accuracy
    top = jnp.linalg.eigvalsh(x.T @ x / x.shape[0])[::-1][:5]
    np.testing.assert_allclose(approx.eigenvalues[:5], top, rtol=1e-3)


def _logistic():
    rng = np.random.default_rng(0)
    n, d = 500, 60
    scales = np.logspace(0, -2.5, d)  # ill-conditioned features
    x = rng.standard_normal((n, d)) * scales
    w_true = rng.standard_normal(d) / scales
    y = (x @ w_true + 0.5 * rng.standard_normal(n) > 0).astype(float)
    data = (jnp.asarray(x), jnp.asarray(y))

    def loss(w, data):
        x, y = data
        z = x @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 1e-5 * jnp.sum(w**2)

    return loss, jnp.zeros(d), data


def test_newton_cg_with_nystrom_preconditioner():
    loss, w0, data = _logistic()

    @jax.jit
    def run(data):
        plain = jaxopt2.minimize(loss, w0, data, max_steps=100, solver=jaxopt2.NewtonCG(
            rtol=1e-8, preconditioner=None))
        pre = jaxopt2.minimize(loss, w0, data, max_steps=100, solver=jaxopt2.NewtonCG(
            rtol=1e-8, preconditioner=NystromPreconditioner(rank=30)))
        return plain, pre

    plain, pre = run(data)
    print(f"NewtonCG num_hvp: plain {int(plain.stats['num_hvp'])}, "
          f"Nyström {int(pre.stats['num_hvp'])}; steps {int(plain.stats['num_steps'])} vs "
          f"{int(pre.stats['num_steps'])}")
    # the 30 sketch products of each step's build are counted too
    assert int(pre.stats["num_hvp"]) >= 30 * int(pre.stats["num_steps"])
    assert int(pre.stats["num_hvp"]) < int(plain.stats["num_hvp"])
    np.testing.assert_allclose(pre.params, plain.params, rtol=1e-5, atol=1e-5 * float(
        jnp.max(jnp.abs(plain.params))))


def test_indefinite_operator_falls_back_to_identity():
    # an indefinite "Hessian": the Cholesky factor of ΩᵀAΩ breaks, and the preconditioner must
    # then be the identity (plain CG), never NaN
    a = jnp.diag(jnp.linspace(-1.0, 1.0, 20))
    precond = nystrom_preconditioner(lx.MatrixLinearOperator(a), 10, jax.random.key(0))
    v = jnp.arange(20.0)
    out = precond(v)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out, v)
    # `nystrom` itself refuses such an operator instead of returning NaN
    with pytest.raises(ValueError, match="positive semi-definite"):
        nystrom(lx.MatrixLinearOperator(a), 10, jax.random.key(0))


def test_rank_validation():
    with pytest.raises(ValueError):
        NystromPreconditioner(rank=0)
    with pytest.raises(ValueError):
        nystrom(lx.MatrixLinearOperator(jnp.eye(3)), 4, jax.random.key(0))


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
def test_preconditioner_key_vmapped_streams_and_validation():
    """The key is an array field: preconditioners built inside `jax.vmap` from split keys
    draw different sketches, equal keys equal ones, and `key=jax.random.key(s)` is `seed=s`."""
    A, _ = _psd(n=30, dtype=jnp.float32)
    op = lx.MatrixLinearOperator(A, (lx.symmetric_tag, lx.positive_semidefinite_tag))
    r = jnp.linspace(-1.0, 1.0, 30, dtype=jnp.float32)

    def apply(key=None, seed=0):
        return NystromPreconditioner(rank=3, key=key, seed=seed)(None, None, None, op)(r)

    keys = jax.random.split(jax.random.key(0), 3)
    many = np.asarray(jax.jit(jax.vmap(apply))(keys))
    for i in range(3):
        for j in range(i):
            assert np.max(np.abs(many[i] - many[j])) > 1e-3 * np.max(np.abs(many))
    same = np.asarray(jax.vmap(apply)(jnp.stack([keys[0]] * 3)))
    np.testing.assert_allclose(same, np.broadcast_to(many[0], same.shape), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(apply(key=jax.random.key(2)), apply(seed=2), rtol=1e-6)
    np.testing.assert_allclose(apply(key=jax.random.PRNGKey(2)), apply(seed=2), rtol=1e-6)
    for bad in (2, jnp.ones(2, jnp.float32)):
        with pytest.raises(TypeError, match="PRNG key"):
            NystromPreconditioner(rank=3, key=bad)
    with pytest.raises(TypeError, match="batch of keys"):
        NystromPreconditioner(rank=3, key=keys)(None, None, None, op)
