"""Half precision (issue 13, item 8): every front door either solves float16/bfloat16
problems (in float32, returned in the input dtype) or refuses them with a clear TypeError."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2

# float64 tolerances; slow: every solver in half precision, each a compile
pytestmark = [pytest.mark.float64, pytest.mark.slow]

HALF = [jnp.float16, jnp.bfloat16]
A = np.array([1.0, 2.0, 3.0])


def quartic(p, a):
    return jnp.sum((p - a) ** 2 * jnp.arange(1.0, 4.0, dtype=p.dtype)) + 0.1 * jnp.sum(p**4)


def _reference(run):
    return np.asarray(run(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32).params,
                      np.float64)


def _check(run, dtype):
    sol = run(dtype)
    assert jaxopt2.status_name(sol.status) == "successful"
    assert sol.params.dtype == jnp.dtype(dtype)
    ref = _reference(run)
    # the float32 answer rounded once: within 2 ulps of the input dtype
    ulp = float(jnp.finfo(dtype).eps) * np.abs(ref)
    np.testing.assert_array_less(np.abs(np.asarray(sol.params, np.float64) - ref), 2 * ulp)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("solver", [jaxopt2.Newton, jaxopt2.LBFGS])
def test_minimize_half(solver, dtype):
    _check(lambda dt: jaxopt2.minimize(quartic, jnp.zeros(3, dt), jnp.asarray(A, dt),
                                       solver=solver(), throw=False), dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_least_squares_half(dtype):
    r = lambda p, a: jnp.concatenate([p - a, 0.3 * p**2])
    _check(lambda dt: jaxopt2.least_squares(r, jnp.zeros(3, dt), jnp.asarray(A, dt),
                                            solver=jaxopt2.GaussNewton(), throw=False), dtype)


@pytest.mark.parametrize("solver", [jaxopt2.NewtonRaphson, jaxopt2.NewtonKrylov])
def test_root_find_half(solver):
    F = lambda y, a: y**3 + y - a
    _check(lambda dt: jaxopt2.root_find(F, jnp.zeros(3, dt), jnp.asarray(A, dt),
                                        solver=solver(), throw=False), jnp.float16)


@pytest.mark.parametrize("solver", [jaxopt2.FixedPointIteration, jaxopt2.Anderson])
def test_fixed_point_half(solver):
    g = lambda y, a: 0.5 * jnp.cos(y) + a
    _check(lambda dt: jaxopt2.fixed_point(g, jnp.zeros(3, dt), jnp.asarray(A, dt),
                                          solver=solver(), throw=False), jnp.float16)


def test_half_under_jit_vmap_and_grad():
    """The cast composes with jit, vmap and grad; the derivative is d y*/d a of the float32
    problem (here y* = a / 2 for f = (y − a)² + y², so dy/da = 1/2)."""
    f = lambda p, a: jnp.sum((p - a) ** 2 + p**2)
    solve = lambda a: jaxopt2.minimize(f, jnp.zeros(2, jnp.float16), a,
                                       solver=jaxopt2.Newton()).params
    a = jnp.array([[1.0, 2.0], [3.0, 4.0]], jnp.float16)
    out = jax.jit(jax.vmap(solve))(a)
    assert out.dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(a, np.float32) / 2)
    g = jax.grad(lambda a: solve(a).astype(jnp.float32).sum())(a[0])
    np.testing.assert_allclose(np.asarray(g, np.float32), [0.5, 0.5], rtol=1e-3)


def test_mixed_pytree_keeps_each_dtype():
    f = lambda p, a: jnp.sum((p["h"] - 1.0) ** 2) + jnp.sum((p["s"] - 2.0) ** 2)
    p0 = {"h": jnp.zeros(2, jnp.bfloat16), "s": jnp.zeros(2, jnp.float32)}
    sol = jaxopt2.minimize(f, p0, None, solver=jaxopt2.BFGS())
    assert sol.params["h"].dtype == jnp.bfloat16 and sol.params["s"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(sol.params["h"], np.float32), 1.0)


def test_bisection_runs_natively_in_half():
    sol = jaxopt2.root_find(lambda y, a: y**3 - a, jnp.zeros((), jnp.float16),
                            jnp.asarray(2.0, jnp.float16),
                            solver=jaxopt2.Bisection(lower=0.0, upper=4.0))
    assert sol.params.dtype == jnp.float16
    assert abs(float(sol.params) - 2.0 ** (1 / 3)) <= 2 * float(jnp.finfo(jnp.float16).eps) * 1.26


def test_nystrom_sgd_refuses_half_at_init():
    opt = jaxopt2.optimizers.nystrom_sgd(learning_rate=0.1)
    with pytest.raises(TypeError, match="float32"):
        opt.init({"w": jnp.zeros(3, jnp.float16)})
