"""jaxopt2.ot: Sinkhorn and Sinkhorn-Newton-Sparse against a long float64 Sinkhorn in NumPy, the
exact LP as ε → 0, finite differences and unrolled Sinkhorn; vmap, dtypes, input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import jaxopt2
from jaxopt2 import ot

SOLVERS = {"sinkhorn": ot.sinkhorn, "sns": ot.sinkhorn_newton_sparse}


def _problem(n=7, m=9, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(size=(n, 2)), rng.normal(size=(m, 2))
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    a, b = rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, m)
    return cost / cost.mean(), a / a.sum(), b / b.sum()


def _reference_plan(cost, a, b, eps, steps=5_000):
    """Log-domain Sinkhorn in NumPy float64, run long."""
    u, v = np.zeros(len(a)), np.zeros(len(b))
    cs = cost / eps
    for _ in range(steps):
        v = np.log(b) - logsumexp(u[:, None] - cs, axis=0)
        u = np.log(a) - logsumexp(v[None, :] - cs, axis=1)
    return np.exp(u[:, None] + v[None, :] - cs)


def _errors(out, a, b):
    """Both marginal errors, recomputed in float64 NumPy from the returned potentials."""
    f, g = np.asarray(out.f, np.float64), np.asarray(out.g, np.float64)
    cost, eps = np.asarray(out.cost, np.float64), float(out.epsilon)
    P = np.exp((f[:, None] + g[None, :] - cost) / eps)
    return np.abs(P.sum(1) - a).sum(), np.abs(P.sum(0) - b).sum()


@pytest.mark.float64
@pytest.mark.parametrize("name", [
    pytest.param("sinkhorn", marks=pytest.mark.slow),  # sns runs Sinkhorn's loop too
    "sns"])
def test_matches_long_reference(name):
    cost, a, b = _problem()
    eps = 0.05
    out = jax.jit(lambda C, a, b: SOLVERS[name](C, a, b, eps, rtol=1e-10))(cost, a, b)
    assert out.status == jaxopt2.RESULTS.successful
    assert out.f.dtype == jnp.float64
    ref = _reference_plan(cost, a, b, eps)
    np.testing.assert_allclose(out.plan, ref, atol=1e-9)
    assert max(_errors(out, a, b)) <= 1e-10
    np.testing.assert_allclose(out.transport_cost, np.sum(cost * ref), rtol=1e-8)
    # the dual value equals the primal value <C, P> + ε Σ P(log P − 1) at the solution
    primal = np.sum(cost * ref) + eps * np.sum(ref * (np.log(ref) - 1))
    np.testing.assert_allclose(out.regularized_cost, primal, rtol=1e-8)
    np.testing.assert_allclose(jnp.sum(out.f), jnp.sum(out.g), atol=1e-10)  # normalisation
    if name == "sns":
        assert out.stats["num_newton_steps"] > 0


@pytest.mark.parametrize("name", ["sinkhorn", pytest.param("sns", marks=pytest.mark.slow)])
def test_float32_meets_tolerance(name):
    cost, a, b = (np.float32(x) for x in _problem(12, 10, seed=1))
    out = jax.jit(lambda C, a, b: SOLVERS[name](C, a, b, 0.02, rtol=1e-4))(cost, a, b)
    assert out.f.dtype == jnp.float32 and out.plan.dtype == jnp.float32
    assert out.status == jaxopt2.RESULTS.successful
    row, col = _errors(out, a.astype(np.float64), b.astype(np.float64))
    assert row <= 2e-4 and col <= 2e-4, (row, col)  # the float32 rounding of P on top
    assert np.all(np.asarray(out.marginal_errors) <= 1e-4)


def test_max_steps_is_reported():
    cost, a, b = _problem()
    out = jax.jit(lambda C: ot.sinkhorn(C, a, b, 1e-3, max_steps=3, throw=False))(cost)
    assert out.status == jaxopt2.RESULTS.max_steps_reached
    with pytest.raises(Exception, match="max_steps_reached"):
        jax.jit(lambda C: ot.sinkhorn(C, a, b, 1e-3, max_steps=3).f)(cost).block_until_ready()


@pytest.mark.slow
@pytest.mark.float64
def test_small_epsilon_approaches_the_linear_program():
    from scipy.optimize import linprog

    cost, a, b = _problem(5, 6, seed=2)
    n, m = cost.shape
    A_eq = np.vstack([np.kron(np.eye(n), np.ones(m)), np.kron(np.ones(n), np.eye(m))])
    lp = linprog(cost.ravel(), A_eq=A_eq, b_eq=np.concatenate([a, b]), bounds=(0, None))
    gaps = []
    for eps in (1e-2, 1e-3):
        out = ot.sinkhorn_newton_sparse(cost, a, b, eps, rtol=1e-9)
        gaps.append(float(out.transport_cost) - lp.fun)
    # <C, P_ε> − OT₀ ≥ 0 and shrinks with ε (at worst like ε log(nm))
    assert gaps[0] >= -1e-9 and gaps[1] >= -1e-9
    assert gaps[1] <= 1e-3 * np.log(n * m) and gaps[1] < gaps[0]
    np.testing.assert_allclose(np.asarray(out.plan), lp.x.reshape(n, m), atol=2e-2)


@pytest.mark.slow
@pytest.mark.float64
@pytest.mark.parametrize("name", SOLVERS)
def test_gradients_match_finite_differences(name):
    cost, a, b = _problem(6, 5, seed=3)
    eps = 0.1
    rng = np.random.default_rng(4)
    dC = rng.normal(size=cost.shape)
    da = rng.normal(size=a.shape)
    da -= da.mean()  # keep Σa fixed
    db = rng.normal(size=b.shape)
    db -= db.mean()

    @jax.jit
    def outputs(C, aa, bb, e):
        out = SOLVERS[name](C, aa, bb, e, rtol=1e-12)
        return out.transport_cost, out.regularized_cost, out.f, out.plan

    primal, tangent = jax.jit(lambda *p: jax.jvp(outputs, p, (dC, da, db, 0.3)))(
        cost, a, b, eps)
    h = 1e-6
    plus = outputs(cost + h * dC, a + h * da, b + h * db, eps + 0.3 * h)
    minus = outputs(cost - h * dC, a - h * da, b - h * db, eps - 0.3 * h)
    for t, p, q in zip(tangent, plus, minus, strict=True):
        np.testing.assert_allclose(t, (np.asarray(p) - np.asarray(q)) / (2 * h), atol=1e-6,
                                   rtol=1e-5)
    # reverse mode: the envelope theorem gives ∂(regularized cost)/∂C = P exactly
    grad_c = jax.jit(jax.grad(lambda C: outputs(C, a, b, eps)[1]))(cost)
    np.testing.assert_allclose(grad_c, primal[3], atol=1e-10)


@pytest.mark.slow
@pytest.mark.float64
def test_gradient_matches_unrolled_sinkhorn():
    cost, a, b = _problem(6, 7, seed=5)
    eps = 0.05

    def unrolled(C):
        def body(_, uv):
            u, v = uv
            v = jnp.log(b) - jax.nn.logsumexp(u[:, None] - C / eps, axis=0)
            u = jnp.log(a) - jax.nn.logsumexp(v[None, :] - C / eps, axis=1)
            return u, v
        u, v = jax.lax.fori_loop(0, 3000, body, (jnp.zeros(6), jnp.zeros(7)))
        return jnp.sum(C * jnp.exp(u[:, None] + v[None, :] - C / eps))

    ours = jax.jit(jax.grad(lambda C: ot.sinkhorn_newton_sparse(C, a, b, eps, rtol=1e-12)
                            .transport_cost))(cost)
    np.testing.assert_allclose(ours, jax.grad(unrolled)(cost), atol=1e-8)


def test_vmap_one_bad_problem_does_not_spoil_the_others():
    problems = [_problem(6, 6, seed=s) for s in range(3)]
    costs = np.stack([p[0] for p in problems]).astype(np.float32)
    a = np.stack([p[1] for p in problems]).astype(np.float32)
    costs[1, 2, 3] = np.nan
    solver = ot.sinkhorn_newton_sparse  # its two stages: Sinkhorn's loop and Newton's
    out = jax.jit(jax.vmap(lambda C, aa: solver(C, aa, None, 0.05, rtol=1e-4)))(costs, a)
    assert list(out.status.name) == ["successful", "nonfinite", "successful"]
    assert bool(jnp.all(jnp.isnan(out.f[1])))
    for i in (0, 2):  # the batch's good problems are solved as if alone
        ref = _reference_plan(costs[i].astype(np.float64), a[i].astype(np.float64),
                              np.full(6, 1 / 6), 0.05, steps=2000)
        np.testing.assert_allclose(np.asarray(out.plan[i]), ref, atol=1e-5)
    # per-problem derivatives through vmap: finite for the good problems, NaN for the bad
    grads = jax.jit(jax.vmap(jax.grad(lambda C, aa: solver(
        C, aa, None, 0.05, rtol=1e-4, throw=False).transport_cost)))(costs, a)
    assert bool(jnp.all(jnp.isfinite(grads[0]))) and bool(jnp.all(jnp.isnan(grads[1])))


@pytest.mark.parametrize("kwargs, match", [
    (dict(cost=np.ones(4)), "2-D"),
    (dict(a=np.ones(3) / 3), r"`a` must have shape \(4,\)"),
    (dict(b=np.ones(6) / 6), r"`b` must have shape \(5,\)"),
    (dict(a=np.array([0.5, 0.6, -0.1, 0.0])), "strictly positive"),
    (dict(a=np.ones(4)), "same total mass.*a / a.sum"),
    (dict(cost=np.full((4, 5), np.nan)), "NaN or infinite"),
    (dict(epsilon=0.0), "positive and finite"),
    (dict(epsilon=np.ones(2)), "scalar"),
])
def test_bad_inputs_say_what_to_fix(kwargs, match):
    args = dict(cost=np.ones((4, 5)), a=None, b=None, epsilon=0.1) | kwargs
    for solver in SOLVERS.values():
        with pytest.raises(ValueError, match=match):
            solver(**args)
    with pytest.raises(ValueError, match="sparsity"):
        ot.sinkhorn_newton_sparse(np.ones((4, 5)), sparsity=0)


@pytest.mark.float64
def test_overrelaxed_sinkhorn_converges_to_plain_sinkhorns_plan():
    cost, a, b = _problem(20, 15, seed=6)
    eps = 0.01
    ref = _reference_plan(cost, a, b, eps, steps=10_000)
    runs = {}
    for relaxation in ("adaptive", 1.0, 1.6):
        out = jax.jit(lambda C, r=relaxation: ot.sinkhorn(C, a, b, eps, rtol=1e-10,
                                                          relaxation=r))(cost)
        assert out.status == jaxopt2.RESULTS.successful, relaxation
        assert max(_errors(out, a, b)) <= 1e-10  # both marginals, at the same potentials
        np.testing.assert_allclose(out.plan, ref, atol=1e-9)
        runs[relaxation] = int(out.stats["num_steps"])
    # over-relaxation's point: far fewer iterations than plain Sinkhorn at small ε
    assert runs["adaptive"] < runs[1.0] / 2, runs


def test_vmap_adapts_relaxation_per_problem():
    # each problem of a batch adapts its own ω: the batch equals a loop over problems
    problems = [_problem(8, 8, seed=s) for s in range(3)]
    costs = np.stack([p[0] for p in problems]).astype(np.float32)
    eps = np.float32([0.02, 0.05, 0.2])
    solve = jax.jit(lambda C, e: ot.sinkhorn(C, None, None, e, rtol=1e-4, throw=False))
    batch = jax.vmap(solve)(costs, eps)
    for i in range(3):
        one = solve(costs[i], eps[i])
        assert int(batch.stats["num_steps"][i]) == int(one.stats["num_steps"])
        # (float32: vmap's fused kernels round differently)
        np.testing.assert_allclose(batch.plan[i], one.plan, rtol=1e-4, atol=1e-6)
    assert list(batch.status.name) == ["successful"] * 3


def test_sparsify_keeps_the_largest_entries():
    from jaxopt2.ot._sns import sparsify

    rng = np.random.default_rng(7)
    P = np.exp(rng.normal(scale=3.0, size=(20, 30)))
    size = 57
    rows, cols, keep = jax.jit(sparsify, static_argnums=1)(jnp.asarray(P), size)
    kept = {(int(i), int(j)) for i, j, k in zip(rows, cols, keep, strict=True) if k}
    order = np.argsort(P.ravel())[::-1]
    largest = {divmod(int(t), 30) for t in order[:size]}
    # the threshold's bisection may stop just above the size-th largest: a prefix of them
    assert kept <= largest and len(kept) >= size - 3
    # entries below e^-60 of the largest are never kept: fewer than `size`, padding masked
    Q = np.full((6, 5), 1e-40)
    Q[0, 0], Q[2, 3] = 1.0, 0.5
    rows, cols, keep = sparsify(jnp.asarray(Q), 10)
    assert int(keep.sum()) == 2
    assert {(int(i), int(j)) for i, j, k in zip(rows, cols, keep, strict=True) if k} == {
        (0, 0), (2, 3)}


@pytest.mark.parametrize("relaxation", [0.0, 2.0, -1.0, "fast", True])
def test_bad_relaxation_says_what_to_fix(relaxation):
    for solver in SOLVERS.values():
        with pytest.raises(ValueError, match="relaxation"):
            solver(np.ones((4, 5)), relaxation=relaxation)
