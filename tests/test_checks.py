"""Bad input is rejected at trace time with a message that says what to fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2

pytestmark = pytest.mark.float64  # written for float64 tolerances

GD = jaxopt2.GradientDescent()


def quad(p, a):
    return jnp.sum((p["w"] - a) ** 2)


def test_integer_params_named():
    with pytest.raises(TypeError, match=r"params0\['w'\].*int32.*floating"):
        jaxopt2.minimize(quad, {"w": jnp.zeros(3, jnp.int32)}, jnp.ones(3), solver=GD)


def test_python_int_leaf_named():
    with pytest.raises(TypeError, match=r"params0\['w'\].*Python int"):
        jaxopt2.minimize(quad, {"w": 1}, jnp.ones(3), solver=GD)


def test_nonfinite_params_named():
    with pytest.raises(ValueError, match=r"params0\['w'\].*NaN"):
        jaxopt2.minimize(quad, {"w": jnp.array([0.0, jnp.nan, 0.0])}, jnp.ones(3), solver=GD)


def test_nonfinite_params_named_under_jit():
    # Concrete values closed over by a jitted function are still checked eagerly.
    bad = {"w": jnp.array([0.0, jnp.inf, 0.0])}
    with pytest.raises(ValueError, match=r"params0\['w'\].*NaN or infinity"):
        jax.jit(lambda a: jaxopt2.minimize(quad, bad, a, solver=GD).params)(jnp.ones(3))


def test_nonfinite_args_named():
    with pytest.raises(ValueError, match=r"args\[1\].*NaN"):
        jaxopt2.minimize(lambda p, a: jnp.sum((p - a[0] * a[1]) ** 2), jnp.zeros(2),
                         (jnp.ones(2), jnp.array([1.0, jnp.nan])), solver=GD)


def test_mismatched_structure_explained():
    with pytest.raises(ValueError, match="structure"):
        jaxopt2.minimize(quad, (jnp.zeros(3),), jnp.ones(3), solver=GD)


def test_wrong_shape_explained():
    with pytest.raises(ValueError, match=r"leaf shapes.*fun"):
        jaxopt2.minimize(lambda p, a: jnp.sum((p @ a) ** 2), jnp.zeros(4), jnp.ones((3, 3)),
                         solver=GD)


def test_nonscalar_objective():
    with pytest.raises(ValueError, match=r"scalar objective; got shape \(3,\)"):
        jaxopt2.minimize(lambda p, a: (p - a) ** 2, jnp.zeros(3), jnp.ones(3), solver=GD)


def test_integer_objective():
    with pytest.raises(TypeError, match="real floating-point scalar"):
        jaxopt2.minimize(lambda p, a: jnp.sum(p).astype(jnp.int32), jnp.zeros(3), None,
                         solver=GD)


def test_has_aux_requires_pair():
    with pytest.raises(TypeError, match=r"pair \(value, aux\)"):
        jaxopt2.minimize(lambda p, a: jnp.sum(p**2), jnp.zeros(3), None, solver=GD,
                         has_aux=True)


def test_has_aux_returned():
    sol = jaxopt2.minimize(lambda p, a: (jnp.sum((p - 1) ** 2), {"r": p - 1}), jnp.zeros(3),
                           None, solver=GD, has_aux=True)
    assert jnp.allclose(sol.aux["r"], sol.params - 1)


def test_solver_type_checked():
    with pytest.raises(TypeError, match="solver"):
        jaxopt2.minimize(quad, {"w": jnp.zeros(3)}, jnp.ones(3), solver="lbfgs")


def test_max_steps_checked():
    with pytest.raises(ValueError, match="max_steps"):
        jaxopt2.minimize(quad, {"w": jnp.zeros(3)}, jnp.ones(3), solver=GD, max_steps=-1)


def test_already_optimal_takes_no_step():
    sol = jaxopt2.minimize(quad, {"w": jnp.ones(3)}, jnp.ones(3), solver=GD)
    assert int(sol.stats["num_steps"]) == 0 and bool(sol.success)


def test_callback_called_each_step():
    seen = []
    sol = jaxopt2.minimize(quad, {"w": jnp.zeros(3)}, jnp.arange(3.0), solver=GD,
                           callback=lambda k, p, v, g: seen.append((int(k), float(v))))
    jax.block_until_ready(sol.params)
    assert [k for k, _ in seen] == list(range(1, int(sol.stats["num_steps"]) + 1))
    assert all(b[1] <= a[1] for a, b in zip(seen, seen[1:], strict=False))


def test_closed_over_values_are_differentiated():
    def outer(c):
        return jaxopt2.minimize(lambda p, a: jnp.sum((p - c) ** 2), jnp.zeros(2), None,
                                solver=GD).params.sum()
    assert jnp.allclose(jax.grad(outer)(1.5), 2.0, atol=1e-5)


def test_status_name_and_raised_message():
    quartic = lambda p, a: jnp.sum((p["w"] - a) ** 4)  # one gradient step cannot solve it
    sol = jaxopt2.minimize(quartic, {"w": jnp.zeros(3)}, jnp.arange(3.0), solver=GD,
                           max_steps=1, throw=False)
    assert jaxopt2.status_name(sol.status) == "max_steps_reached"
    with pytest.raises(RuntimeError, match=r"\(max_steps_reached\).*Increase `max_steps`"):
        jaxopt2.minimize(quartic, {"w": jnp.zeros(3)}, jnp.arange(3.0), solver=GD, max_steps=1)


# --- The equation front doors share the checks and add their own.

FPI = jaxopt2.FixedPointIteration()


def test_root_find_rejects_non_square_system():
    with pytest.raises(ValueError, match=r"same structure and leaf shapes.*least_squares"):
        jaxopt2.root_find(lambda y, a: jnp.concatenate([y, y]), jnp.zeros(2), None,
                          solver=jaxopt2.NewtonRaphson())


def test_fixed_point_rejects_changed_structure():
    with pytest.raises(ValueError, match="same structure"):
        jaxopt2.fixed_point(lambda y, a: (y["x"],), {"x": jnp.zeros(2)}, None, solver=FPI)


def test_equation_doors_check_solver_kind():
    with pytest.raises(TypeError, match=r"jaxopt2.least_squares.*LevenbergMarquardt.*LBFGS"):
        jaxopt2.least_squares(lambda p, a: p - a, jnp.zeros(2), jnp.ones(2),
                              solver=jaxopt2.LBFGS())
    with pytest.raises(TypeError, match=r"jaxopt2.root_find.*FixedPointIteration"):
        jaxopt2.root_find(lambda y, a: y - a, jnp.zeros(2), jnp.ones(2), solver=FPI)


def test_equation_doors_check_inputs():
    with pytest.raises(TypeError, match=r"y0\['x'\].*int32"):
        jaxopt2.fixed_point(lambda y, a: y, {"x": jnp.zeros(2, jnp.int32)}, None, solver=FPI)
    with pytest.raises(ValueError, match=r"args.*NaN"):
        jaxopt2.fixed_point(lambda y, a: 0.5 * y + a, jnp.zeros(2), jnp.array([0.0, jnp.nan]),
                            solver=FPI)
    with pytest.raises(TypeError, match=r"residual_fn.*output.*int32"):
        jaxopt2.least_squares(lambda p, a: jnp.round(p).astype(jnp.int32), jnp.zeros(2), None,
                              solver=jaxopt2.LevenbergMarquardt())
    with pytest.raises(ValueError, match=r"Calling `fn\(y0, args\)` failed"):
        jaxopt2.fixed_point(lambda y, a: a @ y, jnp.zeros(3), jnp.ones((2, 2)), solver=FPI)
    with pytest.raises(ValueError, match="max_steps"):
        jaxopt2.fixed_point(lambda y, a: 0.5 * y, jnp.ones(2), None, solver=FPI, max_steps=1.5)


def test_fixed_point_aux_and_callback():
    seen = []
    sol = jaxopt2.fixed_point(lambda y, a: (0.5 * y + a, {"double": 2 * y}), jnp.zeros(2),
                              jnp.ones(2), solver=FPI, has_aux=True,
                              callback=lambda k, y, r: seen.append(float(r)))
    jax.block_until_ready(sol.params)
    assert jnp.allclose(sol.params, 2.0, rtol=1e-7)
    assert jnp.allclose(sol.aux["double"], 2 * sol.params)
    assert len(seen) == int(sol.stats["num_steps"])
    # max|g(y) − y| halves every step for this map
    np.testing.assert_allclose(np.array(seen[1:]) / np.array(seen[:-1]), 0.5, rtol=1e-6)


def test_equation_doors_raise_on_failure():
    cubic = lambda y, a: y**3 - a  # one Newton step from 1.0 cannot solve it
    with pytest.raises(RuntimeError, match=r"\(max_steps_reached\)"):
        jaxopt2.root_find(cubic, jnp.ones(2), jnp.full(2, 5.0), solver=jaxopt2.NewtonRaphson(),
                          max_steps=1)
    with pytest.raises(RuntimeError, match=r"\(max_steps_reached\)"):
        jaxopt2.least_squares(cubic, jnp.ones(2), jnp.full(2, 5.0),
                              solver=jaxopt2.GaussNewton(), max_steps=1)
    with pytest.raises(RuntimeError, match=r"\(max_steps_reached\)"):
        jaxopt2.fixed_point(lambda y, a: 0.9 * y + a, jnp.ones(2), jnp.ones(2), solver=FPI,
                            max_steps=1)


def test_square_doors_reject_dtype_promotion():
    with pytest.raises(TypeError, match="dtypes of the initial point"):
        jaxopt2.fixed_point(lambda y, a: jnp.tanh(y.astype(jnp.float64) + a),
                            jnp.zeros(3, jnp.float32), jnp.ones(3), solver=FPI)
