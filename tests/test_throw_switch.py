"""The front door's `throw` is one switch for the whole solve (issue 13): with `throw=False` a
failed adjoint solve gives NaN derivatives instead of raising; with `throw=True` it raises
with the adjoint's status."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2 as J


def _rank_deficient():
    A = np.random.RandomState(0).randn(10, 3)
    A[:, 2] = A[:, 0] + A[:, 1]  # JᵀJ singular: the implicit derivative is not defined
    b = np.random.RandomState(1).randn(10)
    return jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)


@pytest.mark.parametrize("solver", [J.LevenbergMarquardt(), J.GaussNewton()],
                         ids=["LM", "GN"])
def test_throw_false_makes_failed_adjoint_nan(solver):
    A, b = _rank_deficient()

    def loss(bb, throw):
        sol = J.least_squares(lambda x, d: d[0] @ x - d[1], jnp.zeros(3, jnp.float32), (A, bb),
                              solver=solver, throw=throw)
        return sol.params.sum()

    g = jax.grad(loss)(b, False)
    assert np.all(np.isnan(g))
    with pytest.raises(Exception, match="adjoint_failed"):
        jax.grad(loss)(b, True)


def test_throw_false_keeps_a_working_adjoint():
    # the switch only silences failures: a regular problem's derivative is unchanged
    A, b = _rank_deficient()
    A = A.at[:, 2].add(1.0)
    ref = jnp.linalg.pinv(A).sum(0)  # d(sum x*)/db for x* = A⁺b

    def loss(bb, throw):
        return J.least_squares(lambda x, d: d[0] @ x - d[1], jnp.zeros(3, jnp.float32),
                               (A, bb), solver=J.LevenbergMarquardt(), throw=throw).params.sum()

    np.testing.assert_allclose(jax.grad(loss)(b, False), ref, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(jax.grad(loss)(b, True), ref, rtol=1e-3, atol=1e-4)

