"""`verbose=True` on the front doors prints one line per step under jit; False prints nothing
and leaves the traced program unchanged."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2

pytestmark = pytest.mark.float64  # written for float64 tolerances


def _objective(x, a):
    return jnp.sum((x - a) ** 2) + jnp.sum(x**4)


def _cube(y, a):
    return y**3 - a


def _lines(capfd):
    jax.effects_barrier()
    return [line for line in capfd.readouterr().out.splitlines() if line.strip()]


def _number(line, label):
    match = re.search(re.escape(label) + r" = ([-+0-9.eE]+|nan|inf)", line)
    assert match, f"{label!r} missing from {line!r}"
    return float(match.group(1))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_minimize_prints_each_step_under_jit(capfd, dtype):
    seen = []

    def callback(step, params, value, grad_norm):
        seen.append((int(step), float(value), float(grad_norm)))

    @jax.jit
    def solve(a):
        sol = jaxopt2.minimize(_objective, jnp.zeros(3, dtype), a,
                               solver=jaxopt2.GradientDescent(), verbose=True,
                               callback=callback)
        return sol.stats["num_steps"]

    num_steps = int(solve(jnp.ones(3, dtype)))
    lines = _lines(capfd)
    assert num_steps > 1 and len(lines) == num_steps == len(seen)
    seen.sort()
    for k, line in enumerate(lines, start=1):
        assert line.startswith(f"GradientDescent step {k}:")
        # The printed values are the ones the user's callback receives.
        np.testing.assert_allclose(_number(line, "f"), seen[k - 1][1], rtol=1e-5)
        np.testing.assert_allclose(_number(line, "|grad|"), seen[k - 1][2], rtol=1e-3)
        assert _number(line, "|dx|") > 0
        assert _number(line, "step size") > 0


def test_minimize_step_length_is_the_step_taken(capfd):
    # One gradient step from 0 on |x - a|² with step size 1/2 lands exactly on a: |dx| = max|a|.
    a = jnp.array([0.5, -2.0], jnp.float64)
    jaxopt2.minimize(lambda x, a: jnp.sum((x - a) ** 2), jnp.zeros(2, jnp.float64), a,
                     solver=jaxopt2.GradientDescent(step_size=0.5), verbose=True,
                     max_steps=1, throw=False)
    (line,) = _lines(capfd)
    np.testing.assert_allclose(_number(line, "|dx|"), 2.0, rtol=1e-6)
    np.testing.assert_allclose(_number(line, "f"), 0.0, atol=1e-12)


def test_verbose_false_prints_nothing_and_costs_nothing(capfd):
    a = jnp.ones(3, jnp.float32)
    x0 = jnp.zeros(3, jnp.float32)

    def solve(verbose):
        def run(a):
            kwargs = {} if verbose is None else dict(verbose=verbose)
            return jaxopt2.minimize(_objective, x0, a, solver=jaxopt2.GradientDescent(),
                                    **kwargs).params
        return run

    jax.jit(solve(False))(a).block_until_ready()
    assert _lines(capfd) == []
    assert str(jax.make_jaxpr(solve(False))(a)) == str(jax.make_jaxpr(solve(None))(a))
    assert "debug" not in str(jax.make_jaxpr(solve(False))(a))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_equation_front_doors_print_under_jit(capfd, dtype):
    a = jnp.array([2.0, 3.0], dtype)
    y0 = jnp.ones(2, dtype)
    cases = [
        ("root_find", lambda a: jaxopt2.root_find(
            _cube, y0, a, solver=jaxopt2.NewtonRaphson(), verbose=True), "NewtonRaphson",
         "|F|"),
        ("least_squares", lambda a: jaxopt2.least_squares(
            _cube, y0, a, solver=jaxopt2.GaussNewton(), verbose=True), "GaussNewton", "cost"),
        ("fixed_point", lambda a: jaxopt2.fixed_point(
            lambda y, a: jnp.cos(y) * a / 4, y0, a, solver=jaxopt2.FixedPointIteration(),
            verbose=True), "FixedPointIteration", "|g(y) - y|"),
    ]
    for door, run, name, label in cases:
        num_steps = int(jax.jit(lambda a, run=run: run(a).stats["num_steps"])(a))
        lines = _lines(capfd)
        assert num_steps >= 1 and len(lines) == num_steps, door
        for k, line in enumerate(lines, start=1):
            assert line.startswith(f"{name} step {k}:"), line
            assert np.isfinite(_number(line, label)) and np.isfinite(_number(line, "|dx|"))
        # The measure printed at the last step is what the solution reports.
        sol = run(a)
        jax.effects_barrier()
        capfd.readouterr()
        f = np.asarray(sol.value, np.float64)
        expected = {"|F|": np.max(np.abs(f)), "cost": 0.5 * np.sum(f**2),
                    "|g(y) - y|": np.max(np.abs(f - np.asarray(sol.params)))}[label]
        np.testing.assert_allclose(_number(lines[-1], label), expected,
                                   rtol=1e-3, atol=1e-12)


def test_verbose_under_vmap_prints_every_problem(capfd):
    a = jnp.array([2.0, 30.0], jnp.float32)
    solve = jax.jit(jax.vmap(lambda a: jaxopt2.root_find(
        _cube, jnp.ones((), jnp.float32), a, solver=jaxopt2.NewtonRaphson(),
        verbose=True).stats["num_steps"]))
    num_steps = solve(a)
    lines = _lines(capfd)
    # One line per problem for every step the batch takes.
    assert len(lines) == 2 * int(num_steps.max())
    assert all(line.startswith("NewtonRaphson step") for line in lines)


def test_verbose_must_be_bool():
    with pytest.raises(TypeError, match="True or False"):
        jaxopt2.minimize(_objective, jnp.zeros(2), jnp.ones(2),
                         solver=jaxopt2.GradientDescent(), verbose=frozenset({"loss"}))
    with pytest.raises(TypeError, match="True or False"):
        jaxopt2.root_find(_cube, jnp.ones(2), jnp.ones(2), solver=jaxopt2.NewtonRaphson(),
                          verbose=1)
