"""What a user who takes the defaults gets (issue 20): a step budget that fits the solver, and
a `max_steps_reached` message that says by how much the tolerance was missed."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2._base import default_rtol

LAM = 1e-3


def _logistic(p, data):
    z = data[0] @ p["w"] + p["b"]
    return jnp.mean(jnp.logaddexp(0.0, z) - data[1] * z) + 0.5 * LAM * jnp.sum(p["w"] ** 2)


def _synthetic(n=2_000, d=100, cond=1e4, seed=0):
    """benchmarks/problems.py's synthetic logistic regression (the `--quick` size): features
    scaled over log-spaced s so that the Hessian at 0 has condition number about `cond`."""
    rng = np.random.default_rng(seed)
    s = np.logspace(np.log10(2 * np.sqrt(LAM) * 0.3), np.log10(2 * np.sqrt(cond * LAM * 1.09)), d)
    X = rng.standard_normal((n, d)) * s
    w = rng.standard_normal(d)
    w *= 2.0 / np.std(X @ w)
    y = (X @ w + 0.5 + rng.logistic(size=n) > 0).astype(np.float64)
    return jnp.asarray(X), jnp.asarray(y)


def test_default_budgets_fit_the_solver():
    assert jaxopt2.Newton.default_max_steps == jaxopt2.NewtonCG.default_max_steps == 256
    assert jaxopt2.LBFGS.default_max_steps == jaxopt2.BFGS.default_max_steps == 1000
    assert jaxopt2.LBFGSB.default_max_steps == 1000
    assert jaxopt2.GradientDescent.default_max_steps == 5000
    assert jaxopt2.ProximalGradient.default_max_steps == 5000
    for cls in (jaxopt2.LevenbergMarquardt, jaxopt2.GaussNewton, jaxopt2.NewtonRaphson,
                jaxopt2.NewtonKrylov):
        assert cls.default_max_steps == 256
    assert jaxopt2.Broyden.default_max_steps == jaxopt2.Anderson.default_max_steps == 1000
    assert jaxopt2.FixedPointIteration.default_max_steps == 5000


def test_fixed_point_default_budget_is_the_solvers_own():
    # A contraction of rate 0.99: plain iteration needs about 1,400 steps to the default
    # float32 tolerance, so the equation doors' old fixed budget of 256 failed here.
    def g(y, a):
        return 0.99 * y + 0.01 * a

    a = jnp.array([1.0, -2.0, 3.0])
    sol = jaxopt2.fixed_point(g, jnp.zeros(3), a, solver=jaxopt2.FixedPointIteration(),
                              throw=False)
    assert sol.status == jaxopt2.RESULTS.successful
    assert int(sol.stats["num_steps"]) > 256
    np.testing.assert_allclose(sol.params, a, rtol=1e-2)
    short = jaxopt2.fixed_point(g, jnp.zeros(3), a, solver=jaxopt2.FixedPointIteration(),
                                max_steps=256, throw=False)
    assert short.status == jaxopt2.RESULTS.max_steps_reached


@pytest.mark.float64
def test_lbfgs_defaults_solve_the_cond_1e4_logistic_benchmark():
    # The library's own condition-1e4 benchmark problem: LBFGS needs about 400 steps in
    # float64, so the old default of 256 raised max_steps_reached here.
    data = _synthetic()
    p0 = {"w": jnp.zeros(100), "b": jnp.zeros(())}
    sol = jax.jit(lambda d: jaxopt2.minimize(_logistic, p0, d, solver=jaxopt2.LBFGS()))(data)
    assert sol.status == jaxopt2.RESULTS.successful
    assert int(sol.stats["num_steps"]) > 256
    # A dense Newton step from the answer: the distance left to the minimizer, within a small
    # factor of rtol·s(x) = 1e-6 (it was 2.2e-5 before LBFGS also required ‖g‖₂/μ̂ ≤ rtol·s(x),
    # μ̂ the least secant curvature of its last steps: its quasi-Newton step read the curvature
    # of those steps, larger than the flattest direction's).
    flat, unravel = jax.flatten_util.ravel_pytree(sol.params)
    f = lambda v: _logistic(unravel(v), data)  # noqa: E731
    newton = jnp.linalg.solve(jax.hessian(f)(flat), jax.grad(f)(flat))
    assert float(jnp.max(jnp.abs(newton))) <= 3e-6 * max(float(jnp.max(jnp.abs(flat))), 1.0)


def _quartic(p, a):
    return jnp.sum((p - a) ** 4)


def test_max_steps_message_says_by_how_much():
    a = jnp.arange(3.0)
    x0 = jnp.zeros(3)

    def solve(a, throw):
        return jaxopt2.minimize(_quartic, x0, a, solver=jaxopt2.GradientDescent(), max_steps=3,
                                throw=throw)

    sol = solve(a, False)
    assert sol.status == jaxopt2.RESULTS.max_steps_reached
    grad = jax.grad(_quartic)
    tol = default_rtol(jnp.float32) * float(jnp.max(jnp.abs(grad(x0, a))))
    ratio = float(jnp.max(jnp.abs(grad(sol.params, a)))) / tol
    assert ratio > 1
    # outside jit (a concrete status) and inside (the message comes from a host callback)
    for run in (lambda a: solve(a, True).params, jax.jit(lambda a: solve(a, True).params)):
        with pytest.raises(Exception, match=r"max_steps_reached") as info:
            jax.block_until_ready(run(a))
        text = str(info.value)
        assert f"After 3 steps ‖∇f‖∞ was {ratio:.3g}× its tolerance" in text, text
        assert "throw=False" in text


# --- SketchedNewton: no sketch where it would not be smaller than the data


def _glm(n, d, seed=0):
    X = jax.random.normal(jax.random.key(seed), (n, d))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(X.dtype)
    return X, y


def _mean_logistic(w, data):
    z = data[0] @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - data[1] * z) + 0.05 * jnp.sum(w**2)


def _glm_sqrt_hessian(w, data):
    X = data[0]
    s = jax.nn.sigmoid(X @ w)
    return jnp.sqrt(s * (1 - s) / X.shape[0])[:, None] * X, 0.1


def test_sketched_newton_falls_back_to_the_exact_hessian():
    # 150 examples, d = 20: the default sample max(10d, 100) = 200 is not a tenth of the
    # data, so every step uses the exact Hessian, whatever the key (the old default refused
    # this data, and drew 150 of 150 rows with replacement for the Newton sketch).
    data = _glm(150, 20)
    solve = jax.jit(lambda key: jaxopt2.minimize(
        _mean_logistic, jnp.zeros(20), data, solver=jaxopt2.SketchedNewton(key=key)))
    a, b = solve(jax.random.key(0)), solve(jax.random.key(1))
    assert a.status == b.status == jaxopt2.RESULTS.successful
    np.testing.assert_array_equal(a.params, b.params)  # no randomness left
    f = lambda w: _mean_logistic(w, data)  # noqa: E731
    w = a.params
    newton = jnp.linalg.solve(jax.hessian(f)(w), jax.grad(f)(w))  # the distance left
    assert float(jnp.max(jnp.abs(newton))) <= 1e-4 * max(float(jnp.max(jnp.abs(w))), 1.0)
    # the Newton sketch's model is then BᵀB + R exactly
    sketch = jaxopt2.SketchedNewton(sketch="gaussian", sqrt_hessian=_glm_sqrt_hessian)
    h = sketch._sketched_hessian(lambda v: v, w, data, jax.random.key(0))
    np.testing.assert_allclose(h, jax.hessian(f)(w), rtol=1e-5, atol=1e-6)


def test_sketched_newton_samples_without_replacement():
    solver = jaxopt2.SketchedNewton()
    rows = jnp.arange(1000.0)
    assert solver._sample_size(1000, 5) == 100 and solver._sample_size(999, 5) is None
    assert jaxopt2.SketchedNewton(sketch_size=150)._sample_size(150, 20) is None
    batch = solver._draw_batch((rows,), jax.random.key(3), 5)[0]
    assert batch.shape == (100,) and np.unique(np.asarray(batch)).size == 100
