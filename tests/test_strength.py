"""Tests that fail when a numeric rule has the wrong sign, band or scale (issue 13, "Test
strength"). Each test names the one-line bug it is built to catch:

1. rescaling: minimizing a·f (a = 1e-8, 1, 1e8) and least squares on s·r (s = 1e-4, 1, 1e4)
   return the same minimizer, never success after 0 steps (catches a stopping test that lost
   its relative term, atol + rtol·‖g₀‖ → atol + rtol);
2. Armijo with a c₁ that matters (0.5, 0.9): the accepted step satisfies
   f(x + t d) ≤ f(x) + c₁ t gᵀd (catches a flipped sign in any line search's test);
3. Nyström with `shift=`: at full rank the approximation is exact, so its eigenvalues are
   eigh(A) (catches a shift left in the eigenvalues);
4. the damping / trust-region rules at every band of the reduction ratio ρ (< ¼, [¼, ¾], > ¾)
   (catches a changed middle band);
5. the L-BFGS two-loop recursion against dense BFGS inverse updates of the same pairs, and
   preconditioned truncated CG against a dense solve (catches a reversed loop order).

Every reference is computed independently (dense linear algebra, closed forms) in float64.
Dtypes are explicit, so the file passes with x64 on or off by default (float64 cases are
skipped when x64 is off).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jaxopt2
from jaxopt2._base import default_rtol, evaluate
from jaxopt2._linalg.cg import truncated_cg
from jaxopt2._linesearch import (
    backtracking,
    backtracking_grad_first,
    newton_line_search,
    zoom_wolfe,
)
from jaxopt2.optimizers._common import RHO_HIGH, RHO_LOW, adapt

from .solvers import LEAST_SQUARES, MINIMIZERS

# float64 tolerances; slow: every solver on rescaled problems, each a compile
pytestmark = [pytest.mark.float64, pytest.mark.slow]

F32, F64 = jnp.float32, jnp.float64
DTYPES = [pytest.param(F32, id="float32"), pytest.param(F64, id="float64")]


@pytest.fixture(autouse=True)
def _need_x64(request):
    dtype = getattr(request.node, "callspec", None)
    dtype = dtype.params.get("dtype") if dtype is not None else None
    if dtype is F64 and not jax.config.jax_enable_x64:
        pytest.skip("float64 needs jax_enable_x64")


def _inf_norm(tree):
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(tree))


def _to64(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, F64), tree)


# --------------------------------------------------------------------------- 1. rescaling
#
# Minimizers: a·f, f the L2-regularised logistic loss of the contract tests (strongly convex
# with μ = λ = 0.1), a passed in `args` so the three scales share one compilation. Success
# must mean the same thing at every scale: a point within the gradient test's bound of x*
# (‖x − x*‖ ≤ ‖∇f‖/μ, the bound the contract tests use), reached in at least one step.

SCALES = (1e-8, 1.0, 1e8)


def _logistic_data(dtype, n=40, d=4):
    kx, kw = jax.random.split(jax.random.PRNGKey(1))
    X = jax.random.normal(kx, (n, d), F64)
    y = (X @ jax.random.normal(kw, (d,), F64) > 0).astype(F64)
    return X.astype(dtype), y.astype(dtype), jnp.asarray(0.1, dtype)


def _scaled_logistic(params, args):
    X, y, lam, a = args
    z = X @ params["w"] + params["b"]
    loss = jnp.mean(jnp.logaddexp(0.0, z) - y * z)
    return a * (loss + 0.5 * lam * (jnp.sum(params["w"] ** 2) + params["b"] ** 2))


def _params0(dtype, d=4):
    return {"w": jnp.zeros(d, dtype), "b": jnp.zeros((), dtype)}


def _with_scaled_sqrt_hessian(solver):
    """A Newton-sketch solver's `sqrt_hessian` (B, R) with ∇²f = BᵀB + R, made to match a·f:
    (√a·B, a·R), reading the three-tuple args of the registry's `logistic_sqrt_hessian`."""
    sqrt_hessian = getattr(solver, "sqrt_hessian", None)
    if sqrt_hessian is None:
        return solver

    def scaled(params, args):
        b, rest = sqrt_hessian(params, args[:3])
        return jnp.sqrt(args[3]) * b, args[3] * rest

    return eqx.tree_at(lambda s: s.sqrt_hessian, solver, scaled)


