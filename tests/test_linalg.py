"""Direct tests of `jaxopt2._linalg`, each method against a dense reference (jnp.linalg.solve,
lstsq, eigh), in float32 and float64, under jit and vmap, with the special exits (negative
curvature, trust-region boundary, budget exhausted, zero right-hand side, breakdowns)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt2 import _linalg as L

pytestmark = pytest.mark.float64  # written for float64 tolerances


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    if request.param == "float64" and not jax.config.jax_enable_x64:
        pytest.skip("float64 needs jax_enable_x64")
    return jnp.dtype(request.param)


def tol(dtype):
    return 2e-4 if dtype == jnp.float32 else 1e-10


def spd(key, n, dtype, cond=10.0):
    q, _ = jnp.linalg.qr(jax.random.normal(key, (n, n), jnp.float64 if
                                           jax.config.jax_enable_x64 else jnp.float32))
    eig = jnp.linspace(1.0, cond, n)
    return ((q * eig) @ q.T).astype(dtype)


def rel_err(x, ref):
    return float(jnp.linalg.norm(x - ref) / jnp.linalg.norm(ref))


# --------------------------------------------------------------------------- truncated CG


def test_cg_solves_spd_under_jit_and_vmap(dtype):
    n, batch = 8, 3
    keys = jax.random.split(jax.random.key(0), batch)
    a = jnp.stack([spd(k, n, dtype) for k in keys])
    b = jax.random.normal(jax.random.key(1), (batch, n), dtype)

    def solve(a, b):
        res = L.truncated_cg(lambda v: a @ v, b, rtol=1e-12 if dtype == jnp.float64 else 1e-6,
                             max_iters=4 * n)
        return res.x, res.converged, res.negative_curvature, res.num_iters

    x, conv, neg, k = jax.jit(jax.vmap(solve))(a, b)
    ref = jnp.linalg.solve(a, b[..., None])[..., 0]
    assert x.dtype == dtype
    assert rel_err(x, ref) < 10 * tol(dtype)
    assert bool(jnp.all(conv)) and not bool(jnp.any(neg))
    assert bool(jnp.all((k >= 1) & (k <= 4 * n)))


def test_cg_pytree_and_preconditioner(dtype):
    n = 6
    a = spd(jax.random.key(2), 2 * n, dtype, cond=1e3)
    b = jax.random.normal(jax.random.key(3), (2 * n,), dtype)
    split = lambda v: {"u": v[:n], "w": v[n:]}  # noqa: E731
    join = lambda t: jnp.concatenate([t["u"], t["w"]])  # noqa: E731
    jacobi = 1.0 / jnp.diag(a)
    res = L.truncated_cg(lambda t: split(a @ join(t)), split(b),
                         rtol=1e-12 if dtype == jnp.float64 else 1e-6, max_iters=100,
                         precond=lambda t: split(jacobi * join(t)))
    assert bool(res.converged)
    assert rel_err(join(res.x), jnp.linalg.solve(a, b)) < 1e3 * tol(dtype)


def test_cg_negative_curvature_at_first_step_returns_rhs(dtype):
    a = jnp.diag(jnp.array([-1.0, 2.0, 3.0], dtype))
    b = jnp.array([1.0, 0.0, 0.0], dtype)  # bᵀAb < 0 at once
    res = jax.jit(lambda b: L.truncated_cg(lambda v: a @ v, b, rtol=1e-6, max_iters=10))(b)
    assert bool(res.negative_curvature) and not bool(res.converged)
    np.testing.assert_allclose(res.x, b)
    assert int(res.num_iters) == 1


def test_cg_negative_curvature_later_keeps_last_descent_iterate(dtype):
    a = jnp.diag(jnp.array([4.0, -1.0], dtype))
    b = jnp.array([1.0, 1.0], dtype)  # bᵀAb = 3 > 0, then the direction turns negative
    res = L.truncated_cg(lambda v: a @ v, b, rtol=1e-8, max_iters=10)
    assert bool(res.negative_curvature)
    # the iterate after one step: x = (bᵀb / bᵀAb) b, a descent direction for ½xᵀAx − bᵀx
    np.testing.assert_allclose(res.x, (2.0 / 3.0) * b, rtol=tol(dtype))
    assert float(jnp.dot(b, res.x)) > 0


def test_cg_trust_region_boundary(dtype):
    a = spd(jax.random.key(4), 5, dtype)
    b = 10.0 * jax.random.normal(jax.random.key(5), (5,), dtype)
    full = jnp.linalg.solve(a, b)
    radius = 0.3 * float(jnp.linalg.norm(full))
    res = L.truncated_cg(lambda v: a @ v, b, rtol=1e-10, max_iters=20, radius=radius)
    assert bool(res.hit_boundary) and not bool(res.converged)
    np.testing.assert_allclose(jnp.linalg.norm(res.x), radius, rtol=10 * tol(dtype))
    # indefinite: negative curvature goes to the boundary too
    res = L.truncated_cg(lambda v: -a @ v, b, rtol=1e-10, max_iters=20, radius=radius)
    assert bool(res.negative_curvature) and bool(res.hit_boundary)
    np.testing.assert_allclose(jnp.linalg.norm(res.x), radius, rtol=10 * tol(dtype))


def test_cg_budget_exhausted_and_zero_rhs(dtype):
    a = spd(jax.random.key(6), 10, dtype, cond=100.0)
    b = jax.random.normal(jax.random.key(7), (10,), dtype)
    res = L.truncated_cg(lambda v: a @ v, b, rtol=1e-12, max_iters=2)
    assert int(res.num_iters) == 2 and not bool(res.converged)
    assert bool(jnp.all(jnp.isfinite(res.x)))
    # two CG steps minimise the energy over the Krylov space span{b, Ab}
    basis = jnp.stack([b, a @ b], axis=1)
    coef = jnp.linalg.solve(basis.T @ a @ basis, basis.T @ b)
    np.testing.assert_allclose(res.x, basis @ coef, rtol=1e3 * tol(dtype), atol=1e3 * tol(dtype))
    res = L.truncated_cg(lambda v: a @ v, jnp.zeros(10, dtype), rtol=1e-6, max_iters=5)
    assert bool(res.converged) and int(res.num_iters) == 0
    np.testing.assert_array_equal(res.x, 0.0)


def test_cg_gives_up_when_its_rate_cannot_meet_the_budget(dtype):
    n = 200
    eigs = jnp.logspace(0, 5, n).astype(dtype)  # condition 1e5: hundreds of iterations
    b = jnp.ones(n, dtype)
    slow = L.truncated_cg(lambda v: eigs * v, b, rtol=1e-10, max_iters=40, give_up_after=8)
    assert not bool(slow.converged) and int(slow.num_iters) < 40
    assert int(slow.num_iters) >= 8  # not before `give_up_after`
    # the same budget without giving up runs it out; a well-conditioned system converges as
    # it would without the rule
    full = L.truncated_cg(lambda v: eigs * v, b, rtol=1e-10, max_iters=40)
    assert int(full.num_iters) == 40 and not bool(full.converged)
    fast = jnp.linspace(1.0, 3.0, n).astype(dtype)
    rtol = 1e-10 if dtype == jnp.float64 else 1e-5
    kept = L.truncated_cg(lambda v: fast * v, b, rtol=rtol, max_iters=40, give_up_after=8)
    plain = L.truncated_cg(lambda v: fast * v, b, rtol=rtol, max_iters=40)
    assert bool(kept.converged) and int(kept.num_iters) == int(plain.num_iters)
    np.testing.assert_array_equal(kept.x, plain.x)
    # a preconditioner with no finite product (a zero Cholesky factor) never converges: CG
    # gives up at `give_up_after` instead of running out the budget
    nan = L.truncated_cg(lambda v: fast * v, b, rtol=rtol, max_iters=40, give_up_after=8,
                         precond=lambda r: r / 0.0)
    assert not bool(nan.converged) and int(nan.num_iters) == 8


def test_damped_cg_and_warm_start(dtype):
    n = 7
    c = spd(jax.random.key(8), n, dtype)
    g = jax.random.normal(jax.random.key(9), (n,), dtype)
    lam = jnp.asarray(0.5, dtype)
    ref = -jnp.linalg.solve(c + lam * jnp.eye(n, dtype=dtype), g)
    rtol = 1e-12 if dtype == jnp.float64 else 1e-6
    p, k = jax.jit(lambda g: L.damped_cg(lambda v: c @ v, g, lam, rtol=rtol, max_steps=50))(g)
    assert rel_err(p, ref) < 10 * tol(dtype) and int(k) >= 1
    # a good warm start is used (one extra product counted); a bad one (φ(x0) > 0) is dropped
    p2, k2 = L.damped_cg(lambda v: c @ v, g, lam, rtol=rtol, max_steps=50, x0=ref)
    assert rel_err(p2, ref) < 10 * tol(dtype) and int(k2) == 1
    p3, _ = L.damped_cg(lambda v: c @ v, g, lam, rtol=rtol, max_steps=50, x0=-100 * ref)
    assert rel_err(p3, ref) < 10 * tol(dtype)


def test_cg_budget_default():
    assert L.cg_budget(jnp.zeros(3), None) == 10
    assert L.cg_budget({"a": jnp.zeros(20)}, None) == 40
    assert L.cg_budget(jnp.zeros(3), 7) == 7


# --------------------------------------------------------------------------- CGLS / PCGLS


def _lsq_problem(dtype, m=12, n=5, seed=10):
    j = jax.random.normal(jax.random.key(seed), (m, n), dtype)
    r = jax.random.normal(jax.random.key(seed + 1), (m,), dtype)
    return j, r


def test_cgls_matches_lstsq_and_model_residual(dtype):
    j, r = _lsq_problem(dtype)
    g = j.T @ r
    rtol = 1e-12 if dtype == jnp.float64 else 1e-6
    res = jax.jit(lambda r, g, lam: L.cgls(lambda v: j @ v, lambda u: j.T @ u, r, g, lam,
                                           rtol=rtol, max_iters=50, dtype=dtype))(r, g, 0.0)
    ref = jnp.linalg.lstsq(j, -r)[0]
    assert rel_err(res.x, ref) < 10 * tol(dtype)
    np.testing.assert_allclose(res.residual_sq, jnp.sum((r + j @ res.x) ** 2),
                               rtol=100 * tol(dtype))
    # damped: (JᵀJ + λI) x = −Jᵀr
    lam = jnp.asarray(2.0, dtype)
    res = L.cgls(lambda v: j @ v, lambda u: j.T @ u, r, g, lam, rtol=rtol, max_iters=50,
                 dtype=dtype)
    ref = jnp.linalg.solve(j.T @ j + lam * jnp.eye(5, dtype=dtype), -g)
    assert rel_err(res.x, ref) < 10 * tol(dtype)


def test_cgls_vmap_budget_and_zero_rhs(dtype):
    j, r = _lsq_problem(dtype)
    rs = jnp.stack([r, 2 * r, jnp.zeros_like(r)])

    def solve(r):
        return L.cgls(lambda v: j @ v, lambda u: j.T @ u, r, j.T @ r, 0.0, rtol=1e-12,
                      max_iters=2, dtype=dtype)

    res = jax.vmap(solve)(rs)
    assert res.num_iters.tolist() == [2, 2, 0]
    np.testing.assert_allclose(res.x[1], 2 * res.x[0], rtol=10 * tol(dtype))
    np.testing.assert_array_equal(res.x[2], 0.0)


def test_pcgls_matches_cgls_and_reports_broken_preconditioner(dtype):
    j, r = _lsq_problem(dtype)
    j = j * jnp.array([1.0, 10.0, 100.0, 1.0, 0.1], dtype)  # badly scaled columns
    g = j.T @ r
    lam = jnp.asarray(1e-3, dtype)
    jacobi = 1.0 / (jnp.sum(j * j, axis=0) + lam)
    rtol = 1e-12 if dtype == jnp.float64 else 1e-6
    res, broken = jax.jit(lambda: L.pcgls(lambda v: j @ v, lambda u: j.T @ u, r, g, lam,
                                          lambda s: jacobi * s, rtol=rtol, max_iters=100,
                                          dtype=dtype))()
    ref = jnp.linalg.solve(j.T @ j + lam * jnp.eye(5, dtype=dtype), -g)
    assert not bool(broken)
    assert rel_err(res.x, ref) < 1e3 * tol(dtype)
    _, broken = L.pcgls(lambda v: j @ v, lambda u: j.T @ u, r, g, lam, lambda s: -s,
                        rtol=rtol, max_iters=100, dtype=dtype)
    assert bool(broken)


# --------------------------------------------------------------------------- GMRES


def _nonsymmetric(key, n, dtype):
    return (jnp.eye(n) * 4 + jax.random.normal(key, (n, n)) / jnp.sqrt(n)).astype(dtype)


@pytest.mark.parametrize("restart", [3, 20])
def test_gmres_matches_solve_under_jit_and_vmap(dtype, restart):
    n, batch = 12, 2
    a = jnp.stack([_nonsymmetric(k, n, dtype) for k in jax.random.split(jax.random.key(11),
                                                                         batch)])
    b = jax.random.normal(jax.random.key(12), (batch, n), dtype)
    rtol = 1e-10 if dtype == jnp.float64 else 1e-5

    def solve(a, b):
        return L.gmres(lambda v: a @ v, b, rtol=rtol, max_iters=200, restart=restart)

    res = jax.jit(jax.vmap(solve))(a, b)
    ref = jnp.linalg.solve(a, b[..., None])[..., 0]
    assert bool(jnp.all(res.converged))
    assert rel_err(res.x, ref) < 100 * tol(dtype)
    # the Arnoldi residual is the true one, b − A x, with no extra product
    true = b - jnp.einsum("bij,bj->bi", a, res.x)
    np.testing.assert_allclose(res.residual, true, atol=100 * tol(dtype))


def test_gmres_pytree_preconditioner_and_warm_start(dtype):
    n = 10
    a = _nonsymmetric(jax.random.key(13), 2 * n, dtype)
    b = jax.random.normal(jax.random.key(14), (2 * n,), dtype)
    split = lambda v: (v[:n], v[n:])  # noqa: E731
    join = lambda t: jnp.concatenate(t)  # noqa: E731
    inv_diag = 1.0 / jnp.diag(a)
    rtol = 1e-10 if dtype == jnp.float64 else 1e-5
    res = L.gmres(lambda t: split(a @ join(t)), split(b), rtol=rtol, max_iters=100, restart=5,
                  precond=lambda t: split(inv_diag * join(t)))
    ref = jnp.linalg.solve(a, b)
    assert bool(res.converged) and rel_err(join(res.x), ref) < 100 * tol(dtype)
    # a start at the answer costs no product
    x0 = split(ref)
    r0 = split(b - a @ ref)
    res = L.gmres(lambda t: split(a @ join(t)), split(b), rtol=1e-3, max_iters=100, restart=5,
                  x0=x0, r0=r0)
    assert int(res.num_iters) == 0 and bool(res.converged)


def test_gmres_budget_and_zero_rhs(dtype):
    a = _nonsymmetric(jax.random.key(15), 30, dtype)
    b = jax.random.normal(jax.random.key(16), (30,), dtype)
    res = L.gmres(lambda v: a @ v, b, rtol=1e-14, max_iters=4, restart=10)
    assert int(res.num_iters) == 4 and not bool(res.converged)
    # GMRES minimises the residual over the Krylov space: no worse than zero, finite
    assert float(res.residual_norm) < float(jnp.linalg.norm(b))
    np.testing.assert_allclose(res.residual, b - a @ res.x, atol=100 * tol(dtype))
    res = L.gmres(lambda v: a @ v, jnp.zeros(30, dtype), rtol=1e-6, max_iters=4, restart=10)
    assert bool(res.converged) and int(res.num_iters) == 0
    np.testing.assert_array_equal(res.x, 0.0)


# --------------------------------------------------------------------------- Lanczos


def test_lanczos_full_run_reproduces_spectrum(dtype):
    n = 8
    a = spd(jax.random.key(17), n, dtype) - 3.0 * jnp.eye(n, dtype=dtype)  # indefinite
    q0 = jax.random.normal(jax.random.key(18), (n,), dtype)
    q0 = q0 / jnp.linalg.norm(q0)
    alphas, betas, alive = jax.jit(lambda q: L.lanczos(lambda v: a @ v, q, n))(q0)
    t = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    np.testing.assert_allclose(jnp.linalg.eigvalsh(t), jnp.linalg.eigvalsh(a),
                               atol=100 * tol(dtype))
    assert bool(jnp.all(alive))


def test_lanczos_breakdown_is_masked_and_vmaps(dtype):
    # two distinct eigenvalues: the Krylov space is invariant after two steps
    a = jnp.diag(jnp.array([1.0, 1.0, 1.0, 5.0, 5.0, 5.0], dtype))
    q0 = jnp.stack([jnp.ones(6, dtype), jnp.arange(1.0, 7.0, dtype=dtype)])
    q0 = q0 / jnp.linalg.norm(q0, axis=1, keepdims=True)
    alphas, betas, alive = jax.vmap(lambda q: L.lanczos(lambda v: a @ v, q, 6))(q0)
    assert alive.tolist() == [[True, True, False, False, False, False]] * 2
    assert bool(jnp.all(jnp.isfinite(alphas)) & jnp.all(jnp.isfinite(betas)))
    for i in range(2):
        t = jnp.diag(alphas[i, :2]) + betas[i, 0] * (jnp.eye(2, k=1) + jnp.eye(2, k=-1))
        np.testing.assert_allclose(jnp.linalg.eigvalsh(t), [1.0, 5.0], rtol=10 * tol(dtype))


# --------------------------------------------------------------------------- banded


def _band_matrix(key, n, b, dtype):
    full = jax.random.normal(key, (n, n))
    mask = jnp.abs(jnp.arange(n)[:, None] - jnp.arange(n)[None, :]) <= b
    return (jnp.where(mask, full, 0.0) + (2 * b + 2) * jnp.eye(n)).astype(dtype)


@pytest.mark.parametrize("b", [1, 2, 3])
def test_probe_band_and_band_solve(dtype, b):
    n = 11
    a = _band_matrix(jax.random.key(19 + b), n, b, dtype)
    band = L.probe_band(lambda v: a @ v, lambda v: v, n, b, dtype)
    assert band.shape == (n, 2 * b + 1) and band.dtype == dtype
    band_np, a_np = np.asarray(band), np.asarray(a)
    for i in range(n):
        for k in range(2 * b + 1):
            j = i + k - b
            assert band_np[i, k] == (a_np[i, j] if 0 <= j < n else 0.0)
    rhs = jax.random.normal(jax.random.key(30), (3, n), dtype)
    solve = L.band_solver(band, b)
    x = jax.jit(jax.vmap(solve))(rhs)
    ref = jnp.linalg.solve(a, rhs.T).T
    assert rel_err(x, ref) < 10 * tol(dtype)
    lower, upper = L.band_lu(band, b)
    assert rel_err(L.band_lu_solve(lower, upper, rhs[0], b), ref[0]) < 10 * tol(dtype)


# --------------------------------------------------------------------------- dense


def test_damped_cholesky(dtype):
    h = spd(jax.random.key(31), 5, dtype)
    indefinite = h - 4.0 * jnp.eye(5, dtype=dtype)
    singular = jnp.zeros((5, 5), dtype)
    factors, taus = jax.jit(jax.vmap(lambda h: L.damped_cholesky(h, 12)))(
        jnp.stack([h, indefinite, singular]))
    np.testing.assert_allclose(factors[0], jnp.linalg.cholesky(h), rtol=tol(dtype),
                               atol=tol(dtype))
    assert float(taus[0]) == 0.0
    for i, m in ((1, indefinite), (2, singular)):
        assert float(taus[i]) > 0
        assert bool(jnp.all(jnp.isfinite(factors[i])))
        np.testing.assert_allclose(factors[i] @ factors[i].T,
                                   m + taus[i] * jnp.eye(5, dtype=dtype), atol=100 * tol(dtype))
    # τ ≥ −λ_min: the damped matrix is positive definite
    assert float(taus[1]) > -float(jnp.linalg.eigvalsh(indefinite)[0])


def test_newton_solve_falls_back_on_singular(dtype):
    j = _nonsymmetric(jax.random.key(32), 4, dtype)
    rhs = jax.random.normal(jax.random.key(33), (4,), dtype)
    fnorm = jnp.linalg.norm(rhs)
    x = jax.jit(L.newton_solve)(j, rhs, fnorm)
    assert rel_err(x, jnp.linalg.solve(j, rhs)) < 10 * tol(dtype)
    sing = j.at[:, 0].set(0.0)
    x = L.newton_solve(sing, rhs, fnorm)
    assert bool(jnp.all(jnp.isfinite(x)))
    mu = fnorm + jnp.finfo(dtype).eps * jnp.sum(sing * sing)
    ref = jnp.linalg.solve(sing.T @ sing + mu * jnp.eye(4, dtype=dtype), sing.T @ rhs)
    assert rel_err(x, ref) < 100 * tol(dtype)
    np.testing.assert_allclose(L.damped_solve(sing, rhs, fnorm), ref, rtol=100 * tol(dtype),
                               atol=100 * tol(dtype))


def test_ravelled_jacobian(dtype):
    def fn(y, args):
        return {"a": jnp.sin(y["u"]) * args, "b": y["u"][:1] * y["w"]}, None

    y = {"u": jnp.array([0.1, 0.2, 0.3], dtype), "w": jnp.array([2.0], dtype)}
    jac, unravel = L.ravelled_jacobian(fn, y, jnp.asarray(2.0, dtype))
    flat = jnp.concatenate([y["u"], y["w"]])
    ref = jax.jacfwd(lambda v: jnp.concatenate(
        [jnp.sin(v[:3]) * 2.0, v[:1] * v[3:]]))(flat)
    np.testing.assert_allclose(jac, ref, rtol=tol(dtype))
    assert unravel(flat)["w"].shape == (1,)


# --------------------------------------------------------------------------- forcing terms


def test_eisenstat_walker_closed_form(dtype):
    ew = jax.jit(lambda g, gp, e: L.eisenstat_walker(g, gp, e, dtype))
    # choice 2: 0.9 (‖g‖/‖g_prev‖)², safeguarded by 0.9 η_prev² when that exceeds 0.1
    np.testing.assert_allclose(ew(1.0, 1.0, 0.5), 0.5)  # capped at EW_ETA_MAX
    np.testing.assert_allclose(ew(0.1, 1.0, 0.1), 0.9 * 0.01, rtol=tol(dtype))
    np.testing.assert_allclose(ew(0.1, 1.0, 0.5), 0.9 * 0.25, rtol=tol(dtype))
    assert float(ew(0.0, 1.0, 0.01)) == float(jnp.finfo(dtype).eps)
    assert ew(0.1, 1.0, 0.1).dtype == dtype
    eta = L.inner_rtol(None, jnp.asarray(0.1, dtype), jnp.asarray(1.0, dtype),
                       jnp.asarray(0.1, dtype), dtype)
    np.testing.assert_allclose(eta, 0.9 * 0.01, rtol=tol(dtype))
    assert float(L.inner_rtol(0.25, 1.0, 1.0, 0.5, dtype)) == 0.25
