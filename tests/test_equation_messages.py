"""`max_steps_reached` from the equation doors says by how much the tolerance was missed
(issue 20): the final residual over the solver's tolerance atol + rtol·max|F(y₀)| for
`root_find` and `fixed_point`, the cost over its start for `least_squares`; the numbers are
checked against the same measures computed from a `throw=False` solve."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2


def F(y, _):
    return jnp.array([y[0] ** 3 - 2.0, y[1] - 1.0])


def _ratio(message: str, pattern: str) -> float:
    match = re.search(pattern, message)
    assert match, message
    return float(match.group(1))


@pytest.mark.parametrize("solver", [jaxopt2.NewtonRaphson(), jaxopt2.Broyden(),
                                    jaxopt2.NewtonKrylov(rtol=1e-6)])
def test_root_find_reports_the_residual_over_its_tolerance(solver):
    y0 = jnp.array([10.0, 0.0])
    sol = jaxopt2.root_find(F, y0, None, solver=solver, max_steps=2, throw=False)
    assert jaxopt2.status_name(sol.status) == "max_steps_reached"
    rtol = solver.rtol if solver.rtol is not None else float(jnp.finfo(y0.dtype).eps) ** 0.5
    want = float(jnp.max(jnp.abs(F(sol.params, None)))) / (
        solver.atol + rtol * float(jnp.max(jnp.abs(F(y0, None)))))
    with pytest.raises(RuntimeError, match="max_steps_reached") as err:
        jaxopt2.root_find(F, y0, None, solver=solver, max_steps=2)
    got = _ratio(str(err.value), r"After 2 steps max\|F\(y\)\| was ([0-9.e+-]+)× its tolerance")
    np.testing.assert_allclose(got, want, rtol=6e-3)  # the message prints 3 significant digits
    assert got > 1


def test_fixed_point_reports_the_residual_over_its_tolerance():
    g = lambda y, _: jnp.cos(y)  # noqa: E731
    y0 = jnp.array([1.0, 0.2])
    solver = jaxopt2.FixedPointIteration(rtol=1e-6, atol=1e-9)
    sol = jaxopt2.fixed_point(g, y0, None, solver=solver, max_steps=4, throw=False)
    want = float(jnp.max(jnp.abs(jnp.cos(sol.params) - sol.params))) / (
        1e-9 + 1e-6 * float(jnp.max(jnp.abs(jnp.cos(y0) - y0))))
    with pytest.raises(RuntimeError) as err:
        jaxopt2.fixed_point(g, y0, None, solver=solver, max_steps=4)
    got = _ratio(str(err.value), r"max\|g\(y\) − y\| was ([0-9.e+-]+)× its tolerance")
    np.testing.assert_allclose(got, want, rtol=6e-3)


def test_least_squares_reports_the_cost_over_its_start():
    res = lambda y, _: jnp.stack([10.0 * (y[1] - y[0] ** 2), 1.0 - y[0]])  # noqa: E731
    y0 = jnp.array([-1.2, 1.0])
    solver = jaxopt2.LevenbergMarquardt()
    sol = jaxopt2.least_squares(res, y0, None, solver=solver, max_steps=2, throw=False)
    want = float(jnp.sum(res(sol.params, None) ** 2) / jnp.sum(res(y0, None) ** 2))
    with pytest.raises(RuntimeError) as err:
        jaxopt2.least_squares(res, y0, None, solver=solver, max_steps=2)
    got = _ratio(str(err.value), r"the cost ½‖r‖² was ([0-9.e+-]+)× its value at the start")
    np.testing.assert_allclose(got, want, rtol=6e-3)


def test_bisection_is_not_judged_on_a_residual_tolerance():
    """Bisection's rtol/atol bound the bracket, not |F|: its message reports the residual
    against the start instead of calling it a tolerance."""
    with pytest.raises(RuntimeError) as err:
        jaxopt2.root_find(lambda x, _: x**3 - 2.0, jnp.array(0.0), None,
                          solver=jaxopt2.Bisection(lower=0.0, upper=5.0), max_steps=3)
    text = str(err.value)
    assert "max_steps_reached" in text, text
    assert "its value at the start" in text and "its tolerance atol" not in text, text
