"""ProjectedNewtonCG: the ε-active set, whole solves against scipy's L-BFGS-B and NNLS, and
where second order pays: an ill-conditioned NNLS that L-BFGS-B needs hundreds of steps for.
The front-door contract (jit, vmap, pytrees, dtypes, implicit derivatives) is tested for both
bound-constrained solvers in tests/test_lbfgsb.py."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import jaxopt2
from jaxopt2._solver.lbfgsb import LBFGSB
from jaxopt2._solver.projected_newton_cg import ProjectedNewtonCG, active_set
from tests.test_lbfgsb import (
    breast_cancer_problem,
    drive,
    nnls_loss,
    nnls_problem,
    projected_gradient,
)


def test_active_set_is_near_a_bound_with_the_gradient_pointing_out():
    x = jnp.array([0.0, 0.0, 0.05, 1.0, 1.0, 0.5])
    g = jnp.array([1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    got = active_set(x, g, jnp.zeros(6), jnp.ones(6), 0.1)
    np.testing.assert_array_equal(got, [True, False, True, True, False, False])
    # with ε = 0 only exactly active bounds count
    got0 = active_set(x, g, jnp.zeros(6), jnp.ones(6), 0.0)
    np.testing.assert_array_equal(got0, [True, False, False, True, False, False])


@pytest.mark.float64
def test_logistic_regression_matches_scipy():
    loss, args, lo, hi, x_ref, _ = breast_cancer_problem()
    it, steps, ok, pg = jax.jit(lambda: drive(ProjectedNewtonCG(), loss, jnp.zeros(30), args,
                                              jnp.asarray(lo), jnp.asarray(hi), 100, 1e-12))()
    assert ok and pg <= 1e-12, (steps, pg)
    active = (x_ref == lo) | (x_ref == hi)
    np.testing.assert_array_equal(np.asarray(it.params)[active], x_ref[active])
    # scipy's own answer is the less accurate one here (its pg ≈ 1e-10, κ ≈ 1e4)
    np.testing.assert_allclose(it.params, x_ref, atol=2e-6)
    assert steps <= 20  # quadratic convergence once the active set is found


@pytest.mark.float64
def test_nnls_matches_scipy():
    a, b, x_ref = nnls_problem()
    it, _, ok, pg = jax.jit(lambda: drive(ProjectedNewtonCG(), nnls_loss, jnp.ones(20),
                                          (jnp.asarray(a), jnp.asarray(b)), jnp.zeros(20),
                                          jnp.full(20, jnp.inf), 200, 1e-12))()
    assert ok and pg <= 1e-12
    np.testing.assert_allclose(it.params, x_ref, atol=1e-10)


@pytest.mark.float64
def test_ill_conditioned_nnls_newton_beats_lbfgsb():
    # singular values from 1 to 1e-3 (κ(AᵀA) = 1e6): L-BFGS-B's 10 pairs learn the spectrum
    # slowly, projected Newton solves the free block exactly once the active set settles.
    a, b, x_ref = nnls_problem(seed=1, m=200, n=50, decay=3.0)
    data = (jnp.asarray(a), jnp.asarray(b))
    lo, hi = jnp.zeros(50), jnp.full(50, jnp.inf)

    def run(solver):
        return jax.jit(lambda: drive(solver, nnls_loss, jnp.ones(50), data, lo, hi, 3000,
                                     1e-10))()

    newton, newton_steps, ok_n, _ = run(ProjectedNewtonCG())
    lbfgsb, lbfgsb_steps, ok_l, _ = run(LBFGSB())
    assert ok_n and ok_l
    # pg ≤ 1e-10 with λ_min(AᵀA) ≈ 1e-6 on the free block: x within about 1e-4 in theory
    np.testing.assert_allclose(newton.params, x_ref, atol=1e-7)
    np.testing.assert_allclose(lbfgsb.params, x_ref, atol=1e-5)
    assert 5 * newton_steps < lbfgsb_steps, (newton_steps, lbfgsb_steps)


def test_negative_curvature_still_descends_to_a_bound():
    # f = −½‖x‖² + small linear term in [−1, 2]²: indefinite everywhere, the minimizer is the
    # corner (2, 2); CG stops on negative curvature and the projected search reaches it.
    fun = lambda x, _: -0.5 * jnp.sum(x**2) - 0.01 * jnp.sum(x)  # noqa: E731
    lo, hi = -jnp.ones(2), 2 * jnp.ones(2)
    it, _, ok, pg = jax.jit(lambda: drive(ProjectedNewtonCG(), fun, jnp.array([0.1, 0.3]),
                                          None, lo, hi, 50, 0.0))()
    np.testing.assert_array_equal(it.params, [2.0, 2.0])
    assert pg == 0 and jnp.all(projected_gradient(it.params, it.grad, lo, hi) == 0)


@pytest.mark.float64
def test_singular_hessian_with_gradient_outside_its_range_falls_back_to_a_gradient_step():
    """HS 9's penalty subproblem from x = 0: the Hessian there is the rank-one penalty
    ρ·aaᵀ (a = (4, −3)) and the gradient (π/12, 0) is not in its range, so CG returns a huge
    step and every backtrack of it fails (was line_search_failed at step 1). The projected
    gradient step taken instead leads to the minimizer LBFGSB finds, with the same value."""
    rho = 10.0

    def f(x, _):
        return (jnp.sin(jnp.pi * x[0] / 12) * jnp.cos(jnp.pi * x[1] / 16)
                + 0.5 * rho * (4 * x[0] - 3 * x[1]) ** 2)

    x0, bounds = jnp.zeros(2), (-10.0, 10.0)
    hess = jax.hessian(f)(x0, None)
    assert np.linalg.matrix_rank(np.asarray(hess)) == 1  # the premise: singular at x0
    sol = jaxopt2.minimize(f, x0, None, solver=ProjectedNewtonCG(), bounds=bounds,
                           throw=False)
    ref = jaxopt2.minimize(f, x0, None, solver=LBFGSB(), bounds=bounds)
    assert jaxopt2.status_name(sol.status) == "successful"
    np.testing.assert_allclose(sol.value, ref.value, rtol=1e-10)
    np.testing.assert_allclose(sol.params, ref.params, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The preconditioners (`_free_block.py`): Jacobi from coloured probes, the dense free block.

MODES = {  # the three ways a step can precondition CG on the free variables
    "block": dict(dense_max=96),  # Jacobi while |F| > 96, then the dense block (Cholesky)
    "jacobi": dict(dense_max=0),  # coloured-probe Jacobi only
    "plain": dict(dense_max=0, jacobi_probes=0),  # unpreconditioned CG, as before
}


def _spd(n, seed, bandwidth=None):
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n))
    h = m @ m.T / n + np.diag(np.logspace(0, 3, n))  # badly scaled diagonal
    if bandwidth is not None:
        i = np.arange(n)
        h = np.where(np.abs(i[:, None] - i[None, :]) <= bandwidth, h, 0.0)
        h += np.eye(n) * np.abs(h).sum(1)  # still positive definite
    return h


def test_coloured_diagonal_is_exact_with_enough_probes_or_a_narrow_band():
    from jaxopt2._free_block import coloured_diagonal

    h = _spd(40, 0)
    free = jnp.asarray(np.random.default_rng(1).random(40) < 0.6)
    hvp = lambda v: jnp.asarray(h) @ v  # noqa: E731
    expect = np.where(free, np.diag(h), 0.0)
    # probes ≥ |F|: every colour holds one free variable
    got = coloured_diagonal(hvp, free, int(free.sum()), jnp.float32)
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    # a band of half-width 2 and 6 colours over all 40: no two coupled variables share one
    hb = _spd(40, 2, bandwidth=2)
    got = coloured_diagonal(lambda v: jnp.asarray(hb) @ v, jnp.ones(40, bool), 6, jnp.float32)
    np.testing.assert_allclose(got, np.diag(hb), rtol=1e-5)
    # too few colours for a dense H: an estimate, not the diagonal
    got = coloured_diagonal(hvp, jnp.ones(40, bool), 4, jnp.float32)
    assert not np.allclose(got, np.diag(h), rtol=1e-3)


def test_free_block_is_the_dense_block_and_preconditions_exactly():
    from jaxopt2._free_block import FreeBlock, block_preconditioner, form_block

    h = _spd(30, 3)
    free = jnp.asarray(np.random.default_rng(4).random(30) < 0.4)
    f_idx = np.flatnonzero(np.asarray(free))
    block = form_block(lambda v: jnp.asarray(h) @ v, free, 16, jnp.float32)
    np.testing.assert_array_equal(block.index[: f_idx.size], f_idx)
    assert np.all(np.asarray(block.index[f_idx.size:]) == 30)  # padding
    np.testing.assert_allclose(block.matrix[: f_idx.size, : f_idx.size], h[np.ix_(f_idx, f_idx)],
                               rtol=1e-5)
    assert block.covers(free) and not FreeBlock.empty(16, 30, jnp.float32).covers(free)
    # a smaller free set is covered and preconditioned by its sub-block; a new index is not
    sub = free.at[f_idx[0]].set(False)
    assert block.covers(sub) and not block.covers(free.at[np.flatnonzero(~free)[0]].set(True))
    apply, factored = block_preconditioner(block, sub)
    r = jnp.asarray(np.random.default_rng(5).standard_normal(30), jnp.float32)
    keep = f_idx[1:]
    expect = np.zeros(30)
    expect[keep] = np.linalg.solve(h[np.ix_(keep, keep)], np.asarray(r)[keep])
    assert factored
    np.testing.assert_allclose(apply(r), expect, rtol=2e-4, atol=1e-6)
    # an indefinite block: Jacobi with |diag| instead, and reported as not factored
    bad = eqx.tree_at(lambda b: b.matrix, block, -block.matrix)
    apply, factored = block_preconditioner(bad, sub)
    assert not factored
    np.testing.assert_allclose(apply(r)[keep], np.asarray(r)[keep] / np.diag(h)[keep], rtol=1e-5)


def _scaled_nnls(m=300, n=160, seed=7):
    # correlated columns scaled over two decades: κ(A) ≈ 1.7e3, 66 of 160 bounds active
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((m, n))
    a = np.empty((m, n))
    a[:, 0] = z[:, 0]
    for j in range(1, n):
        a[:, j] = 0.9 * a[:, j - 1] + np.sqrt(1 - 0.81) * z[:, j]
    a *= np.logspace(0, -2, n)
    b = a @ (rng.standard_normal(n) + 1.0) + 0.1 * rng.standard_normal(m)
    return a, b, so.nnls(a, b, maxiter=50 * n)[0]


@pytest.mark.float64
@pytest.mark.parametrize("mode", MODES)
def test_scaled_nnls_matches_scipy_in_every_mode(mode):
    a, b, x_ref = _scaled_nnls()
    assert np.sum(x_ref == 0) == 66
    solver = ProjectedNewtonCG(rtol=0.0, atol=1e-10, **MODES[mode])
    sol = jax.jit(lambda d: jaxopt2.minimize(nnls_loss, jnp.zeros(160), d, solver=solver,
                                             bounds=(0.0, None), max_steps=300,
                                             throw=False))((jnp.asarray(a), jnp.asarray(b)))
    assert jaxopt2.status_name(sol.status) == "successful"
    pg = projected_gradient(sol.params, jax.grad(nnls_loss)(sol.params, (a, b)), 0.0, jnp.inf)
    assert jnp.max(jnp.abs(pg)) <= 1e-10
    np.testing.assert_allclose(sol.params, x_ref, atol=1e-6)
    if mode == "block":
        # the block is formed from 96 unit vectors once |F| ≤ 96, then kept (and extended
        # by a few columns) while F changes little: far fewer products than a block at every
        # step, and fewer steps than plain CG
        plain = jaxopt2.minimize(nnls_loss, jnp.zeros(160), (jnp.asarray(a), jnp.asarray(b)),
                                 solver=ProjectedNewtonCG(rtol=0.0, atol=1e-10, **MODES["plain"]),
                                 bounds=(0.0, None), max_steps=300)
        assert sol.stats["num_hvp"] < 96 * sol.stats["num_steps"] // 2
        assert sol.stats["num_steps"] < plain.stats["num_steps"]


@pytest.mark.parametrize("mode", ["jacobi", "plain"])
@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.float64)])
def test_logistic_regression_matches_scipy_without_the_block(mode, dtype):
    # breast cancer, 30 features: the default solves it by the block (n ≤ 256, tested above
    # and in test_lbfgsb); here the Jacobi and plain CG paths, both dtypes
    loss, args, lo, hi, x_ref, _ = breast_cancer_problem()
    cast = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    args, lo, hi = jax.tree.map(cast, args), cast(lo), cast(hi)
    sol = jax.jit(lambda a: jaxopt2.minimize(
        loss, jnp.zeros(30, dtype), a, solver=ProjectedNewtonCG(**MODES[mode]),
        bounds=(lo, hi), max_steps=200, throw=False))(args)
    assert jaxopt2.status_name(sol.status) == "successful" and sol.params.dtype == dtype
    tol = 2e-6 if dtype == "float64" else 5e-2
    np.testing.assert_allclose(sol.params, x_ref, atol=tol)


@pytest.mark.parametrize("mode", ["block", "jacobi"])
def test_vmap_with_a_bad_problem_in_each_preconditioner_mode(mode):
    a, b, _ = _scaled_nnls(m=80, n=40, seed=3)
    bs = jnp.stack([jnp.asarray(b), jnp.asarray(b).at[5].set(jnp.nan), -jnp.asarray(b)])
    data = (jnp.asarray(a), bs)

    def solve(bb):
        return jaxopt2.minimize(nnls_loss, jnp.zeros(40), (data[0], bb),
                                solver=ProjectedNewtonCG(**MODES[mode]), bounds=(0.0, None),
                                throw=False, max_steps=200)

    batch = jax.jit(jax.vmap(solve))(bs)
    codes = [jaxopt2.status_name(c) for c in batch.status._value]
    assert codes[1] != "successful"
    for i in (0, 2):
        assert codes[i] == "successful"
        ref = so.nnls(np.asarray(a, np.float64), np.asarray(bs[i], np.float64), maxiter=2000)[0]
        np.testing.assert_allclose(batch.params[i], ref, atol=2e-3)


@pytest.mark.parametrize("field, value", [("jacobi_probes", -1), ("dense_max", 2.5),
                                          ("dense_max", True)])
def test_bad_preconditioner_settings_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        ProjectedNewtonCG(**{field: value})


def _columns_block(x, a, index):
    # ∇²f[index][:, index] of nnls_loss, from the columns of A: AᵀA restricted to `index`
    cols = a[0][:, index]
    return cols.T @ cols


@pytest.mark.float64
def test_a_user_hessian_block_gives_the_same_solve_without_its_products():
    a, b, x_ref = _scaled_nnls()
    data = (jnp.asarray(a), jnp.asarray(b))

    def solve(solver):
        return jax.jit(lambda d: jaxopt2.minimize(nnls_loss, jnp.zeros(160), d, solver=solver,
                                                  bounds=(0.0, None), max_steps=300,
                                                  throw=False))(data)

    kw = dict(rtol=0.0, atol=1e-10, **MODES["block"])
    products = solve(ProjectedNewtonCG(**kw))
    given = solve(ProjectedNewtonCG(hessian_block=_columns_block, **kw))
    assert jaxopt2.status_name(given.status) == "successful"
    np.testing.assert_allclose(given.params, x_ref, atol=1e-6)
    # the same block, so the same steps; the block's 96 unit-vector products are not spent
    assert given.stats["num_steps"] == products.stats["num_steps"]
    assert given.stats["num_hvp"] <= products.stats["num_hvp"] - 96
    # a wrong block is only a poor preconditioner: CG uses the true products, and the
    # answer is the same
    wrong = solve(ProjectedNewtonCG(hessian_block=lambda x, d, i: jnp.eye(i.shape[0]), **kw))
    assert jaxopt2.status_name(wrong.status) == "successful"
    np.testing.assert_allclose(wrong.params, x_ref, atol=1e-6)


def test_a_hessian_block_of_the_wrong_shape_or_type_is_rejected():
    a, b, _ = _scaled_nnls(m=40, n=20, seed=2)
    solver = ProjectedNewtonCG(dense_max=8, hessian_block=lambda x, d, i: jnp.eye(3))
    with pytest.raises(ValueError, match=r"hessian_block.*returned shape \(3, 3\) for 8"):
        jaxopt2.minimize(nnls_loss, jnp.zeros(20), (jnp.asarray(a), jnp.asarray(b)),
                         solver=solver, bounds=(0.0, None), throw=False)
    with pytest.raises(TypeError, match="hessian_block"):
        ProjectedNewtonCG(hessian_block=np.eye(3))
