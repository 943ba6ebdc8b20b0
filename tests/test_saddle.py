"""Saddles, maxima and plateaus (issue 13): the curvature check where a minimize ends, the step
down along negative curvature with `escape_saddles=True`, and the statuses when neither
certifies a minimum (`saddle_point`, `plateau`). float32 first."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2 as J

F32 = jnp.float32
SOLVERS = {
    "Newton": J.Newton, "NewtonCG": J.NewtonCG, "RegularizedNewton": J.RegularizedNewton,
    "LBFGS": J.LBFGS, "GradientDescent": J.GradientDescent,
}


def status(sol):
    return J.status_name(sol.status)


def double_well(x, a):
    # saddle at (0, 0) (curvature −4a in y), minima at (0, ±√a); from (1, 0) every solver
    # reaches the saddle, since ∂f/∂y = 0 on the whole line y = 0
    return x[0] ** 2 + (x[1] ** 2 - a) ** 2


@pytest.mark.parametrize("name", SOLVERS)
def test_saddle_is_reported_and_escaped(name):
    x0, a = jnp.array([1.0, 0.0], F32), jnp.asarray(1.0, F32)
    stuck = J.minimize(double_well, x0, a, solver=SOLVERS[name](), throw=False)
    assert status(stuck) == "saddle_point"
    np.testing.assert_allclose(stuck.params[1], 0.0, atol=1e-6)
    sol = J.minimize(double_well, x0, a, solver=SOLVERS[name](), escape_saddles=True)
    assert status(sol) == "successful"
    np.testing.assert_allclose(jnp.abs(sol.params), [0.0, 1.0], atol=2e-3)
    assert float(sol.value) < float(stuck.value) - 0.9  # f(saddle) = 1, f(minimum) = 0
    # the Lanczos checks are counted: at the saddle, and (solvers that use curvature) at the
    # minimum; first-order solvers check only where the gradient is exactly zero
    checks = 1 if name in ("LBFGS", "GradientDescent") else 2
    assert int(sol.stats["num_hvp"]) >= checks * 2


def test_escape_fails_honestly_where_no_step_decreases_f():
    # −y² + 10¹²|y|³ decreases only for |y| < 7.5e-13: no trial step of the escape reaches
    # that far down, so the saddle is reported
    fun = lambda x, _: x[0] ** 2 - x[1] ** 2 + 1e12 * jnp.abs(x[1]) ** 3  # noqa: E731
    sol = J.minimize(fun, jnp.array([1.0, 0.0], F32), None, solver=J.NewtonCG(),
                     escape_saddles=True, throw=False)
    assert status(sol) == "saddle_point"
    with pytest.raises(RuntimeError, match="saddle_point"):
        J.minimize(fun, jnp.array([1.0, 0.0], F32), None, solver=J.NewtonCG(),
                   escape_saddles=True)


@pytest.mark.slow  # make test-slow
def test_escape_under_vmap_leaves_the_other_problems_alone():
    starts = jnp.array([[1.0, 0.0], [1.0, 0.5], [-2.0, -0.3]], F32)
    solve = lambda x0: J.minimize(double_well, x0, jnp.asarray(1.0, F32),  # noqa: E731
                                  solver=J.Newton(), escape_saddles=True, throw=False)
    batch = jax.vmap(solve)(starts)
    for i in range(3):
        one = solve(starts[i])
        assert status(one) == "successful"
        np.testing.assert_allclose(batch.params[i], one.params, atol=1e-5)
        assert int(batch.stats["num_steps"][i]) == int(one.stats["num_steps"])
    np.testing.assert_allclose(jnp.abs(batch.params[:, 1]), 1.0, atol=1e-3)


@pytest.mark.slow  # make test-slow
def test_derivative_after_an_escape_is_that_of_the_minimum():
    # y* = √a at the minimum reached after the escape: dy*/da = 1/(2√a)
    def y_star(a):
        sol = J.minimize(double_well, jnp.array([1.0, 0.0], F32), a, solver=J.Newton(),
                         escape_saddles=True)
        return jnp.abs(sol.params[1])

    a = jnp.asarray(2.0, F32)
    np.testing.assert_allclose(jax.jit(y_star)(a), jnp.sqrt(a), rtol=1e-3)
    np.testing.assert_allclose(jax.jit(jax.grad(y_star))(a), 0.5 / jnp.sqrt(a), rtol=1e-2)


@pytest.mark.parametrize("name", ["Newton", "LBFGS", "GradientDescent"])
def test_plateau_is_not_a_minimum(name):
    # exp(−200) underflows in float32: f ≡ 1, ∇f ≡ 0, ∇²f ≡ 0 around the start
    fun = lambda x, _: 1.0 - jnp.exp(-jnp.sum(x**2))  # noqa: E731
    sol = J.minimize(fun, jnp.array([10.0, 10.0], F32), None, solver=SOLVERS[name](),
                     throw=False)
    assert status(sol) == "plateau"
    with pytest.raises(RuntimeError, match="plateau"):
        J.minimize(fun, jnp.array([10.0, 10.0], F32), None, solver=SOLVERS[name]())


@pytest.mark.parametrize("name", ["Newton", "LBFGS"])
def test_flat_minimum_is_still_a_minimum(name):
    # x⁴ at 0: gradient and Hessian vanish, but f rises on both sides of the probe
    sol = J.minimize(lambda x, _: jnp.sum(x**4), jnp.zeros(2, F32), None,
                     solver=SOLVERS[name]())
    assert status(sol) == "successful"
    assert int(sol.stats["num_steps"]) == 0


def test_flat_inflection_is_a_saddle():
    # x³ at 0: gradient and Hessian vanish and f falls on one side
    sol = J.minimize(lambda x, _: jnp.sum(x**3), jnp.zeros(1, F32), None, solver=J.Newton(),
                     throw=False)
    assert status(sol) == "saddle_point"
