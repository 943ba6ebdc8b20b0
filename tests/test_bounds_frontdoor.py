"""`minimize(..., bounds=, prox=, prox_args=)` (issue 15): what the front door accepts, what it
rejects with a message saying what to fix, and what it promises (a start outside the box is
projected, infinite bounds change nothing, `value` is f alone, prox_args differentiable)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2 as J


def quad(p, c):
    return jnp.sum((p["a"] - c) ** 2) + jnp.sum((p["b"] + c[:2]) ** 2)


# float32 explicitly: modules are imported with x64 on (tests/conftest.py)
P0 = {"a": jnp.zeros(3, jnp.float32), "b": jnp.zeros(2, jnp.float32)}
C = jnp.array([1.0, -2.0, 3.0], jnp.float32)
TOL = 1e-3  # float32's default rtol
PG = J.ProximalGradient()


def soft(v, lam, scale):
    return jax.tree_util.tree_map(
        lambda x: jnp.sign(x) * jnp.maximum(jnp.abs(x) - lam * scale, 0.0), v)


def test_bounds_pytree_with_none_leaf_and_scalar():
    # a: [0, 2] per entry, b: unbounded (None leaf); the solution clips a = c to the box.
    sol = J.minimize(quad, P0, C, solver=PG, bounds=({"a": 0.0, "b": None}, 2.0))
    np.testing.assert_allclose(sol.params["a"], [1.0, 0.0, 2.0], atol=TOL)
    np.testing.assert_allclose(sol.params["b"], [-1.0, 2.0], atol=TOL)
    # b ≤ 2 binds at 2: the scalar upper applies to every leaf
    np.testing.assert_allclose(sol.value, quad(sol.params, C), rtol=1e-6)  # f alone


def test_infinite_bounds_change_nothing_and_far_start_is_projected():
    free = J.minimize(quad, P0, C, solver=PG)
    inf = J.minimize(quad, P0, C, solver=PG, bounds=(-jnp.inf, jnp.inf))
    np.testing.assert_allclose(inf.params["a"], free.params["a"], atol=TOL)
    outside = {"a": jnp.array([10.0, -10.0, 10.0], jnp.float32), "b": P0["b"]}
    sol = J.minimize(quad, outside, C, solver=PG, bounds=({"a": 0.0, "b": None}, 2.0))
    assert J.status_name(sol.status) == "successful"
    np.testing.assert_allclose(sol.params["a"], [1.0, 0.0, 2.0], atol=TOL)


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
def test_prox_args_are_differentiable_and_value_is_smooth_part():
    # min (x − c)² + λ|x| has x = sign(c)·max(|c| − λ/2, 0): dx/dλ = −sign(c)/2 where x ≠ 0.
    f = lambda x, c: jnp.sum((x - c) ** 2)  # noqa: E731
    solve = lambda lam: J.minimize(f, jnp.zeros(3, jnp.float32), C, solver=PG, prox=soft,  # noqa: E731
                                   prox_args=lam)
    sol = solve(1.0)
    np.testing.assert_allclose(sol.params, [0.5, -1.5, 2.5], atol=TOL)
    np.testing.assert_allclose(sol.value, f(sol.params, C), rtol=1e-6)
    np.testing.assert_allclose(jax.jacfwd(lambda l: solve(l).params)(1.0), [-0.5, 0.5, -0.5],
                               atol=TOL)
    np.testing.assert_allclose(jax.grad(lambda l: solve(l).value)(1.0),
                               2 * np.dot([0.5, -1.5, 2.5] - np.asarray(C), [-0.5, 0.5, -0.5]),
                               rtol=TOL)


@pytest.mark.parametrize("bounds, match", [
    ((0.0,), "pair"),
    (({"a": 0.0}, None), "structure"),
    (({"a": jnp.zeros(4), "b": None}, None), r"lower\['a'\].*shape"),
    ((None, {"a": jnp.array([1.0, jnp.nan, 1.0]), "b": None}), r"upper\['a'\].*NaN"),
    (({"a": 1.0, "b": None}, {"a": jnp.array([2.0, 0.5, 2.0]), "b": None}),
     r"lower\['a'\] > upper\['a'\] at index \(1,\)"),
])
def test_bad_bounds_are_rejected_naming_the_leaf(bounds, match):
    with pytest.raises(ValueError, match=match):
        J.minimize(quad, P0, C, solver=PG, bounds=bounds)


def test_solvers_without_support_name_those_with_it():
    with pytest.raises(ValueError, match=r"LBFGS does not take `bounds`.*ProximalGradient"):
        J.minimize(quad, P0, C, solver=J.LBFGS(), bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"NewtonCG does not take `prox`.*ProximalNewton"):
        J.minimize(quad, P0, C, solver=J.NewtonCG(), prox=soft, prox_args=1.0)
    with pytest.raises(ValueError, match="together"):
        J.minimize(quad, P0, C, solver=PG, bounds=(0.0, 1.0), prox=soft, prox_args=1.0)


def test_bad_prox_is_rejected():
    with pytest.raises(TypeError, match="prox"):
        J.minimize(quad, P0, C, solver=PG, prox=1.0)
    with pytest.raises(ValueError, match="structure"):
        J.minimize(quad, P0, C, solver=PG, prox=lambda v, a, s: v["a"], prox_args=None)


def test_traced_bounds_under_jit_and_vmap():
    """Bounds may be traced (jit, vmap over boxes): no concrete checks then, same answers."""
    f = lambda x, c: jnp.sum((x - c) ** 2)  # noqa: E731
    solve = jax.jit(jax.vmap(lambda lo: J.minimize(f, jnp.zeros(3, jnp.float32), C, solver=PG,
                                                   bounds=(lo, None)).params))
    out = solve(jnp.array([0.0, 2.0]))
    np.testing.assert_allclose(out, [[1.0, 0.0, 3.0], [2.0, 2.0, 3.0]], atol=TOL)


def test_callback_reports_the_gradient_mapping():
    """With bounds the callback's gradient norm is the projected gradient's, which vanishes at
    the solution, not ∇f's (4 at the active bound)."""
    f = lambda x, c: jnp.sum((x - c) ** 2)  # noqa: E731
    seen = []
    sol = J.minimize(f, jnp.zeros(3, jnp.float32), C, solver=PG, bounds=(0.0, None),
                     callback=lambda step, params, value, gnorm: seen.append(float(gnorm)))
    jax.effects_barrier()
    np.testing.assert_allclose(sol.params, [1.0, 0.0, 3.0], atol=TOL)
    assert float(jnp.max(jnp.abs(jax.grad(f)(sol.params, C)))) > 3.9  # ∇f = 4 at x₂ = 0
    assert seen and seen[-1] <= 1e-2 * max(seen)
