"""A Python float inside `args` is a constant of the problem: derivatives with respect to the
other arguments must work in both modes (jacfwd used to fail: the float was counted as
differentiable and the objective was retraced with an array in its place)."""

import jax
import jax.numpy as jnp
import pytest

import jaxopt2


def _logistic(w, data):
    X, y, lam = data
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * lam * jnp.sum(w**2)


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.parametrize("mode", ["jacfwd", "jacrev"])
def test_python_float_in_args_is_a_constant(mode):
    X = jax.random.normal(jax.random.PRNGKey(0), (20, 3))
    y = (X[:, 0] > 0).astype(X.dtype)
    lam = 0.05  # a Python float, not an array

    def solve(y):
        return jaxopt2.minimize(_logistic, jnp.zeros(3), (X, y, lam),
                                solver=jaxopt2.Newton()).params

    jac = getattr(jax, mode)(solve)(y)
    w = solve(y)
    # ∇_w f = Xᵀ(σ(Xw) − y)/n + λw, so ∂/∂y ∇_w f = −Xᵀ/n and dw/dy = H⁻¹Xᵀ/n.
    H = jax.hessian(_logistic)(w, (X, y, lam))
    expected = jnp.linalg.solve(H, X.T / X.shape[0])
    assert jac.shape == (3, 20)
    assert jnp.allclose(jac, expected, rtol=1e-3, atol=1e-5)