def _logistic_reference():
    """x* by 30 dense Newton steps in float64."""
    args = _logistic_data(F64) + (1.0,)
    flat0, unravel = jax.flatten_util.ravel_pytree(_params0(F64))
    f = lambda x: _scaled_logistic(unravel(x), args)  # noqa: E731
    x = flat0
    for _ in range(30):
        x = x - jnp.linalg.solve(jax.hessian(f)(x), jax.grad(f)(x))
    return np.asarray(x)


# Known failures of the current library (issue 13: "success means solved in the problem's
# own scale"); strict, so fixing them turns these into XPASS and the marks must be removed.
_KNOWN_MIN: dict = {}


# Each case compiles a whole solver (5-15 s on a CI core): every solver runs in float32, where
# scale problems show first; float64 runs for the solvers whose stopping paths differ most
# (a first-order method, quasi-Newton, and the least-squares trust region).
FLOAT64_MIN = ("GradientDescent", "LBFGS", "Newton")
FLOAT64_LSQ = ("LevenbergMarquardt", "GaussNewton-cg")
_BOTH = ((F32, "float32"), (F64, "float64"))


def _min_cases():
    cases = []
    for name in sorted(MINIMIZERS):
        dtypes = _BOTH if name in FLOAT64_MIN else _BOTH[:1]
        for dtype, tag in dtypes:
            reasons = [r for (n, t, _), r in _KNOWN_MIN.items() if n == name and t == tag]
            marks = [pytest.mark.xfail(strict=True, reason="; ".join(reasons))] if reasons else []
            cases.append(pytest.param(name, dtype, marks=marks, id=f"{name}-{tag}"))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("name, dtype", _min_cases())
def test_minimizer_rescaled_objective_same_minimizer(name, dtype):
    if dtype is F64 and not jax.config.jax_enable_x64:
        pytest.skip("float64 needs jax_enable_x64")
    factory, budget = MINIMIZERS[name]
    solver = _with_scaled_sqrt_hessian(factory())
    data = _logistic_data(dtype)
    x_star = _logistic_reference()
    flat0 = np.zeros_like(x_star)
    rtol = default_rtol(dtype)

    @jax.jit
    def run(a):
        return jaxopt2.minimize(_scaled_logistic, _params0(dtype), data + (a,), solver=solver,
                                max_steps=budget, throw=False)

    failures = []
    for a in SCALES:
        sol = run(jnp.asarray(a, dtype))
        x = np.asarray(jax.flatten_util.ravel_pytree(_to64(sol.params))[0])
        # The gradient test's own bound (scale-free: ‖g₀‖ and μ both scale with a).
        g0 = _inf_norm(jax.grad(_scaled_logistic)(_params0(F64), _to64(data) + (1.0,)))
        bound = 1.5 * rtol * g0 / 0.1
        err = float(np.max(np.abs(x - x_star)))
        status = jaxopt2.status_name(sol.status_code)
        steps = int(sol.stats["num_steps"])
        if status != "successful" or steps < 1 or np.array_equal(x, flat0) or err > bound:
            failures.append(f"a={a:g}: {status} after {steps} steps, |x - x*| = {err:.2e} "
                            f"(bound {bound:.1e})")
    assert not failures, f"{name} ({np.dtype(dtype).name}): " + "; ".join(failures)


# Least squares: s·r for an exponential fit with a small non-zero residual at the optimum.
LSQ_SCALES = (1e-4, 1.0, 1e4)
_T = np.linspace(0.0, 3.0, 12)
_Y = 2.0 * np.exp(-1.3 * _T) + 0.5 + 0.01 * np.sin(7.0 * _T)


def _scaled_residuals(x, args):
    t, y, s = args
    return s * (x[0] * jnp.exp(-x[1] * t) + x[2] - y)


def _lsq_reference():
    """Gauss-Newton in float64 from a nearby point (40 dense steps)."""
    args = (jnp.asarray(_T), jnp.asarray(_Y), 1.0)
    x = jnp.array([2.0, 1.3, 0.5])
    for _ in range(40):
        r = _scaled_residuals(x, args)
        J = jax.jacfwd(_scaled_residuals)(x, args)
        x = x - jnp.linalg.lstsq(J, r)[0]
    return np.asarray(x)


