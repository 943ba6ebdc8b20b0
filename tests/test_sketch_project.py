"""Sketch-and-project (randomized block Kaczmarz, Gaussian sketch-and-project) against dense
references: `jnp.linalg.solve` for square systems, `pinv` for least-norm solutions and
projections of x₀, the exact one-step expectation E‖x₁ − x*‖² = e₀ᵀ(I − E[Z])e₀ (E[Z]
enumerated over all row blocks) and the Gower–Richtárik rate, operators on pytrees, jit/vmap,
dtypes, and the failure modes. Fixed seeds throughout (float64 from conftest).
"""

import itertools
import re
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxopt2.sketch import SketchAndProjectInfo, sketch_and_project
from jaxopt2.sketch._sketch_and_project import _min_norm_step

pytestmark = pytest.mark.float64  # written for float64 tolerances

SKETCHES = ("rows", "gaussian")
MAX_STEPS = 2000
# The tests are dominated by compile time: `run` always passes x0 and rtol as arrays and the
# same step bound, so tests on the same shapes and sketch share one compiled loop.
solve = eqx.filter_jit(sketch_and_project)


def run(A, b, key, *, x0=None, rtol=1e-12, max_steps=MAX_STEPS, **kwargs):
    if x0 is None:
        x0 = jnp.zeros(A.shape[1], A.dtype)
    return solve(A, b, key, x0=x0, rtol=jnp.asarray(rtol), max_steps=max_steps, **kwargs)


