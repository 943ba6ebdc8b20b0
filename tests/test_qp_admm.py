"""jaxopt2.qp.solve_qp(method="admm"): OSQP's ADMM against QPs with a known solution and
against Clarabel, with and without polishing, float32; infeasible and unbounded problems
(dense and matrix-free); warm start; matrix-free (functions, lineax operators) equal to dense;
vmap with one infeasible problem; derivatives equal to the interior point's; input errors."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from jaxopt2 import RESULTS
from jaxopt2.qp import ADMM, solve_qp

from .test_qp import cast, known_qp


def random_qp(seed, n=30, m=15, p=3, bounds=True):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    Q = M @ M.T / n + 0.01 * np.eye(n)
    x0 = rng.uniform(-0.5, 0.5, n)
    G = rng.normal(size=(m, n))
    A = rng.normal(size=(p, n))
    d = dict(Q=Q, c=rng.normal(size=n), A=A, b=A @ x0, G=G, h=G @ x0 + rng.uniform(0, 1, m))
    if bounds:
        d.update(lower=-np.ones(n), upper=np.ones(n))
    return d


def clarabel_reference(d):
    clarabel = pytest.importorskip("clarabel")
    import scipy.sparse as sp

    n, p, m = len(d["c"]), len(d["b"]), len(d["h"])
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = 1e-12
    K = sp.csc_matrix(np.vstack([d["A"], d["G"], -np.eye(n), np.eye(n)]))
    rhs = np.concatenate([d["b"], d["h"], -d["lower"], d["upper"]])
    cones = [clarabel.ZeroConeT(p), clarabel.NonnegativeConeT(m + 2 * n)]
    out = clarabel.DefaultSolver(sp.csc_matrix(np.triu(d["Q"])), d["c"], K, rhs, cones,
                                 settings).solve()
    assert str(out.status) == "Solved"
    return np.array(out.x), out.obj_val


@pytest.mark.float64
@pytest.mark.parametrize("polish", [True, False])
def test_known_solution(polish):
    data, ref = known_qp(0)
    sol = jax.jit(lambda d: solve_qp(**d, method=ADMM(polish=polish)))(cast(data, jnp.float64))
    assert sol.status == RESULTS.successful
    assert bool(sol.stats["polished"]) == polish
    tol = 1e-9 if polish else 1e-7
    for k, v in ref.items():
        np.testing.assert_allclose(getattr(sol, k), v, atol=tol, err_msg=k)
    d = data
    stationarity = (d["Q"] @ sol.x + d["c"] + d["A"].T @ sol.y + d["G"].T @ sol.z
                    - sol.z_lower + sol.z_upper)
    assert np.max(np.abs(stationarity)) <= 10 * tol


@pytest.mark.slow
@pytest.mark.float64
def test_random_qp_against_clarabel():
    for seed in range(1):
        d = random_qp(seed)
        x_ref, obj_ref = clarabel_reference(d)
        sol = solve_qp(**cast(d, jnp.float64), method="admm", rtol=1e-9)
        assert sol.status == RESULTS.successful
        np.testing.assert_allclose(sol.x, x_ref, atol=1e-6)
        np.testing.assert_allclose(sol.value, obj_ref, rtol=1e-8)


def test_float32():
    data, ref = known_qp(1)
    sol = jax.jit(lambda d: solve_qp(**d, method="admm"))(cast(data, jnp.float32))
    assert sol.status == RESULTS.successful
    assert sol.x.dtype == jnp.float32 and sol.z.dtype == jnp.float32
    np.testing.assert_allclose(sol.x, ref["x"], atol=2e-3)
    np.testing.assert_allclose(sol.z, ref["z"], atol=2e-2)


def infeasible_and_unbounded():
    # x₀ + x₁ ≤ −1 with x ≥ 0: infeasible. Q = diag(1, 0), c = (0, −1), x₁ free above: unbounded.
    infeasible = dict(Q=np.eye(2), c=np.ones(2), G=np.array([[1.0, 1.0]]), h=np.array([-1.0]),
                      lower=np.zeros(2))
    unbounded = dict(Q=np.diag([1.0, 0.0]), c=np.array([0.0, -1.0]),
                     G=np.array([[1.0, 0.0]]), h=np.array([1.0]), lower=np.zeros(2))
    return infeasible, unbounded


@pytest.mark.float64
@pytest.mark.parametrize("matrix_free", [False, True])
def test_infeasible_and_unbounded_statuses(matrix_free):
    infeasible, unbounded = infeasible_and_unbounded()
    for data, expected in ((infeasible, RESULTS.primal_infeasible),
                           (unbounded, RESULTS.dual_infeasible)):
        d = cast(data, jnp.float64)
        if matrix_free:
            Q, G = d["Q"], d["G"]
            d["Q"], d["G"] = (lambda x, Q=Q: Q @ x), (lambda x, G=G: G @ x)
        sol = solve_qp(**d, method="admm", throw=False)
        assert sol.status == expected


@pytest.mark.float64
def test_warm_start_reduces_iterations():
    # A perturbed problem, started from the solution of the original one (x, multipliers
    # and the adapted step size ρ carried by `init`).
    d = cast(random_qp(5), jnp.float64)
    opts = ADMM(polish=False, check_every=5)
    solve = jax.jit(lambda d, init: solve_qp(**d, method=opts, rtol=1e-7, init=init))
    cold = solve(d, None)
    d2 = dict(d, c=d["c"] + 1e-4 * jnp.sin(jnp.arange(d["c"].shape[0])))
    cold2 = solve(d2, None)
    warm2 = solve(d2, cold)
    assert warm2.status == RESULTS.successful
    np.testing.assert_allclose(warm2.x, cold2.x, atol=1e-5)
    assert int(warm2.stats["num_steps"]) < 0.5 * int(cold2.stats["num_steps"])


@pytest.mark.float64
def test_matrix_free_equals_dense():
    d = cast(random_qp(7, n=20, m=10, p=2), jnp.float64)
    dense = solve_qp(**d, method=ADMM(polish=False), rtol=1e-9)
    Q, A, G = d["Q"], d["A"], d["G"]
    for ops in ((lambda x: Q @ x, lambda x: A @ x, lambda x: G @ x),
                (lx.MatrixLinearOperator(Q), A, lx.MatrixLinearOperator(G))):
        free = jax.jit(lambda c, ops=ops: solve_qp(
            ops[0], c, ops[1], d["b"], ops[2], d["h"], lower=d["lower"], upper=d["upper"],
            method="admm", rtol=1e-9))(d["c"])
        assert free.status == RESULTS.successful
        assert not bool(free.stats["polished"])
        np.testing.assert_allclose(free.x, dense.x, atol=1e-6)
        np.testing.assert_allclose(free.z, dense.z, atol=1e-5)
        np.testing.assert_allclose(free.y, dense.y, atol=1e-5)


@pytest.mark.float64
def test_vmap_one_infeasible_problem():
    d = cast(random_qp(9, n=8, m=4, p=1), jnp.float64)
    hs = jnp.stack([d["h"], d["h"] + 0.5, d["h"] - 1e3, d["h"] + 1.0])  # the third: infeasible

    def solve(h):
        return solve_qp(**dict(d, h=h), method="admm", throw=False)

    batch = jax.jit(jax.vmap(solve))(hs)
    solve = jax.jit(solve)
    codes = [RESULTS.successful, RESULTS.successful, RESULTS.primal_infeasible,
             RESULTS.successful]
    for i, expected in enumerate(codes):
        assert int(batch.status.code[i]) == expected._value
        if expected == RESULTS.successful:
            one = solve(hs[i])
            np.testing.assert_allclose(batch.x[i], one.x, atol=1e-9)


@pytest.mark.slow
@pytest.mark.float64
def test_derivatives_equal_the_interior_points():
    data, _ = known_qp(2, n=6, p=1, m_active=2, m_inactive=2, n_lower=1, n_upper=1)
    d = cast(data, jnp.float64)

    def loss(d, method):
        s = solve_qp(**d, method=method)
        return jnp.sum(jnp.sin(s.x)) + jnp.sum(s.y ** 2) + jnp.sum(jnp.cos(s.z)) + jnp.sum(
            s.z_lower * s.z_upper + s.z_lower)

    g_admm = jax.grad(loss)(d, "admm")
    g_ipm = jax.grad(loss)(d, "ipm")
    for k in d:
        np.testing.assert_allclose(g_admm[k], g_ipm[k], atol=1e-6, err_msg=k)


def test_matrix_free_is_not_differentiable():
    def loss(c, scale):
        sol = solve_qp(lambda x: scale * x, c, lower=0.0, method="admm", throw=False)
        return jnp.sum(sol.x)

    for argnum in (0, 1):  # c, and an array the operator closes over
        with pytest.raises(NotImplementedError, match="matrix-free"):
            jax.grad(loss, argnums=argnum)(jnp.ones(3), 2.0)


def test_bad_input():
    Q, c = jnp.eye(2), jnp.ones(2)
    with pytest.raises(ValueError, match="method"):
        solve_qp(Q, c, method="osqp")
    fake = SimpleNamespace(x=c, y=jnp.zeros(0), z=jnp.zeros(0), z_lower=c, z_upper=c, stats={})
    with pytest.raises(ValueError, match="init"):
        solve_qp(Q, c, init=fake)
    with pytest.raises(ValueError, match="admm"):
        solve_qp(lambda x: x, c)
    with pytest.raises(ValueError, match="alpha"):
        ADMM(alpha=2.5)
    with pytest.raises(ValueError, match="shape"):
        solve_qp(lambda x: x, c, G=lambda x: x, h=jnp.ones(3), method="admm")
    with pytest.raises(TypeError, match="dtype"):
        solve_qp(lambda x: x.astype(jnp.int32), c, method="admm")
    with pytest.raises(ValueError, match="semidefinite"):
        solve_qp(-Q, c, method="admm")
    with pytest.raises(ValueError, match="init"):
        solve_qp(Q, c, G=jnp.ones((1, 2)), h=jnp.ones(1), method="admm", init=fake)


def test_float32_lp_with_equality_rows():
    # Q = 0 and 10³ρ on the equality row: with σ = 1e-6 alone the x-update's matrix was
    # numerically singular in float32 (Cholesky NaN, status nonfinite).
    sol = jax.jit(lambda c: solve_qp(jnp.zeros((3, 3)), c, jnp.ones((1, 3)), jnp.ones(1),
                                     lower=0.0, method="admm", throw=False))(
        jnp.array([1.0, 2.0, 3.0]))
    assert sol.status == RESULTS.successful
    np.testing.assert_allclose(sol.x, [1.0, 0.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(sol.y, [-1.0], atol=1e-3)


@pytest.mark.float64
def test_ruiz_scaling_solves_a_badly_scaled_qp():
    # Variables scaled by 10^±2 and inequality rows by 10^±3: plain ADMM has not converged
    # after 500 iterations (on a similar QP it was still 6% off after 20,000); with Ruiz
    # equilibration (`scaling=10`) it converges in a few checks, to the KKT point (residuals
    # measured in the original units) and to Clarabel's solution.
    rng = np.random.default_rng(0)
    d = random_qp(0, bounds=False)
    S = 10.0 ** rng.uniform(-2, 2, len(d["c"]))
    R = 10.0 ** rng.uniform(-3, 3, len(d["h"]))
    bad = dict(Q=S[:, None] * d["Q"] * S[None, :], c=S * d["c"], A=d["A"] * S[None, :],
               b=d["b"], G=R[:, None] * d["G"] * S[None, :], h=R * d["h"])
    data = cast(bad, jnp.float64)
    plain = solve_qp(**data, method=ADMM(), max_steps=500, throw=False)
    assert plain.status == RESULTS.max_steps_reached
    sol = solve_qp(**data, method=ADMM(scaling=10), max_steps=500, throw=False)
    assert sol.status == RESULTS.successful
    assert int(sol.stats["num_steps"]) <= 200
    # reference: the well-scaled QP solved by Clarabel, mapped back (x_bad = x / S)
    ref, _ = clarabel_reference(dict(d, lower=-1e6 * np.ones(len(d["c"])),
                                     upper=1e6 * np.ones(len(d["c"]))))
    np.testing.assert_allclose(sol.x, ref / S, rtol=1e-6, atol=1e-8 * np.max(np.abs(ref / S)))
    r_d = bad["Q"] @ sol.x + bad["c"] + bad["A"].T @ sol.y + bad["G"].T @ sol.z
    assert np.max(np.abs(r_d)) <= 1e-7 * (1 + np.max(np.abs(bad["c"])))
    assert np.max(bad["G"] @ sol.x - bad["h"]) <= 1e-7 * (1 + np.max(np.abs(bad["h"])))
    with pytest.raises(ValueError, match="scaling"):
        ADMM(scaling=-1)
    with pytest.raises(ValueError, match="dense"):
        solve_qp(lambda x: x, data["c"], method=ADMM(scaling=10))