_KNOWN_LSQ: dict = {}


def _lsq_cases():
    cases = []
    for name in sorted(LEAST_SQUARES):
        dtypes = _BOTH if name in FLOAT64_LSQ else _BOTH[:1]
        for dtype, tag in dtypes:
            reason = _KNOWN_LSQ.get((name, tag))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(name, dtype, marks=marks, id=f"{name}-{tag}"))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("name, dtype", _lsq_cases())
def test_least_squares_rescaled_residuals_same_minimizer(name, dtype):
    if dtype is F64 and not jax.config.jax_enable_x64:
        pytest.skip("float64 needs jax_enable_x64")
    factory, budget = LEAST_SQUARES[name]
    solver = factory()
    x_star = _lsq_reference()
    x0 = jnp.array([1.0, 0.5, 0.0], dtype)
    t, y = jnp.asarray(_T, dtype), jnp.asarray(_Y, dtype)
    # MINPACK's tests (ftol = xtol = gtol = √eps) resolve x* to well below √eps here (the
    # solvers reach 1e-5 in float32, 1e-9 in float64): 0.3·√eps, far below the start's
    # distance (≈ 1.5).
    tol = 0.3 * float(jnp.finfo(dtype).eps) ** 0.5

    @jax.jit
    def run(s):
        return jaxopt2.least_squares(_scaled_residuals, x0, (t, y, s), solver=solver,
                                     max_steps=budget, throw=False)

    failures = []
    for s in LSQ_SCALES:
        sol = run(jnp.asarray(s, dtype))
        x = np.asarray(sol.params, np.float64)
        err = float(np.max(np.abs(x - x_star)))
        status = jaxopt2.status_name(sol.status_code)
        steps = int(sol.stats["num_steps"])
        if status != "successful" or steps < 1 or err > tol:
            failures.append(f"s={s:g}: {status} after {steps} steps, |x - x*| = {err:.2e}")
    assert not failures, f"{name} ({np.dtype(dtype).name}): " + "; ".join(failures)


# --------------------------------------------------------------------------- 2. Armijo


def _square(x):
    return jnp.sum(x**2)


def _quartic(x):
    return jnp.sum(x**4 + 0.5 * x**2)


def _fn(f):
    return lambda x, args: (f(x), None)


ARMIJO_CASES = [
    # (objective, start, first trial step)
    pytest.param(_square, [1.0], 1.0, id="square"),
    pytest.param(_square, [1.0], 0.9, id="square-overshoot"),  # 1st trial lowers f, not enough
    pytest.param(_quartic, [1.0, -0.5], 1.0, id="quartic"),
    pytest.param(_quartic, [1.5, 0.3], 0.2, id="quartic-short"),
]


def _check_armijo(f, x, d, t, c1, dtype, slack=0.0):
    """Armijo's test, evaluated independently in float64 (with `slack` for documented
    rounding allowances, far below the c₁·t·|gᵀd| at stake)."""
    x64, d64 = np.asarray(x, np.float64), np.asarray(d, np.float64)
    f0 = float(f(jnp.asarray(x64)))
    slope = float(jax.grad(f)(jnp.asarray(x64)) @ d64)
    ft = float(f(jnp.asarray(x64 + t * d64)))
    assert slope < 0
    assert t > 0, "no step accepted"
    # float32 evaluation of f: allow its rounding, not a sign.
    slack = slack + 4 * float(jnp.finfo(dtype).eps) * max(abs(f0), 1.0)
    assert ft <= f0 + c1 * t * slope + slack, (
        f"accepted t = {t} violates Armijo with c1 = {c1}: f(x + t d) = {ft}, "
        f"f(x) + c1 t gᵀd = {f0 + c1 * t * slope}")


# One compilation per (objective, dtype, search): c₁, c₂ and t₀ are traced.
@functools.partial(jax.jit, static_argnums=0)
def _backtracking(f, x, t0, c1):
    it = evaluate(_fn(f), x, None)
    return it, backtracking(_fn(f), it, -it.grad, None, t0, c1=c1, shrink=0.5)


