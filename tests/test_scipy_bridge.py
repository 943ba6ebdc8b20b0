"""`jaxopt2.scipy`: SciPy's solvers fed by JAX, checked against our own solvers, direct SciPy
calls, closed forms and finite differences."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxopt2
import jaxopt2.scipy as jscipy
from jaxopt2 import RESULTS


def rosenbrock(x, a):
    return jnp.sum(a * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def logistic(w, data):
    X, y, lam = data
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * lam * jnp.sum(w**2)


def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return jnp.asarray(X), jnp.asarray(y, X.dtype)


def test_import_is_lazy():
    code = ("import sys, jaxopt2; assert 'scipy' not in sys.modules, 'scipy imported'; "
            "assert 'jaxopt2.scipy' not in sys.modules; jaxopt2.scipy.minimize; "
            "assert 'scipy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.float64
@pytest.mark.parametrize("method", ["L-BFGS-B", "trust-ncg"])
def test_rosenbrock_matches_lbfgs(method):
    x0 = jnp.array([-1.2, 1.0, -0.5])
    ours = jaxopt2.minimize(rosenbrock, x0, 100.0, solver=jaxopt2.LBFGS())
    sol = jscipy.minimize(rosenbrock, x0, 100.0, method=method)
    assert sol.status == RESULTS.successful and bool(sol.state["success"])
    # Success means ‖∇f‖∞ ≤ 1e-6·‖∇f(x₀)‖∞ ≈ 4e-4 here; with the Hessian's smallest eigenvalue
    # ≈ 0.4 at (1, 1, 1) that is x within about 1e-3.
    assert float(jnp.max(jnp.abs(jax.grad(rosenbrock)(sol.params, 100.0)))) <= 1e-6 * float(
        jnp.max(jnp.abs(jax.grad(rosenbrock)(x0, 100.0))))
    np.testing.assert_allclose(sol.params, jnp.ones(3), atol=1e-3)
    # A tighter `rtol` is passed on to SciPy's gtol (L-BFGS-B's ftol must not stop it first).
    options = {"ftol": 1e-15} if method == "L-BFGS-B" else None
    sol = jscipy.minimize(rosenbrock, x0, 100.0, method=method, rtol=1e-10, options=options)
    assert sol.status == RESULTS.successful
    np.testing.assert_allclose(sol.params, ours.params, atol=1e-6)
    assert sol.params.dtype == jnp.float64
    assert float(sol.value) == pytest.approx(float(rosenbrock(sol.params, 100.0)))
    assert int(sol.stats["num_grad"]) > 0
    assert (int(sol.stats["num_hvp"]) > 0) == (method == "trust-ncg")


@pytest.mark.float64
def test_logistic_regression_matches_lbfgs_and_gradient_is_small():
    X, y = breast_cancer()
    data = (X, y, 1e-2)
    w0 = jnp.zeros(X.shape[1])
    ours = jaxopt2.minimize(logistic, w0, data, solver=jaxopt2.LBFGS())
    sol = jscipy.minimize(logistic, w0, data)
    assert sol.status == RESULTS.successful
    np.testing.assert_allclose(sol.params, ours.params, atol=1e-5)
    g0 = jnp.max(jnp.abs(jax.grad(logistic)(w0, data)))
    g = jnp.max(jnp.abs(jax.grad(logistic)(sol.params, data)))
    assert float(g) <= 1e-6 * float(g0)  # our own check, which SciPy's gtol was set to
    assert float(sol.state["optimality"]) == pytest.approx(float(g), rel=1e-6)


def box_problem():
    X, y = breast_cancer()
    X, y = X[:, :8], y
    lower = jnp.full(8, -0.5)
    upper = jnp.full(8, 0.5)
    return (X, y, 1e-3), lower, upper


@pytest.mark.float64
def test_bounds_match_direct_scipy_call():
    data, lower, upper = box_problem()
    w0 = jnp.full(8, 2.0)  # outside the box: projected first
    sol = jscipy.minimize(logistic, w0, data, bounds=(lower, upper))
    vg = jax.jit(jax.value_and_grad(logistic))

    def fg(w):
        v, g = vg(jnp.asarray(w), data)
        return float(v), np.asarray(g)

    ref = scipy.optimize.minimize(fg, np.clip(np.asarray(w0), -0.5, 0.5), jac=True,
                                  method="L-BFGS-B", bounds=[(-0.5, 0.5)] * 8,
                                  options=dict(gtol=1e-10, ftol=1e-15))
    assert sol.status == RESULTS.successful
    np.testing.assert_allclose(sol.params, ref.x, atol=1e-6)
    active = (jnp.abs(sol.params) == 0.5)
    assert 0 < int(active.sum()) < 8  # both kinds of variables
    g = jax.grad(logistic)(sol.params, data)
    # The projected gradient vanishes: free variables have zero gradient, active ones point out.
    assert float(jnp.max(jnp.abs(jnp.where(active, 0.0, g)))) < 1e-6
    assert bool(jnp.all(jnp.where(active, -g * jnp.sign(sol.params) >= 0, True)))


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.float64
def test_derivative_matches_finite_differences_and_jaxopt2():
    X, y = breast_cancer()
    X, y = X[:100, :6], y[:100]
    w0 = jnp.zeros(6)

    def outer(lam, door):
        w = door(lam)
        return jnp.sum(w**2) + jnp.sum(jnp.sin(w))

    ours = lambda lam: jaxopt2.minimize(logistic, w0, (X, y, lam),  # noqa: E731
                                        solver=jaxopt2.LBFGS()).params
    bridge = lambda lam: jscipy.minimize(logistic, w0, (X, y, lam)).params  # noqa: E731
    lam = 0.05
    g_bridge = jax.grad(outer)(lam, bridge)
    g_ours = jax.grad(outer)(lam, ours)
    h = 1e-5
    fd = (outer(lam + h, bridge) - outer(lam - h, bridge)) / (2 * h)
    assert float(g_bridge) == pytest.approx(float(g_ours), rel=1e-5)
    assert float(g_bridge) == pytest.approx(float(fd), rel=1e-4)
    # Forward mode through jit, with respect to the data: the dense implicit-function
    # theorem, dw*/dy = −H⁻¹ ∂y∇w f.
    jac = jax.jit(jax.jacfwd(lambda y: jscipy.minimize(logistic, w0, (X, y, lam)).params))(y)
    w = bridge(lam)
    H = jax.hessian(logistic)(w, (X, y, lam))
    B = jax.jacfwd(lambda y: jax.grad(logistic)(w, (X, y, lam)))(y)
    np.testing.assert_allclose(jac, -jnp.linalg.solve(H, B), atol=1e-7)


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.float64
def test_bounded_derivative_reduces_to_free_variables():
    # min ½‖x − a‖² + 0.1·(Σx)² with x ≥ 0: here x₁ and x₃ sit on their bounds, and the
    # derivative is the free block's inverse Hessian (zero elsewhere); with respect to the
    # bounds themselves it is 1 exactly on the active ones.
    f = lambda x, a: 0.5 * jnp.sum((x - a) ** 2) + 0.1 * jnp.sum(x) ** 2  # noqa: E731
    a = jnp.array([1.0, -1.0, 2.0, -0.5])

    def solve(a, lower):
        return jscipy.minimize(f, jnp.ones(4), a, bounds=(lower, None)).params

    x = solve(a, jnp.zeros(4))
    free = x > 0
    assert bool(jnp.all(free == jnp.array([True, False, True, False])))
    J = jax.jacrev(solve)(a, jnp.zeros(4))
    # Closed form on the free set F: (I + 0.2·11ᵀ)_FF dx_F = da_F.
    H = jnp.eye(2) + 0.2
    ref = jnp.zeros((4, 4)).at[jnp.ix_(jnp.array([0, 2]), jnp.array([0, 2]))].set(
        jnp.linalg.inv(H))
    np.testing.assert_allclose(J, ref, atol=1e-6)
    J_lower = jax.jacfwd(solve, argnums=1)(a, jnp.zeros(4))
    np.testing.assert_allclose(jnp.diag(J_lower), jnp.array([0.0, 1.0, 0.0, 1.0]), atol=1e-8)


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.float64
def test_least_squares_curve_fit_matches_levenberg_marquardt():
    t = jnp.linspace(0.0, 3.0, 40)
    noise = 0.01 * jnp.sin(17.0 * t)
    y = 2.0 * jnp.exp(-1.3 * t) + 0.5 + noise
    decay = lambda p, d: p["A"] * jnp.exp(-p["k"] * d[0]) + p["c"] - d[1]  # noqa: E731
    p0 = {"A": jnp.array(1.0), "k": jnp.array(1.0), "c": jnp.array(0.0)}
    ours = jaxopt2.least_squares(decay, p0, (t, y), solver=jaxopt2.LevenbergMarquardt())
    sol = jscipy.least_squares(decay, p0, (t, y))
    assert sol.status == RESULTS.successful
    for k in p0:
        assert float(sol.params[k]) == pytest.approx(float(ours.params[k]), abs=1e-7)
    np.testing.assert_allclose(sol.value, decay(sol.params, (t, y)), atol=1e-12)
    assert int(sol.stats["num_jac"]) > 0
    dk = jax.grad(lambda y: jscipy.least_squares(decay, p0, (t, y)).params["k"])(y)
    dk_ours = jax.grad(lambda y: jaxopt2.least_squares(
        decay, p0, (t, y), solver=jaxopt2.LevenbergMarquardt()).params["k"])(y)
    np.testing.assert_allclose(dk, dk_ours, atol=1e-7)


@pytest.mark.float64
def test_root_small_system_and_its_derivative():
    F = lambda y, a: jnp.stack([y[0] ** 2 + y[1] ** 2 - a, y[0] - y[1]])  # noqa: E731
    for method in ("hybr", "broyden1"):
        sol = jscipy.root(F, jnp.array([1.0, 0.5]), 2.0, method=method)
        assert sol.status == RESULTS.successful
        # broyden1 stops at SciPy's f_tol = 6e-6; our check accepts ‖F‖ ≤ 1e-6·‖F(y₀)‖.
        np.testing.assert_allclose(sol.params, jnp.ones(2), atol=1e-6)
    # No root: reported, and raised with throw=True.
    no_root = lambda y, a: y**2 + a  # noqa: E731
    sol = jscipy.root(no_root, jnp.array([0.5, 1.0]), 1.0, throw=False)
    assert sol.status == RESULTS.line_search_failed and not bool(sol.state["success"])
    with pytest.raises(RuntimeError, match="line_search_failed"):
        jscipy.root(no_root, jnp.array([0.5, 1.0]), 1.0)
    # y = √(a/2): dy/da = 1/(4√(a/2)).
    a = 3.0
    dy = jax.grad(lambda a: jscipy.root(F, jnp.array([1.0, 0.5]), a).params[0])(a)
    assert float(dy) == pytest.approx(1.0 / (4.0 * np.sqrt(a / 2)), rel=1e-7)


def test_pytree_params_float32_jit_and_vmap_with_a_bad_problem():
    fun = lambda p, a: jnp.sum((p["w"] - a) ** 2) + (p["b"] - 1.0) ** 2  # noqa: E731
    p0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}

    @jax.jit
    def solve(a):
        sol = jscipy.minimize(fun, p0, a, bounds=({"w": None, "b": 0.0}, 0.5 + 0 * a[0]),
                              throw=False)
        return sol.params, sol.status.code

    params, code = solve(jnp.array([0.1, 0.2, 0.9]))
    assert params["w"].dtype == jnp.float32 and params["b"].dtype == jnp.float32
    np.testing.assert_allclose(params["w"], [0.1, 0.2, 0.5], atol=1e-5)
    assert float(params["b"]) == pytest.approx(0.5)
    assert int(code) == int(RESULTS.successful)
    # vmap runs the problems one after the other, each with its own status.
    batch = jnp.array([[0.1, 0.2, 0.3], [jnp.nan, 0.0, 0.0]])
    params, codes = jax.vmap(solve)(batch)
    assert int(codes[0]) == int(RESULTS.successful)
    assert int(codes[1]) != int(RESULTS.successful)
    np.testing.assert_allclose(params["w"][0], batch[0], atol=1e-5)


def test_scipy_success_that_fails_our_check_is_not_successful():
    # SciPy's L-BFGS-B stops at maxiter=1 ... and with a huge ftol it even says "success"
    # after one step; jaxopt2's gradient check must refuse that point.
    fun = lambda x, a: jnp.sum(a * (x - 1.0) ** 2)  # noqa: E731
    sol = jscipy.minimize(fun, jnp.zeros(4), jnp.array([1.0, 10.0, 100.0, 1000.0]),
                          options={"ftol": 0.9}, throw=False)
    assert bool(sol.state["success"])
    assert sol.status == RESULTS.max_steps_reached
    with pytest.raises(RuntimeError, match="max_steps_reached"):
        jscipy.minimize(fun, jnp.zeros(4), jnp.array([1.0, 10.0, 100.0, 1000.0]),
                        options={"ftol": 0.9})


def test_bad_input():
    fun = lambda x, a: jnp.sum(x**2)  # noqa: E731
    with pytest.raises(ValueError, match="l-bfgs-b.*trust-krylov"):
        jscipy.minimize(fun, jnp.zeros(2), method="LBFGS")
    with pytest.raises(ValueError, match="does not take bounds"):
        jscipy.minimize(fun, jnp.zeros(2), method="BFGS", bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="structure"):
        jscipy.minimize(lambda p, a: jnp.sum(p["w"] ** 2), {"w": jnp.zeros(2)},
                        bounds=({"v": 0.0}, None))
    with pytest.raises(ValueError, match="lower"):
        jscipy.minimize(fun, jnp.zeros(2), bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="NaN"):
        jscipy.minimize(fun, jnp.zeros(2), bounds=(jnp.array([0.0, jnp.nan]), None))
    with pytest.raises(TypeError, match="ImplicitAdjoint"):
        jscipy.minimize(fun, jnp.zeros(2), adjoint=jaxopt2.UnrolledAdjoint())
    with pytest.raises(ValueError, match="hybr"):
        jscipy.root(lambda y, a: y, jnp.zeros(2), method="newton")
    with pytest.raises(ValueError, match="loss"):
        jscipy.least_squares(lambda p, a: p, jnp.zeros(2), options={"loss": "huber"})
    with pytest.raises(ValueError, match="bounds"):
        jscipy.least_squares(lambda p, a: p, jnp.zeros(2), method="lm", bounds=(0.0, 1.0))
    with pytest.raises(Exception, match="x_scale"):  # SciPy's own check, raised as is
        jscipy.least_squares(lambda p, a: p, jnp.zeros(2), options={"x_scale": -1.0})
    with pytest.raises(ValueError, match="at least as many residuals"):
        jscipy.least_squares(lambda p, a: p[:1], jnp.zeros(2), method="lm")
