"""An absolute gradient tolerance the user sets is the scale asked for: the final curvature
check's `ill_conditioned` (a long Newton step left) must not refuse a point whose gradient
meets `atol` (warm-started inner solves of bilevel loops use rtol=0, atol>0 and stop at
their start), while the same point without an absolute tolerance is refused."""

import jax.numpy as jnp
import pytest

import jaxopt2
from jaxopt2 import RESULTS

D = jnp.array([1.0, 1e-2, 1e-4])


def _quadratic(x, d):
    return 0.5 * jnp.sum(d * (x - 1.0) ** 2)


@pytest.mark.parametrize("name", ["Newton", "NewtonCG"])
def test_gradient_within_atol_is_successful_at_start(name):
    # 1e-6 from x* along curvature 1e-4: gradient 1e-10... and 10 along it: gradient 1e-3.
    x0 = jnp.array([1.0, 1.0, 11.0])
    solver = getattr(jaxopt2, name)(rtol=0.0, atol=2e-3)
    sol = jaxopt2.minimize(_quadratic, x0, D, solver=solver, throw=False)
    assert sol.status == RESULTS.successful
    assert int(sol.stats["num_steps"]) == 0
    # The same start with a tolerance the gradient does not meet is solved, not refused.
    solver = getattr(jaxopt2, name)(rtol=0.0, atol=1e-4)
    sol = jaxopt2.minimize(_quadratic, x0, D, solver=solver, throw=False)
    assert sol.status == RESULTS.successful
    assert jnp.max(jnp.abs(sol.params - 1.0)) < 1.0  # ‖g‖ ≤ 1e-4 ⇒ error ≤ 1 along 1e-4