@functools.partial(jax.jit, static_argnums=0)
def _unit_first(f, x, t0, c1):
    it = evaluate(_fn(f), x, None)
    d = -t0 * it.grad  # these searches start from t = 1: fold t₀ into d
    grad_first = backtracking_grad_first(_fn(f), it, d, None, c1=c1)
    newton, _, result = newton_line_search(_fn(f), it, d, None, c1, 30)
    return d, grad_first, newton.params, result


@functools.partial(jax.jit, static_argnums=0)
def _zoom(f, x, t0, c1, c2):
    it = evaluate(_fn(f), x, None)
    return it, zoom_wolfe(_fn(f), it, -it.grad, None, t0, c1=c1, c2=c2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c1", [0.5, 0.9])
@pytest.mark.parametrize("f, x0, t0", ARMIJO_CASES)
def test_backtracking_accepts_only_armijo_steps(f, x0, t0, c1, dtype):
    """Catches a flipped sign in `_armijo`: with c₁ ≥ ½ the overshooting trials (f lower
    than f(x), but not by c₁·t·|gᵀd|) must be rejected. Also: the accepted t is the first
    trial of the geometric sequence t₀, t₀/2, … that passes (the one before it fails)."""
    x = jnp.asarray(x0, dtype)
    it, ls = _backtracking(f, x, jnp.asarray(t0, dtype), jnp.asarray(c1, dtype))
    d = -it.grad
    t = float(ls.step_size)
    assert bool(ls.ok)
    _check_armijo(f, x, d, t, c1, dtype)
    np.testing.assert_allclose(np.asarray(ls.iterate.params), np.asarray(x + t * d),
                               rtol=1e-6)
    if t < 0.99 * t0:  # the previous trial, 2t, must have failed the test
        x64, d64 = np.asarray(x, np.float64), np.asarray(d, np.float64)
        f0 = float(f(jnp.asarray(x64)))
        slope = float(jax.grad(f)(jnp.asarray(x64)) @ d64)
        fp = float(f(jnp.asarray(x64 + 2 * t * d64)))
        assert not (fp <= f0 + c1 * 2 * t * slope and fp < f0), (
            f"t = {2 * t} passed Armijo but a shorter step {t} was returned")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c1", [0.5, 0.9])
@pytest.mark.parametrize("f, x0, t0", ARMIJO_CASES)
def test_grad_first_and_newton_line_search_accept_only_armijo_steps(f, x0, t0, c1, dtype):
    """The same for the unit-step-first search and Newton's search (with its rounding
    allowance `noise`, a few ulps of f: the test allows exactly that much)."""
    x = jnp.asarray(x0, dtype)
    d, ls, new_params, result = _unit_first(f, x, jnp.asarray(t0, dtype),
                                            jnp.asarray(c1, dtype))
    assert bool(ls.ok)
    _check_armijo(f, x, d, float(ls.step_size), c1, dtype)
    assert result == jaxopt2.RESULTS.successful
    t = float((np.asarray(new_params, np.float64) - np.asarray(x, np.float64))[0]
              / np.asarray(d, np.float64)[0])
    noise = 10 * 10 * float(jnp.finfo(dtype).eps) * max(abs(float(f(x))), 1.0)
    _check_armijo(f, x, d, t, c1, dtype, slack=noise)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c1, c2", [(0.5, 0.9), (0.9, 0.95)])
@pytest.mark.parametrize("f, x0, t0", ARMIJO_CASES)
def test_zoom_wolfe_accepts_only_armijo_steps(f, x0, t0, c1, c2, dtype):
    """Catches a flipped sign in zoom_wolfe's Armijo test: on f = x² from 1 along −g the exact
    minimizer t = ½ satisfies the curvature condition but, for c₁ = 0.9, not Armijo
    (f(½) = 0 > 1 − 0.9·½·4). The approximate-Wolfe branch may exceed Armijo by ε|f(x)|
    (ε = max(1e-6, √eps)), no more."""
    x = jnp.asarray(x0, dtype)
    it, ls = _zoom(f, x, *(jnp.asarray(v, dtype) for v in (t0, c1, c2)))
    assert bool(ls.ok)
    approx = max(1e-6, float(jnp.finfo(dtype).eps) ** 0.5) * abs(float(it.value))
    _check_armijo(f, x, -it.grad, float(ls.step_size), c1, dtype, slack=approx)


# --------------------------------------------------------------------------- 3. Nyström


def _psd_matrix(n, eigenvalues, dtype, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    a = (q * np.asarray(eigenvalues)) @ q.T
    return jnp.asarray(0.5 * (a + a.T), dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _nystrom(a, rank, default_shift, shift):
    op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
    kw = {} if default_shift else {"shift": shift}
    return jaxopt2.sketch.nystrom(op, rank, jax.random.key(3), **kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nystrom_full_rank_with_shift_is_exact(dtype):
    """With rank = n the sketch Y_ν = (A + νI)Ω spans everything, so the approximation is A
    itself: its eigenvalues are eigh(A), the shift removed again (Tropp et al. 2017, Alg. 3,
    Λ = max(Σ² − ν, 0)), for the default shift and for shifts 0.5 and 3 comparable to the
    eigenvalues. Catches a shift left in (Λ = Σ²: every eigenvalue off by ν)."""
    lams = np.array([10.0, 6.0, 3.0, 2.0, 1.5, 1.0])
    n = lams.size
    a = _psd_matrix(n, lams, dtype)
    reference = np.sort(np.linalg.eigvalsh(np.asarray(a, np.float64)))[::-1]
    tol = 1e3 * float(jnp.finfo(dtype).eps) * lams.max()
    v = jnp.asarray(np.arange(1.0, n + 1.0), dtype)
    for shift in (None, 0.5, 3.0):
        approx = _nystrom(a, n, shift is None, jnp.asarray(shift or 0.0, dtype))
        assert approx.eigenvalues.dtype == dtype
        np.testing.assert_allclose(np.sort(np.asarray(approx.eigenvalues, np.float64))[::-1],
                                   reference, atol=tol, err_msg=f"shift={shift}")
        np.testing.assert_allclose(approx.mv(v), a @ v, atol=tol * 10,
                                   err_msg=f"shift={shift}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nystrom_low_rank_operator_is_exact(dtype):
    """A of exact rank r sketched with r columns (default, tiny shift): Â = A, top-r
    eigenvalues exact, and the closed-form (Â + μI)⁻¹ v equals a dense solve. (With a shift
    comparable to the eigenvalues the sketch is of the full-rank A + νI, so only rank = n is
    exact then: the test above.)"""
    lams = np.array([8.0, 4.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    a = _psd_matrix(lams.size, lams, dtype, seed=1)
    approx = _nystrom(a, 3, True, jnp.asarray(0.0, dtype))
    tol = 1e3 * float(jnp.finfo(dtype).eps) * lams.max()
    np.testing.assert_allclose(np.sort(np.asarray(approx.eigenvalues, np.float64))[::-1],
                               lams[:3], atol=tol)
    v = jnp.asarray(np.linspace(-1.0, 2.0, lams.size), dtype)
    ref = np.linalg.solve(np.asarray(a, np.float64) + 0.7 * np.eye(lams.size),
                          np.asarray(v, np.float64))
    np.testing.assert_allclose(np.asarray(approx.solve(v, 0.7), np.float64), ref,
                               atol=tol * 10)


# --------------------------------------------------------------------------- 4. damping rules


@pytest.mark.parametrize("dtype", DTYPES)
def test_adapt_rule_at_every_band(dtype):
    """The optimizers' reduction-ratio rule (`optimizers._common.adapt`): × grow below ¼ or on
    a rejected step, × shrink above ¾, unchanged in [¼, ¾] (both ends included), unchanged
    without a step, clipped to [low, high]."""
    assert (RHO_LOW, RHO_HIGH) == (0.25, 0.75)
    lam = jnp.asarray(2.0, dtype)

    def rule(rho, ok=True, no_step=False, low=1e-8, high=1e8, value=lam):
        out = adapt(value, jnp.asarray(rho, dtype), jnp.asarray(ok), jnp.asarray(no_step),
                    grow=3.0, shrink=0.25, low=low, high=high)
        assert out.dtype == dtype
        return float(out)

    for rho in (-1.0, 0.0, 0.1, 0.2499):
        assert rule(rho) == 6.0, rho
    for rho in (0.25, 0.3, 0.5, 0.7, 0.75):
        assert rule(rho) == 2.0, rho
    for rho in (0.7501, 0.9, 1.0, 5.0):
        assert rule(rho) == 0.5, rho
    assert rule(0.9, ok=False) == 6.0  # a rejected step grows whatever ρ says
    assert rule(0.1, no_step=True) == 2.0 and rule(0.9, no_step=True) == 2.0
    assert rule(0.1, high=5.0) == 5.0 and rule(0.9, low=1.0) == 1.0
    # jit and vmap over a batch of ratios
    rhos = jnp.asarray([0.1, 0.5, 0.9], dtype)
    batched = jax.jit(jax.vmap(lambda r: adapt(lam, r, jnp.asarray(True), jnp.asarray(False),
                                               grow=3.0, shrink=0.25, low=1e-8, high=1e8)))
    np.testing.assert_array_equal(np.asarray(batched(rhos)), [6.0, 2.0, 0.5])


# f(x) = x²/2 + x³/10 from x = −1: f'' = 1 + 0.6x grows along the (positive) step, so the
# quadratic model over-predicts the decrease more the longer the step. For a step s:
# ρ(s) = (f(−1 + s) − f(−1)) / (−0.7 s + 0.2 s²); ρ(1) ≈ 0.96, ρ(1.5) = 0.4375, ρ(1.7) ≈ 0.197.
def _cubic(x):
    return jnp.sum(0.5 * x**2 + 0.1 * x**3)


def _cubic_ratio(s):
    f = lambda x: 0.5 * x**2 + 0.1 * x**3  # noqa: E731
    return (f(-1.0 + s) - f(-1.0)) / (-0.7 * s + 0.2 * s * s)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lr, band", [(1.0, "high"), (3.0, "middle"), (3.4, "low")])
def test_hessian_free_damping_follows_band(lr, band, dtype):
    """One `hessian_free` step with damping λ = 1 on the cubic above: the CG step is
    p = −g/(H + λ) = 0.5 (1-D, exact), the step s = lr·p, and the documented rule gives the
    next λ: ×1.5 if ρ < ¼, ×⅔ if ρ > ¾, unchanged in between."""
    x = jnp.asarray([-1.0], dtype)
    opt = jaxopt2.optimizers.hessian_free(learning_rate=lr, damping=1.0)
    state = opt.init(x)
    g = jax.grad(_cubic)(x)
    updates, new = jax.jit(lambda g, s, x: opt.update(g, s, x, value_fn=_cubic))(g, state, x)
    rho = _cubic_ratio(lr * 0.5)
    assert {"low": rho < 0.25, "middle": 0.25 <= rho <= 0.75, "high": rho > 0.75}[band]
    rtol = 1e-3 if dtype is F32 else 1e-9
    np.testing.assert_allclose(float(new.rho), rho, rtol=rtol)
    expected = {"low": 1.5, "middle": 1.0, "high": 2.0 / 3.0}[band]
    np.testing.assert_allclose(float(new.damping), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(updates), [lr * 0.5], rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x0, radius", [(-1.0, 1.0), (-1.0, 1.5), (-1.0, 1.7), (-1.0, 10.0),
                                        (-0.3, 10.0)])
def test_newton_cg_trust_region_radius_follows_band(x0, radius, dtype):
    """NewtonCG(trust_region=True) steps on the same cubic. Nocedal & Wright Alg. 4.1:
    ρ < ¼ → radius ¼‖p‖; ρ > ¾ with the step on the boundary → 2·radius; otherwise unchanged.
    From x = −1 (g = −0.7, H = 0.4, Newton step 1.75): radius 1 (ρ ≈ 0.96, boundary),
    1.5 (ρ = 0.44), 1.7 (ρ ≈ 0.2), 10 (interior, ρ ≈ 0.125: taken, radius → 1.75/4); from
    x = −0.3 with radius 10 an interior step with ρ > ¾ (radius unchanged: no doubling off
    the boundary)."""
    solver = jaxopt2.NewtonCG(trust_region=True, initial_radius=radius)
    fn = _fn(_cubic)
    it = evaluate(fn, jnp.asarray([x0], dtype), None)
    state = solver.init(fn, it, None)
    new, new_state, _, result = jax.jit(lambda it, st: solver.step(fn, it, None, st))(it, state)
    f = lambda x: 0.5 * x**2 + 0.1 * x**3  # noqa: E731
    g, h = x0 + 0.3 * x0**2, 1.0 + 0.6 * x0
    newton = -g / h
    boundary = radius < abs(newton)
    s = radius * np.sign(newton) if boundary else newton
    rho = (f(x0) - f(x0 + s)) / -(g * s + 0.5 * h * s * s)
    if rho < 0.25:
        expected = 0.25 * abs(s)
    elif rho > 0.75 and boundary:
        expected = 2.0 * radius
    else:
        expected = radius
    tol = 1e-5 if dtype is F32 else 1e-12
    np.testing.assert_allclose(float(new_state.radius), expected, rtol=tol)
    assert result == jaxopt2.RESULTS.successful
    assert rho > 0.1  # every case here takes its step
    np.testing.assert_allclose(np.asarray(new.params), [x0 + s], rtol=tol, atol=tol)


# --------------------------------------------------------------------------- 5. L-BFGS, CG


def _dense_bfgs_inverse(pairs, n):
    """H from H₀ = γI (γ = sᵀy/yᵀy of the newest pair) and the BFGS inverse updates
    H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ of the pairs, oldest first."""
    s_new, y_new = pairs[-1]
    h = (s_new @ y_new) / (y_new @ y_new) * np.eye(n)
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        v = np.eye(n) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("history, num_pairs", [(5, 3), (5, 5), (3, 6)])
def test_lbfgs_two_loop_equals_dense_bfgs(history, num_pairs, dtype):
    """The two-loop direction equals −H·g for H from dense BFGS inverse updates of the same
    pairs (the last `history` of them when the ring buffer wrapped). Catches a reversed loop
    order, a wrong H₀ scaling, and ring-buffer slips."""
    n = 6
    rng = np.random.default_rng(7)
    a = _psd_matrix(n, np.linspace(1.0, 20.0, n), F64, seed=2)
    pairs = []
    for _ in range(num_pairs):
        s = rng.standard_normal(n)
        y = np.asarray(a) @ s + 0.3 * rng.standard_normal(n)  # a non-quadratic flavour
        if s @ y <= 0:
            y = -y  # pragma: no cover  (keeps sᵀy > 0 for any seed)
        pairs.append((s, y))
    g = rng.standard_normal(n)

    solver = jaxopt2.LBFGS(history=history)
    memory = solver._init_memory(jnp.zeros(n, dtype), dtype)
    update = jax.jit(solver._update)
    for k, (s, y) in enumerate(pairs):
        s_, y_ = jnp.asarray(s, dtype), jnp.asarray(y, dtype)
        memory = update(memory, s_, y_, jnp.asarray(s @ y, dtype),
                                jnp.asarray(y @ y, dtype), jnp.asarray(True),
                                jnp.asarray(k == 0))
    direction = jax.jit(solver._apply)(memory, jnp.asarray(g, dtype))
    h = _dense_bfgs_inverse(pairs[-history:], n)
    expected = -h @ g
    tol = 1e-4 if dtype is F32 else 1e-10
    np.testing.assert_allclose(np.asarray(direction, np.float64), expected,
                               rtol=tol, atol=tol * np.abs(expected).max())
    # A rejected pair (accept=False) leaves the memory, hence the direction, unchanged.
    kept = update(memory, jnp.ones(n, dtype), jnp.ones(n, dtype), jnp.asarray(6.0, dtype),
                          jnp.asarray(6.0, dtype), jnp.asarray(False), jnp.asarray(False))
    np.testing.assert_array_equal(np.asarray(solver._apply(kept, jnp.asarray(g, dtype))),
                                  np.asarray(direction))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preconditioned", [False, True])
def test_truncated_cg_equals_dense_solve(preconditioned, dtype):
    """Preconditioned truncated CG on an SPD system (condition number 1e3) run to a tight
    tolerance equals the dense solve; with the Jacobi-plus-rotation preconditioner M⁻¹ SPD
    as well."""
    n = 8
    a = _psd_matrix(n, np.geomspace(1.0, 1e3, n), F64, seed=4)
    a = a + jnp.diag(jnp.linspace(0.0, 50.0, n))  # a non-trivial diagonal for Jacobi
    b = np.random.default_rng(1).standard_normal(n)
    m_inv = _psd_matrix(n, np.geomspace(0.5, 2.0, n), F64, seed=5) @ jnp.diag(1.0 / jnp.diag(a))
    m_inv = 0.5 * (m_inv + m_inv.T)  # symmetric; SPD since the factors are close to commuting
    assert np.linalg.eigvalsh(np.asarray(m_inv)).min() > 0
    a_, b_, m_ = (jnp.asarray(v, dtype) for v in (a, b, m_inv))
    precond = (lambda r: m_ @ r) if preconditioned else None
    rtol = 1e-5 if dtype is F32 else 1e-12
    cg = jax.jit(lambda b: truncated_cg(lambda v: a_ @ v, b, rtol=rtol, max_iters=200,
                                        precond=precond))(b_)
    assert bool(cg.converged) and not bool(cg.negative_curvature) and not bool(cg.hit_boundary)
    ref = np.linalg.solve(np.asarray(a, np.float64), b)
    # ‖x − x*‖ ≤ κ‖r‖/‖A‖ …: the backward error is what CG controls; check the residual and x.
    resid = np.asarray(a, np.float64) @ np.asarray(cg.x, np.float64) - b
    assert np.linalg.norm(resid) <= 3 * rtol * np.linalg.norm(b)
    cond = np.linalg.cond(np.asarray(a, np.float64))
    np.testing.assert_allclose(np.asarray(cg.x, np.float64), ref,
                               atol=10 * cond * rtol * np.abs(ref).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_preconditioned_cg_converges_in_as_many_steps_as_distinct_eigenvalues(dtype):
    """With M⁻¹ = A^{-1/2} D A^{-1/2}, M⁻¹A is similar to D; D with 3 distinct values makes
    PCG exact after 3 iterations (the Krylov space of M⁻¹A is 3-dimensional). Catches a
    preconditioner applied at the first iteration only (plain CG on A, condition 1e3, is
    nowhere near after 3)."""
    n = 8
    lams = np.geomspace(1.0, 1e3, n)
    a = np.asarray(_psd_matrix(n, lams, F64, seed=4))
    w, v = np.linalg.eigh(a)
    a_inv_half = (v / np.sqrt(w)) @ v.T
    m_inv = a_inv_half @ np.diag([1.0, 1.0, 2.0, 2.0, 2.0, 5.0, 5.0, 5.0]) @ a_inv_half
    m_inv = 0.5 * (m_inv + m_inv.T)
    b = np.random.default_rng(2).standard_normal(n)
    a_, b_, m_ = (jnp.asarray(x, dtype) for x in (a, b, m_inv))
    cg = jax.jit(lambda b: truncated_cg(lambda x: a_ @ x, b, rtol=0.0, max_iters=3,
                                        precond=lambda r: m_ @ r))(b_)
    ref = np.linalg.solve(a, b)
    tol = 1e-3 if dtype is F32 else 1e-8
    np.testing.assert_allclose(np.asarray(cg.x, np.float64), ref, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_truncated_cg_radius_stops_on_boundary_of_the_steihaug_path(dtype):
    """With a radius smaller than ‖A⁻¹b‖ the result lies on the boundary (‖x‖ = radius) and
    still decreases the model q(x) = ½xᵀAx − bᵀx below the Cauchy point's value."""
    n = 5
    a = np.asarray(_psd_matrix(n, np.linspace(1.0, 9.0, n), F64, seed=6))
    b = np.linspace(1.0, 3.0, n)
    radius = 0.3 * np.linalg.norm(np.linalg.solve(a, b))
    a_, b_ = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    cg = truncated_cg(lambda v: a_ @ v, b_, rtol=1e-12, max_iters=50, radius=radius)
    x = np.asarray(cg.x, np.float64)
    assert bool(cg.hit_boundary)
    np.testing.assert_allclose(np.linalg.norm(x), radius, rtol=1e-5)
    q = lambda v: 0.5 * v @ a @ v - b @ v  # noqa: E731
    t_cauchy = min(radius / np.linalg.norm(b), (b @ b) / (b @ a @ b))
    assert q(x) <= q(t_cauchy * b) + 1e-6 * abs(q(t_cauchy * b))
