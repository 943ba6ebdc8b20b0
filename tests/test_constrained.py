"""jaxopt2.minimize_constrained: AugmentedLagrangian, SketchedSQP and DenseSQP against the
Hock–Schittkowski optima, implicit derivatives against finite differences, vmap, statuses
and input checks. The whole HS set is `slow`; the default run solves a handful."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2.constrained import DenseSQP, SketchedSQP

from .hock_schittkowski import EQUALITY_ONLY, PROBLEMS


def _solve(number, solver, dtype=jnp.float64, **kw):
    p = PROBLEMS[number]
    bounds = None
    if p.bounds is not None:
        bounds = (jnp.asarray(p.bounds[0], dtype), jnp.asarray(p.bounds[1], dtype))
    return jaxopt2.minimize_constrained(p.fun, jnp.asarray(p.x0, dtype), eq=p.eq, ineq=p.ineq,
                                        bounds=bounds, solver=solver, throw=False, **kw)


def _check_optimum(number, sol, rtol):
    p = PROBLEMS[number]
    assert jaxopt2.status_name(sol.status) == "successful", (number, sol.stats)
    assert abs(float(sol.value) - p.f_star) <= rtol * max(1.0, abs(p.f_star)), (
        number, float(sol.value), p.f_star)
    if p.x_star is not None:
        # The same minimizer, loosely: f pins x down only to |f − f*|^(1/6) on the degenerate
        # ones (HS 49's (x₅ − 1)⁶), and the published x* has 7 digits.
        np.testing.assert_allclose(np.asarray(sol.params), p.x_star, atol=2e-2,
                                   err_msg=f"HS{number}")


# ---------------------------------------------------------------------------------------------
# Hock–Schittkowski


@pytest.mark.float64
def test_augmented_lagrangian_hs_default():
    """HS 71: an equality, an inequality and bounds, nonconvex."""
    _check_optimum(71, _solve(71, jaxopt2.AugmentedLagrangian()), 1e-6)


@pytest.mark.float64
@pytest.mark.slow
@pytest.mark.parametrize("number", sorted(PROBLEMS))
def test_augmented_lagrangian_hs_all(number):
    _check_optimum(number, _solve(number, jaxopt2.AugmentedLagrangian()), 1e-6)


@pytest.mark.float64
@pytest.mark.parametrize("solver", [
    SketchedSQP(), pytest.param(DenseSQP(), marks=pytest.mark.slow),
    pytest.param(SketchedSQP(matrix_free=True, sketch_size=3), marks=pytest.mark.slow),
    pytest.param(SketchedSQP(sketch="gaussian"), marks=pytest.mark.slow),
    pytest.param(SketchedSQP(sketch="gaussian", precondition=False), marks=pytest.mark.slow)],
    ids=["sketched", "dense", "matrix_free", "gaussian", "unscaled"])
def test_sqp_hs_default(solver):
    """HS 40 (three nonlinear equalities, nonconvex), and the multipliers satisfy
    stationarity against jax.grad/jax.jacobian."""
    p = PROBLEMS[40]
    sol = _solve(40, solver)
    _check_optimum(40, sol, 1e-8)
    x, lam = sol.params, sol.multipliers["eq"]
    grad = jax.grad(p.fun)(x, None) + jax.jacobian(p.eq)(x, None).T @ lam
    assert float(jnp.max(jnp.abs(grad))) < 1e-7


@pytest.mark.float64
@pytest.mark.slow
@pytest.mark.parametrize("number", EQUALITY_ONLY)
def test_dense_sqp_hs_all(number):
    if number == 61:
        # From x0 = 0 the constraint Jacobian has rank 1 and the regularized first step leads
        # to another KKT point (f = -81.92); the published optimum is f* = -143.65.
        sol = _solve(number, DenseSQP())
        assert jaxopt2.status_name(sol.status) == "successful"
        assert float(sol.stats["kkt_stationarity"]) < 1e-6
        return
    _check_optimum(number, _solve(number, DenseSQP()), 1e-6)


# Degenerate minimizers (a Hessian singular at x* on the constraints' null space, in a
# direction no diagonal scaling isolates) make the KKT system singular at the solution, where
# the outer convergence is only linear, the adaptive accuracy θ = ‖r‖ asks for ever more
# digits, and sketch-and-project converges arbitrarily slowly. (HS 47 and 49 are degenerate
# too but solved since the KKT system is scaled.)
_SKETCH_HARD = (26, 46)


@pytest.mark.float64
@pytest.mark.slow
@pytest.mark.parametrize("number", [k for k in EQUALITY_ONLY if k not in _SKETCH_HARD])
def test_sketched_sqp_hs_all(number):
    sol = _solve(number, SketchedSQP())
    if number == 61:
        # As DenseSQP: from x0 = 0 the constraint Jacobian is rank-deficient and the steps
        # lead to the other KKT point (a local minimum, f = -81.92).
        assert jaxopt2.status_name(sol.status) == "successful"
        assert float(sol.stats["kkt_stationarity"]) < 1e-6
        return
    _check_optimum(number, sol, 1e-6)


@pytest.mark.float64
@pytest.mark.slow
@pytest.mark.parametrize("number", _SKETCH_HARD)
def test_sketched_sqp_degenerate_is_honest(number):
    """Where the sketched solves cannot reach their accuracy the status says so (no false
    success), and the point is still close to x* in f."""
    sol = _solve(number, SketchedSQP(), max_steps=60)
    assert jaxopt2.status_name(sol.status) != "successful"
    assert abs(float(sol.value) - PROBLEMS[number].f_star) < 1e-4


def test_float32_augmented_lagrangian():
    """float32 stays float32 and reaches f* to float32 accuracy, status honest."""
    sol = _solve(43, jaxopt2.AugmentedLagrangian(), dtype=jnp.float32)
    assert sol.params.dtype == jnp.float32 and sol.value.dtype == jnp.float32
    _check_optimum(43, sol, 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("number", [9, 14, 28, 42, 71, 100])
def test_float32_subset(number):
    # HS 9 and 100 failed before ρ shrank after noisy subproblems: at Birgin & Martínez's ρ₀
    # (7140 on HS 100) the subproblem gradients were float32 rounding noise.
    # The float32 tolerance allows violations of 1e-3, which move f by about |λ|·1e-3
    # (HS 14: f = 1.39177 against f* = 1.39346 at a violation of 1e-3).
    _check_optimum(number, _solve(number, jaxopt2.AugmentedLagrangian(), dtype=jnp.float32),
                   5e-3)


# ---------------------------------------------------------------------------------------------
# A parametrised problem: derivatives, vmap, statuses

def _fun(x, a):
    return jnp.sum((x - a["target"]) ** 2) + 0.1 * x[0] * x[1]


def _eq(x, a):
    return jnp.sum(x) - a["total"]


def _ineq(x, a):
    return x[:1] - x[1:2] - a["gap"]  # x0 − x1 ≤ gap, active


def _params(total=1.0):
    return {"target": jnp.array([2.0, 0.5, -1.0, 0.3]), "total": jnp.asarray(total),
            "gap": jnp.asarray(0.5)}


def _run(a, **kw):
    return jaxopt2.minimize_constrained(_fun, jnp.full(4, 0.25), a, eq=_eq, ineq=_ineq,
                                        bounds=(0.0, None), **kw)


@pytest.mark.float64
def test_kkt_and_derivatives_match_finite_differences():
    a = _params()
    sol = _run(a)
    x = sol.params
    assert float(x[2]) == 0.0  # the bound is active ...
    assert float(sol.multipliers["ineq"][0]) > 0  # ... and so is the inequality
    assert float(sol.multipliers["bounds"][2]) < 0
    stats = sol.stats
    assert max(float(stats[k]) for k in ("kkt_stationarity", "kkt_feasibility",
                                         "kkt_complementarity")) < 1e-7
    # Stationarity with the returned multipliers, against jax.grad.
    g = (jax.grad(_fun)(x, a) + sol.multipliers["eq"] * jnp.ones(4)
         + sol.multipliers["ineq"][0] * jnp.array([1.0, -1.0, 0, 0]) + sol.multipliers["bounds"])
    assert float(jnp.max(jnp.abs(g))) < 1e-7

    weights = jnp.array([1.0, -2.0, 0.5, 3.0])

    @jax.jit
    def loss(a):
        sol = _run(a)
        return weights @ sol.params + sol.multipliers["eq"]

    grads = jax.jit(jax.grad(loss))(a)
    h = 1e-5
    for name in ("total", "gap"):
        up = dict(a, **{name: a[name] + h})
        down = dict(a, **{name: a[name] - h})
        fd = (loss(up) - loss(down)) / (2 * h)
        np.testing.assert_allclose(grads[name], fd, rtol=1e-5, atol=1e-7, err_msg=name)
    for i in (0, 1, 3):  # the target of the variable at its bound has no influence
        e = jnp.zeros(4).at[i].set(h)
        up = dict(a, target=a["target"] + e)
        down = dict(a, target=a["target"] - e)
        fd = (loss(up) - loss(down)) / (2 * h)
        np.testing.assert_allclose(grads["target"][i], fd, rtol=1e-5, atol=1e-7)
    assert abs(float(grads["target"][2])) < 1e-9


@pytest.mark.float64
def test_vmap_and_infeasible_status():
    """A batch with an infeasible problem (x ≥ 0 and Σx = −1): that one reports
    primal_infeasible, the others match their single solves."""
    totals = jnp.array([1.0, -1.0, 2.0])
    solve = jax.jit(lambda t: _run(_params(t), throw=False))
    batch = jax.vmap(solve)(totals)
    names = list(jaxopt2.status_name(batch.status))
    assert names == ["successful", "primal_infeasible", "successful"]
    for i in (0, 2):
        single = solve(totals[i])
        np.testing.assert_allclose(batch.params[i], single.params, rtol=1e-10, atol=1e-12)
    assert float(batch.stats["kkt_feasibility"][1]) > 0.1


@pytest.mark.float64
@pytest.mark.slow
def test_infeasible_raises():
    with pytest.raises(RuntimeError, match="primal_infeasible"):
        _run(_params(-1.0))


# ---------------------------------------------------------------------------------------------
# Input checks


def _quad(x, a):
    return jnp.sum(x**2)


def test_bad_inputs():
    x0 = jnp.ones(3)
    with pytest.raises(ValueError, match="dtype int32"):
        jaxopt2.minimize_constrained(_quad, x0, eq=lambda x, a: jnp.sum(x).astype(jnp.int32))
    with pytest.raises(ValueError, match="boolean"):
        jaxopt2.minimize_constrained(_quad, x0, ineq=lambda x, a: x > 0)
    with pytest.raises(ValueError, match="more equations than unknowns"):
        jaxopt2.minimize_constrained(_quad, x0, eq=lambda x, a: jnp.concatenate([x, x[:1]]))
    with pytest.raises(ValueError, match="the box is empty"):
        jaxopt2.minimize_constrained(_quad, x0, bounds=(1.0, jnp.array([2.0, 0.0, 2.0])))
    with pytest.raises(ValueError, match="NaN"):
        jaxopt2.minimize_constrained(_quad, x0.at[1].set(jnp.nan), eq=lambda x, a: x[0])
    with pytest.raises(ValueError, match="NaN"):
        jaxopt2.minimize_constrained(_quad, x0, jnp.array([jnp.nan]), eq=lambda x, a: x[0])
    with pytest.raises(ValueError, match="equality constraints only"):
        jaxopt2.minimize_constrained(_quad, x0, ineq=lambda x, a: x[0], solver=DenseSQP())
    with pytest.raises(ValueError, match="`eq` is None"):
        jaxopt2.minimize_constrained(_quad, x0, solver=DenseSQP())
    with pytest.raises(ValueError, match="does not take `bounds`"):
        jaxopt2.minimize_constrained(_quad, x0, eq=lambda x, a: x[0], bounds=(0.0, 1.0),
                                     solver=SketchedSQP())
    with pytest.raises(ValueError, match="no constraint values"):
        jaxopt2.minimize_constrained(_quad, x0, eq=lambda x, a: jnp.zeros((0,)))
    with pytest.raises(ValueError, match="failed while tracing"):
        jaxopt2.minimize_constrained(_quad, x0, eq=lambda x, a: x[0] @ jnp.ones(5))
    with pytest.raises(TypeError, match="constrained solver"):
        jaxopt2.minimize_constrained(_quad, x0, solver=jaxopt2.LBFGS())
    with pytest.raises(ValueError, match="sketch_size"):
        SketchedSQP(sketch_size=0)


@pytest.mark.float64
def test_constraint_dtype_must_match_params():
    with pytest.raises(ValueError, match="float64 but the parameters are float32"):
        jaxopt2.minimize_constrained(_quad, jnp.ones(3, jnp.float32),
                                     eq=lambda x, a: jnp.sum(x).astype(jnp.float64) - 1.0)


# ---------------------------------------------------------------------------------------------
# The paper's claims on an equality-constrained logistic regression


def _logistic_problem(n=500, d=20, linear=6, quadratic=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.logspace(0, -1, d)
    y = (X @ rng.standard_normal(d) + 0.5 * rng.standard_normal(n) > 0).astype(np.float64)
    w0 = 0.3 * rng.standard_normal(d)
    A = rng.standard_normal((linear, d)) / np.sqrt(d)
    S = np.zeros((quadratic, d))
    for i, block in enumerate(np.array_split(rng.permutation(d), quadratic)):
        S[i, block] = 1.0
    return dict(X=jnp.asarray(X), y=jnp.asarray(y), A=jnp.asarray(A), b=jnp.asarray(A @ w0),
                S=jnp.asarray(S), r=jnp.asarray(S @ w0**2))


def _logistic(w, data):
    z = data["X"] @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - data["y"] * z) + 0.5e-4 * (w @ w)


def _logistic_eq(w, data):
    return jnp.concatenate([data["A"] @ w - data["b"], data["S"] @ w**2 - data["r"]])


@pytest.mark.float64
@pytest.mark.slow
def test_sketched_sqp_unit_steps_and_adaptive_accuracy():
    """Hong et al.'s claims: with accurate enough solves the exact augmented-Lagrangian merit
    accepts the unit step (here in every step but at most two early ones; a coarse fixed θ =
    0.5 is outside that regime and backtracks in about a third of its steps), and sharpening
    the sketch accuracy with the KKT residual (sketch_rtol=None) turns the linear convergence
    of a fixed accuracy into the superlinear one of exact Newton: fewer steps than θ = 0.5,
    about as few as DenseSQP (9, 27 and 9 steps when written)."""
    data = _logistic_problem()
    w0 = 0.1 * jnp.ones(20)
    steps = {}
    for name, solver in (("adaptive", SketchedSQP()), ("fixed", SketchedSQP(sketch_rtol=0.5)),
                         ("dense", DenseSQP())):
        sol = jaxopt2.minimize_constrained(_logistic, w0, data, eq=_logistic_eq, solver=solver,
                                           throw=False)
        assert jaxopt2.status_name(sol.status) == "successful", name
        if name != "fixed":
            assert int(sol.stats["num_unit_steps"]) >= int(sol.stats["num_steps"]) - 2, name
        steps[name] = int(sol.stats["num_steps"])
    assert steps["adaptive"] <= steps["dense"] + 2
    assert 2 * steps["adaptive"] <= steps["fixed"]


@pytest.mark.float64
@pytest.mark.slow
def test_sqp_long_steps_are_damped():
    """From w = 0 on a larger instance, the quadratic constraints' negative multipliers leave
    the Lagrangian's Hessian barely positive on the constraints' null space and the Newton
    steps are 5-10 times longer than w itself; the line search then cuts them to α ≈ 1e-3.
    Such a cut raises the regularization δ for the next step (a long step that the merit
    function rejects), and the steps return to α = 1 within a few: 11 steps where keeping δ
    falling took 40 (and stalled, α ≈ 1e-4 for 60 steps, at n = 10,000, d = 1,000)."""
    data = _logistic_problem(n=2000, d=600, linear=48, quadratic=12)
    sol = jaxopt2.minimize_constrained(_logistic, jnp.zeros(600), data, eq=_logistic_eq,
                                       solver=DenseSQP(), throw=False, max_steps=60)
    assert jaxopt2.status_name(sol.status) == "successful"
    assert int(sol.stats["num_steps"]) <= 20, int(sol.stats["num_steps"])
    assert float(sol.stats["kkt_feasibility"]) <= 1e-8

@pytest.mark.float64
@pytest.mark.slow
def test_forward_mode_and_vmapped_gradients():
    """jax.jacfwd equals jax.jacrev through the active-set KKT conditions, and vmap of the
    gradient equals a loop."""
    def solution(total, gap):
        return _run(dict(_params(), total=total, gap=gap)).params

    # Each transformation compiled once (eagerly, every call would trace and compile anew).
    fwd = jax.jit(jax.jacfwd(solution, argnums=(0, 1)))(1.0, 0.5)
    rev = jax.jit(jax.jacrev(solution, argnums=(0, 1)))(1.0, 0.5)
    for f, r in zip(fwd, rev, strict=True):
        np.testing.assert_allclose(f, r, rtol=1e-8, atol=1e-10)
    grad = jax.jit(jax.grad(lambda t: solution(t, 0.5) @ jnp.arange(4.0)))
    totals = jnp.array([0.8, 1.0, 1.5])
    batched = jax.jit(jax.vmap(grad))(totals)
    looped = jnp.stack([grad(t) for t in totals])
    np.testing.assert_allclose(batched, looped, rtol=1e-8, atol=1e-10)


def _logistic_sqrt_hessian(w, data):
    p = jax.nn.sigmoid(data["X"] @ w)
    return jnp.sqrt(p * (1 - p) / data["X"].shape[0])[:, None] * data["X"], 1e-4


@pytest.mark.float64
@pytest.mark.parametrize("solver", [DenseSQP, SketchedSQP], ids=["dense", "sketched"])
def test_sqp_sqrt_hessian_takes_the_same_steps(solver):
    """`sqrt_hessian` (∇²f = BᵀB + R, the constraints' curvature added by forward products)
    forms the same KKT matrix: the same steps and the same solution as the Hessian from
    AD; a B of the wrong shape is refused with a message."""
    data = _logistic_problem()
    w0 = 0.1 * jnp.ones(20)
    run = jax.jit(lambda w0, data, s: jaxopt2.minimize_constrained(
        _logistic, w0, data, eq=_logistic_eq, solver=s, throw=False), static_argnums=2)
    plain = run(w0, data, solver())
    fast = run(w0, data, solver(sqrt_hessian=_logistic_sqrt_hessian))
    assert jaxopt2.status_name(fast.status) == "successful"
    assert int(fast.stats["num_steps"]) == int(plain.stats["num_steps"])
    np.testing.assert_allclose(fast.params, plain.params, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match=r"B of shape \(n, 20\)"):
        jaxopt2.minimize_constrained(_logistic, w0, data, eq=_logistic_eq,
                                     solver=solver(sqrt_hessian=lambda w, d: (d["X"][:, :3], 0)))


@pytest.mark.float64
@pytest.mark.parametrize("solver", [DenseSQP, SketchedSQP], ids=["dense", "sketched"])
def test_sqp_lazy_hessian_reuses_blocks_near_the_solution(solver):
    """`hessian_every=k` forms fewer Hessians (a fresh one after every long or cut step,
    else one per k steps) and reaches the same solution; `num_hessians` counts them (one per
    step by default); the same under vmap, lane by lane."""
    data = _logistic_problem()
    w0 = 0.1 * jnp.ones(20)
    run = jax.jit(lambda w0, s: jaxopt2.minimize_constrained(
        _logistic, w0, data, eq=_logistic_eq, solver=s, throw=False), static_argnums=1)
    plain = run(w0, solver())
    assert int(plain.stats["num_hessians"]) == int(plain.stats["num_steps"])
    lazy_solver = solver(hessian_every=3, sqrt_hessian=_logistic_sqrt_hessian)
    lazy = run(w0, lazy_solver)
    assert jaxopt2.status_name(lazy.status) == "successful"
    steps, hessians = int(lazy.stats["num_steps"]), int(lazy.stats["num_hessians"])
    assert hessians < steps <= int(plain.stats["num_steps"]) + 3, (hessians, steps)
    np.testing.assert_allclose(lazy.params, plain.params, rtol=0, atol=1e-7)
    starts = jnp.stack([w0, 0.05 * jnp.ones(20)])
    batched = jax.vmap(lambda w: run(w, lazy_solver))(starts)
    for i, start in enumerate(starts):
        alone = run(start, lazy_solver)
        assert int(batched.stats["num_hessians"][i]) == int(alone.stats["num_hessians"])
        np.testing.assert_allclose(batched.params[i], alone.params, rtol=0, atol=1e-10)


def test_sqp_sqrt_hessian_bad_configurations():
    with pytest.raises(TypeError, match="sqrt_hessian"):
        DenseSQP(sqrt_hessian=1.0)
    with pytest.raises(ValueError, match="matrix_free"):
        SketchedSQP(sqrt_hessian=_logistic_sqrt_hessian, matrix_free=True)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="hessian_every"):
            DenseSQP(hessian_every=bad)
    with pytest.raises(ValueError, match="matrix_free"):
        SketchedSQP(hessian_every=2, matrix_free=True)