def gaussian(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


def conditioned(m, n, smin, smax, seed):
    """An m × n matrix with singular values spread evenly over [smin, smax]."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    U = np.linalg.qr(rng.normal(size=(m, r)))[0]
    V = np.linalg.qr(rng.normal(size=(n, r)))[0]
    return jnp.asarray(U @ np.diag(np.linspace(smin, smax, r)) @ V.T)


def projection(A, b, x0):
    """The closest solution of A x = b to x₀: x₀ + A⁺(b − A x₀)."""
    return x0 + jnp.linalg.pinv(A) @ (b - A @ x0)


def assert_close(x, ref, rel):
    np.testing.assert_allclose(x, ref, atol=rel * float(jnp.linalg.norm(ref)), rtol=0)


# Shared shapes: SQUARE (12 × 12, k = 4), WIDE (6 × 15, k = 2), TALL (30 × 8, k = 4).


@pytest.mark.parametrize("sketch", SKETCHES)
def test_square_matches_solve(sketch):
    A = conditioned(12, 12, 1.0, 3.0, seed=0)
    b = gaussian(12, 1)
    x, info = run(A, b, jax.random.key(0), sketch_size=4, sketch=sketch)
    assert isinstance(info, SketchAndProjectInfo)
    assert bool(info.converged) and 1 < int(info.num_steps) < MAX_STEPS
    assert float(info.residual_norm) <= 1e-12 * float(jnp.linalg.norm(b))
    np.testing.assert_allclose(info.residual_norm, jnp.linalg.norm(A @ x - b), rtol=1e-6)
    assert_close(x, jnp.linalg.solve(A, b), 1e-10)


def test_square_row_norm_probabilities():
    # Strohmer–Vershynin sampling ∝ ‖aᵢ‖² on a system with unequal row norms. (Much more
    # unequal norms make it slow: rows with tiny norms are then almost never drawn.)
    A = jnp.diag(jnp.geomspace(0.3, 3.0, 12)) @ conditioned(12, 12, 1.0, 2.0, seed=2)
    b = gaussian(12, 3)
    x, info = run(A, b, jax.random.key(1), sketch_size=4, row_probs=jnp.sum(A**2, axis=1))
    assert bool(info.converged)
    assert_close(x, jnp.linalg.solve(A, b), 1e-9)


@pytest.mark.parametrize("sketch", SKETCHES)
def test_underdetermined_least_norm_and_projection(sketch):
    A = gaussian((6, 15), 4)
    b = gaussian(6, 5)
    least_norm = jnp.linalg.pinv(A) @ b
    x, info = run(A, b, jax.random.key(2), sketch_size=2, sketch=sketch)
    assert bool(info.converged)
    assert_close(x, least_norm, 1e-9)

    x0 = gaussian(15, 6)
    target = projection(A, b, x0)
    # The two answers differ by far more than the tolerance: the test tells them apart.
    assert float(jnp.linalg.norm(target - least_norm)) > 1.0
    x, info = run(A, b, jax.random.key(3), sketch_size=2, sketch=sketch, x0=x0)
    assert bool(info.converged)
    assert_close(x, target, 1e-9)


@pytest.mark.parametrize("sketch", SKETCHES)
def test_overdetermined_consistent_recovers_solution(sketch):
    A = gaussian((30, 8), 7)
    x_true = gaussian(8, 8)
    b = A @ x_true
    x, info = run(A, b, jax.random.key(4), sketch_size=4, sketch=sketch)
    assert bool(info.converged)
    assert_close(x, x_true, 1e-9)
    np.testing.assert_allclose(x, jnp.linalg.lstsq(A, b)[0], atol=1e-9)


@pytest.mark.parametrize("sketch", SKETCHES)
def test_rank_deficient_blocks_stay_finite(sketch):
    # Rank 3 with a zero row and a repeated row: every block of 4 rows is rank deficient, yet
    # the projections are well defined and the iteration still reaches the least-norm
    # solution (which `solve` could not give: A A^T is singular).
    rng = np.random.default_rng(9)
    A = rng.normal(size=(12, 3)) @ rng.normal(size=(3, 12))
    A[3] = 0.0
    A[5] = A[1]
    A = jnp.asarray(A)
    b = A @ gaussian(12, 10)
    x, info = run(A, b, jax.random.key(5), sketch_size=4, sketch=sketch, rtol=1e-11)
    assert bool(jnp.all(jnp.isfinite(x)))
    assert bool(info.converged)
    assert_close(x, jnp.linalg.pinv(A) @ b, 1e-8)


def test_min_norm_step_is_pinv_solution():
    # d = (SᵀA)⁺ Sᵀr for blocks of full rank, rank deficient (dependent and zero rows), and
    # zero: always finite, always the least-norm solution of the (consistent) block system.
    rng = np.random.default_rng(31)
    full = rng.normal(size=(3, 7))
    deficient = np.stack([full[0], 2 * full[0], np.zeros(7), full[1]])
    for SA in [full, deficient, np.zeros((3, 7)), full.T]:
        Sr = SA @ rng.normal(size=SA.shape[1])
        d = _min_norm_step(jnp.asarray(SA), jnp.asarray(Sr))
        assert bool(jnp.all(jnp.isfinite(d)))
        np.testing.assert_allclose(d, np.linalg.pinv(SA) @ Sr, atol=1e-12)


@pytest.mark.parametrize(("sketch", "shape"), [("rows", (6, 15)), ("gaussian", (6, 15)),
                                               ("gaussian", (30, 8))])
def test_full_block_is_one_exact_projection(sketch, shape):
    m, n = shape
    A = gaussian(shape, 11)
    b = A @ gaussian(n, 12)
    x0 = gaussian(n, 13)
    x, info = run(A, b, jax.random.key(6), sketch_size=m, sketch=sketch, x0=x0, rtol=1e-10)
    assert int(info.num_steps) == 1 and bool(info.converged)
    assert_close(x, projection(A, b, x0), 1e-10)


def _pytree_operator(A_dense, in_example, out_example):
    """A_dense acting between the flattenings of two pytrees, as a matrix-free operator."""
    _, unravel_out = ravel_pytree(out_example)

    def fn(x):
        return unravel_out(A_dense @ ravel_pytree(x)[0])

    structure = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                       in_example)
    return lx.FunctionLinearOperator(fn, structure)


@pytest.mark.parametrize("sketch", SKETCHES)
def test_operator_matches_dense(sketch):
    m, n = 6, 15
    A = gaussian((m, n), 14)
    b = gaussian(m, 15)
    x0 = gaussian(n, 16)
    key = jax.random.key(7)
    kwargs = dict(sketch_size=2, sketch=sketch)
    x_dense, info_dense = run(A, b, key, x0=x0, **kwargs)
    assert bool(info_dense.converged)
    assert_close(x_dense, projection(A, b, x0), 1e-9)

    # Same key, same sketches: every path must reproduce the dense iterates.
    x_mat, info_mat = run(lx.MatrixLinearOperator(A), b, key, x0=x0, **kwargs)
    np.testing.assert_allclose(x_mat, x_dense, rtol=0, atol=1e-12)
    assert int(info_mat.num_steps) == int(info_dense.num_steps)

    in_example = {"u": jnp.zeros(3), "w": jnp.zeros((3, 4))}
    out_example = {"p": jnp.zeros(2), "q": jnp.zeros(4)}
    op = _pytree_operator(A, in_example, out_example)
    _, unravel_in = ravel_pytree(in_example)
    _, unravel_out = ravel_pytree(out_example)
    x_tree, info_tree = run(op, unravel_out(b), key, x0=unravel_in(x0), **kwargs)
    assert jax.tree_util.tree_structure(x_tree) == jax.tree_util.tree_structure(in_example)
    assert x_tree["w"].shape == (3, 4)
    np.testing.assert_allclose(ravel_pytree(x_tree)[0], x_dense, rtol=0, atol=1e-10)
    assert int(info_tree.num_steps) == int(info_dense.num_steps)
    np.testing.assert_allclose(info_tree.residual_norm, info_dense.residual_norm, atol=1e-12)


def _expected_projection(A, k, probs=None):
    """E[Z], Z = A_Sᵀ(A_S A_Sᵀ)⁺A_S, enumerated over all k-row blocks S. Blocks are uniform,
    or (for k = 2) drawn sequentially without replacement ∝ probs:
    P({i, j}) = pᵢpⱼ/(1 − pᵢ) + pⱼpᵢ/(1 − pⱼ)."""
    m, n = A.shape
    total = np.zeros((n, n))
    weights = 0.0
    for block in itertools.combinations(range(m), k):
        if probs is None:
            w = 1.0
        else:
            i, j = block
            w = probs[i] * probs[j] * (1 / (1 - probs[i]) + 1 / (1 - probs[j]))
        rows = A[list(block)]
        total += w * np.linalg.pinv(rows) @ rows
        weights += w
    return total / weights


@pytest.mark.parametrize("weighted", [False, True])
def test_block_kaczmarz_expected_rate(weighted):
    m, n, k, steps, seeds = 10, 4, 2, 8, 2000
    rng = np.random.default_rng(17)
    A = np.diag(np.geomspace(0.3, 3.0, m)) @ rng.normal(size=(m, n))
    x_true = rng.normal(size=n)
    b = A @ x_true
    norm_probs = np.sum(A**2, axis=1) / np.sum(A**2)
    EZ_uniform = _expected_projection(A, k)
    EZ_weighted = _expected_projection(A, k, norm_probs)
    EZ, EZ_other = (EZ_weighted, EZ_uniform) if weighted else (EZ_uniform, EZ_weighted)
    rate = 1 - np.linalg.eigvalsh(EZ).min()  # Gower–Richtárik ρ; A has full column rank
    # Start along the direction where the two sampling schemes differ most, so the one-step
    # check below can tell them apart.
    gaps, directions = np.linalg.eigh(EZ_uniform - EZ_weighted)
    e0 = 2.0 * directions[:, np.argmax(np.abs(gaps))]
    x0 = x_true + e0

    A_, b_ = jnp.asarray(A), jnp.asarray(b)
    row_probs = jnp.asarray(norm_probs) if weighted else None

    @jax.jit
    @jax.vmap
    def errors(key):
        # One projection per call (max_steps=1), chained: the iterates of a single run.
        def step(x, key):
            x, _ = sketch_and_project(A_, b_, key, sketch_size=k, x0=x, max_steps=1, rtol=0.0,
                                      row_probs=row_probs)
            return x, jnp.linalg.norm(x - x_true)

        _, errs = jax.lax.scan(step, jnp.asarray(x0), jax.random.split(key, steps))
        return errs

    errs = np.asarray(errors(jax.random.split(jax.random.key(8), seeds)))
    errs = np.concatenate([np.full((seeds, 1), np.linalg.norm(e0)), errs], axis=1)
    # Each step is an orthogonal projection onto a set containing x*: never further away.
    assert np.all(np.diff(errs, axis=1) <= 1e-12)
    ratios = errs**2 / errs[:, :1] ** 2
    mean, sem = ratios.mean(0), ratios.std(0) / np.sqrt(seeds)

    # One step from x₀: E‖x₁ − x*‖² = e₀ᵀ(I − E[Z])e₀ exactly (Z is a projection).
    one_step = e0 @ (e0 - EZ @ e0) / (e0 @ e0)
    other = e0 @ (e0 - EZ_other @ e0) / (e0 @ e0)
    assert abs(mean[1] - one_step) <= 5 * sem[1]
    assert abs(other - one_step) > 20 * sem[1]  # the check sees the sampling distribution
    # Linear convergence in expectation, no slower than the Gower–Richtárik bound ρᵗ.
    assert np.all(mean[1:] <= rate ** np.arange(1, steps + 1) + 5 * sem[1:])
    assert mean[-1] < 0.5 * mean[steps // 2]


@pytest.mark.parametrize("projection", ["svd", "gram"])
def test_jit_vmap_over_rhs_and_keys(projection):
    A = gaussian((6, 15), 18)
    B = gaussian((3, 6), 19)
    # Lanes 0–2: three right-hand sides, one key; lanes 2–4: one right-hand side, three keys.
    rhs = B[jnp.array([0, 1, 2, 2, 2])]
    keys = jax.random.split(jax.random.key(9), 3)
    keys = jnp.concatenate([keys[:1], keys[:1], keys])
    f = jax.jit(sketch_and_project,
                static_argnames=("sketch_size", "sketch", "max_steps", "projection"))
    kwargs = dict(sketch_size=2, max_steps=MAX_STEPS, x0=jnp.zeros(15), rtol=jnp.asarray(1e-12),
                  projection=projection)

    xs, infos = jax.vmap(lambda b, key: f(A, b, key, **kwargs))(rhs, keys)
    assert xs.shape == (5, 15) and infos.converged.shape == (5,)
    assert bool(jnp.all(infos.converged))
    # Different sketches, different paths, same limit.
    assert len(set(np.asarray(infos.num_steps[2:]).tolist())) > 1
    for i in range(5):
        x, info = run(A, rhs[i], keys[i], sketch_size=2, projection=projection)  # unbatched
        np.testing.assert_allclose(xs[i], x, rtol=0, atol=1e-11)
        assert int(infos.num_steps[i]) == int(info.num_steps)
        assert_close(xs[i], jnp.linalg.pinv(A) @ rhs[i], 1e-9)


@pytest.mark.parametrize("projection", ["svd", "gram"])
@pytest.mark.parametrize("sketch", SKETCHES)
def test_float32_kept_with_default_rtol(sketch, projection):
    A = conditioned(12, 12, 1.0, 3.0, seed=20).astype(jnp.float32)
    b = gaussian(12, 21).astype(jnp.float32)
    x, info = solve(A, b, jax.random.key(11), sketch_size=4, sketch=sketch,
                    projection=projection)
    assert x.dtype == jnp.float32 and info.residual_norm.dtype == jnp.float32
    assert bool(info.converged)
    # Default rtol = √eps(float32) ≈ 3.5e-4, on the residual.
    assert float(info.residual_norm) <= np.sqrt(np.finfo(np.float32).eps) * np.linalg.norm(b)
    ref = np.linalg.solve(np.asarray(A, np.float64), np.asarray(b, np.float64))
    assert_close(x, ref, 3e-3)


def test_reports_non_convergence():
    A = gaussian((30, 8), 24)
    b = A @ gaussian(8, 25)
    key = jax.random.key(13)
    x, info = run(A, b, key, sketch_size=4, max_steps=3)
    assert int(info.num_steps) == 3 and not bool(info.converged)
    np.testing.assert_allclose(info.residual_norm, jnp.linalg.norm(A @ x - b), rtol=1e-10)
    assert float(info.residual_norm) > 1e-12 * float(jnp.linalg.norm(b))

    x0 = gaussian(8, 26)
    x, info = run(A, b, key, sketch_size=4, x0=x0, max_steps=0)
    assert int(info.num_steps) == 0 and not bool(info.converged)
    np.testing.assert_array_equal(x, x0)

    # An exact starting point needs no step and counts as converged.
    x, info = run(A, b, key, sketch_size=4, x0=jnp.linalg.lstsq(A, b)[0], max_steps=0,
                  rtol=1e-10)
    assert int(info.num_steps) == 0 and bool(info.converged)


@pytest.mark.parametrize("sketch", SKETCHES)
def test_non_finite_input_is_not_converged(sketch):
    A = gaussian((6, 15), 27)
    b = gaussian(6, 28)
    bad_b = b.at[2].set(jnp.nan)
    bad_A = A.at[1, 3].set(jnp.inf)
    for A_, b_ in [(A, bad_b), (bad_A, b)]:
        x, info = run(A_, b_, jax.random.key(14), sketch_size=2, sketch=sketch)
        assert not bool(info.converged)
        assert int(info.num_steps) < MAX_STEPS  # stopped at once, not run to the bound
    if sketch == "rows":
        # A matrix-free operator with an infinite entry: x₀ = 0 gives inf·0 = NaN, again.
        op = lx.FunctionLinearOperator(lambda v: bad_A @ v, jax.ShapeDtypeStruct((15,),
                                                                                  A.dtype))
        _, info = solve(op, b, jax.random.key(14), sketch_size=2, max_steps=MAX_STEPS)
        assert not bool(info.converged)


@pytest.mark.parametrize("projection", ["cholesky", "gram"])
@pytest.mark.parametrize("sketch", SKETCHES)
def test_gram_projections_match_references(sketch, projection):
    """projection="cholesky" (the shifted Gram matrix's factor instead of an SVD) and "gram"
    (A Aᵀ formed once, blocks gathered, the residual updated) reach the same solutions: the
    solve of a square system, the least-norm solution of a wide one; and a block with a zero
    row (a vanishing equation, consistent) stays finite."""
    A = conditioned(12, 12, 1.0, 3.0, seed=0)
    b = gaussian(12, 1)
    x, info = run(A, b, jax.random.key(0), sketch_size=4, sketch=sketch, projection=projection)
    assert bool(info.converged)
    assert_close(x, jnp.linalg.solve(A, b), 1e-10)
    W = conditioned(6, 15, 1.0, 3.0, seed=2)
    bw = gaussian(6, 3)
    x, info = run(W, bw, jax.random.key(1), sketch_size=2, sketch=sketch, projection=projection)
    assert bool(info.converged)
    assert_close(x, jnp.linalg.pinv(W) @ bw, 1e-9)
    Z = A.at[3].set(0.0)
    bz = Z @ gaussian(12, 4)
    x, info = run(Z, bz, jax.random.key(2), sketch_size=4, sketch=sketch, projection=projection)
    assert bool(info.converged) and bool(jnp.all(jnp.isfinite(x)))
    assert_close(x, jnp.linalg.pinv(Z) @ bz, 1e-9)


@pytest.mark.parametrize("sketch", SKETCHES)
def test_gram_projection_is_the_cholesky_step(sketch):
    """projection="gram" takes the same steps as "cholesky" from the same key: equal iterates
    after 5 steps, and the returned residual is the true one; non-finite data are reported
    as not converged."""
    A = conditioned(12, 12, 1.0, 3.0, seed=0)
    b = gaussian(12, 1)
    x_c, _ = run(A, b, jax.random.key(5), sketch_size=4, sketch=sketch, max_steps=5,
                 projection="cholesky")
    x_g, info = run(A, b, jax.random.key(5), sketch_size=4, sketch=sketch, max_steps=5,
                    projection="gram")
    assert int(info.num_steps) == 5
    assert_close(x_g, x_c, 1e-12)
    assert float(info.residual_norm) == pytest.approx(float(jnp.linalg.norm(A @ x_g - b)),
                                                      rel=1e-12)
    x, info = run(A.at[1, 3].set(jnp.inf), b, jax.random.key(3), sketch_size=4, sketch=sketch,
                  projection="gram")
    assert not bool(info.converged)
    assert int(info.num_steps) < MAX_STEPS
    # vmapped beside a NaN right-hand side: the good lane is the unbatched solve
    xs, infos = jax.vmap(lambda rhs: run(A, rhs, jax.random.key(4), sketch_size=4,
                                         sketch=sketch, projection="gram"))(
        jnp.stack([b, b.at[2].set(jnp.nan)]))
    x, info = run(A, b, jax.random.key(4), sketch_size=4, sketch=sketch, projection="gram")
    assert bool(infos.converged[0]) and not bool(infos.converged[1])
    assert int(infos.num_steps[0]) == int(info.num_steps)
    assert_close(xs[0], x, 1e-11)


def test_bad_inputs_raise():
    A = gaussian((6, 15), 29)
    b = gaussian(6, 30)
    key = jax.random.key(15)
    op = _pytree_operator(A, {"u": jnp.zeros(15)}, {"p": jnp.zeros(2), "q": jnp.zeros(4)})
    cases = [
        (dict(A=A[0]), "2-D"),
        (dict(b=jnp.zeros(7)), r"shape \(6,\)"),
        (dict(b=jnp.zeros((6, 1))), r"shape \(6,\)"),
        (dict(x0=jnp.zeros(6)), r"shape \(15,\)"),
        (dict(sketch_size=0), r"\[1, m\] with m = 6"),
        (dict(sketch_size=7), r"\[1, m\] with m = 6"),
        (dict(sketch_size=2.0), "sketch_size"),
        (dict(sketch_size=True), "sketch_size"),
        (dict(sketch="srht"), "sketch"),
        (dict(max_steps=-1), "max_steps"),
        (dict(projection="qr"), "projection"),
        (dict(A=op, projection="gram",
              b={"p": jnp.zeros(2), "q": jnp.zeros(4)}), "needs A as an array"),
        (dict(row_probs=jnp.ones(5)), r"row_probs.*\(6,\)"),
        (dict(row_probs=jnp.ones(6), sketch="gaussian"), "row_probs"),
        (dict(A=A.astype(jnp.complex128)), "real"),
        (dict(b={"p": b}), "flat array"),
        (dict(A=op), "output structure"),  # b is a flat vector, the operator wants a dict
        (dict(A=op, b={"p": jnp.zeros(2), "q": jnp.zeros(4)}, x0=jnp.zeros(15)),
         "input structure"),
    ]
    for overrides, match in cases:
        args = dict(A=A, b=b, key=key, sketch_size=2)
        args.update(overrides)
        with pytest.raises(ValueError, match=match):
            sketch_and_project(args.pop("A"), args.pop("b"), args.pop("key"), **args)


def test_docstring_example_runs():
    code = re.search(r"```python\n(.*?)```", sketch_and_project.__doc__, re.S).group(1)
    namespace = {}
    exec(textwrap.dedent(code), namespace)
    # Float64 here (conftest), so the default rtol is √eps(float64) ≈ 1.5e-8, on the residual,
    # and not trivially loose: it takes many projections.
    info, b = namespace["info"], namespace["b"]
    assert float(info.residual_norm) <= np.sqrt(np.finfo(np.float64).eps) * np.linalg.norm(b)
    assert int(info.num_steps) > 20
