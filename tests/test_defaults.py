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


@pytest.mark.float64
def test_lbfgs_defaults_solve_the_cond_1e4_logistic_benchmark():
    # The library's own condition-1e4 benchmark problem: LBFGS needs about 400 steps in
    # float64, so the old default of 256 raised max_steps_reached here.
    data = _synthetic()
    p0 = {"w": jnp.zeros(100), "b": jnp.zeros(())}
    sol = jax.jit(lambda d: jaxopt2.minimize(_logistic, p0, d, solver=jaxopt2.LBFGS()))(data)
    assert sol.status == jaxopt2.RESULTS.successful
    assert int(sol.stats["num_steps"]) > 256
    # A dense Newton step from the answer: the distance left to the minimizer. (It is
    # 2.2e-5 here, above rtol·s(x) = 1e-6: L-BFGS's secant estimate of the distance reads the
    # curvature of its last steps, which is larger than the flattest direction's.)
    flat, unravel = jax.flatten_util.ravel_pytree(sol.params)
    f = lambda v: _logistic(unravel(v), data)  # noqa: E731
    newton = jnp.linalg.solve(jax.hessian(f)(flat), jax.grad(f)(flat))
    assert float(jnp.max(jnp.abs(newton))) <= 1e-4 * max(float(jnp.max(jnp.abs(flat))), 1.0)


def _quartic(p, a):
    return jnp.sum((p - a) ** 4)


@pytest.mark.parametrize("jit", [False, True])
def test_max_steps_message_says_by_how_much(jit):
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
    run = jax.jit(lambda a: solve(a, True).params) if jit else (lambda a: solve(a, True).params)
    with pytest.raises(Exception, match=r"max_steps_reached") as info:
        jax.block_until_ready(run(a))
    text = str(info.value)
    assert f"After 3 steps ‖∇f‖∞ was {ratio:.3g}× its tolerance" in text, text
    assert "throw=False" in text
