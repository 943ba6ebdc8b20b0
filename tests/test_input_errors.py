"""Input errors of issue 13, item 10 (those that are not solver fields) and item 12: each is a
clear error at trace time whose message names the fix."""

import jax
import jax.numpy as jnp
import pytest

import jaxopt2

pytestmark = pytest.mark.float64  # written for float64 tolerances


def test_python_float_objective():
    with pytest.raises(TypeError, match="jax.numpy"):
        jaxopt2.minimize(lambda p, a: 1.0, jnp.zeros(3, jnp.float32), None,
                         solver=jaxopt2.LBFGS())


@pytest.mark.parametrize("door", ["minimize", "least_squares", "root_find", "fixed_point"])
def test_zero_size_params(door):
    empty = jnp.zeros((0,), jnp.float32)
    fn, solver = {
        "minimize": (lambda p, a: jnp.sum(p**2), jaxopt2.LBFGS()),
        "least_squares": (lambda p, a: p, jaxopt2.GaussNewton()),
        "root_find": (lambda p, a: p, jaxopt2.NewtonKrylov()),
        "fixed_point": (lambda p, a: p, jaxopt2.Anderson()),
    }[door]
    with pytest.raises(ValueError, match="at least one parameter"):
        getattr(jaxopt2, door)(fn, empty, None, solver=solver)


@pytest.mark.parametrize("door,solver,alternative", [
    ("minimize", jaxopt2.Newton(), "NewtonCG"),
    ("minimize", jaxopt2.BFGS(), "NewtonCG"),
    ("root_find", jaxopt2.NewtonRaphson(), "NewtonKrylov"),
    ("root_find", jaxopt2.Broyden(), "NewtonKrylov"),
    ("least_squares", jaxopt2.LevenbergMarquardt(linear_solver="dense"), "cg"),
    ("least_squares", jaxopt2.GaussNewton(linear_solver="dense"), "cg"),
])
def test_dense_solver_on_huge_problem(door, solver, alternative):
    """10⁶ parameters: a 7.3 TiB matrix. Refused before anything is allocated (the check only
    reads shapes: jax.ShapeDtypeStruct would do, but a real zero array keeps it simple)."""
    x0 = jnp.zeros(10**6, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    fn = (lambda p, a: jnp.sum(p**2)) if door == "minimize" else (lambda p, a: p)
    with pytest.raises(ValueError, match=alternative) as err:
        getattr(jaxopt2, door)(fn, x0, None, solver=solver)
    assert "GiB" in str(err.value) and "1000000" in str(err.value)


def test_dense_solver_under_the_limit_runs():
    sol = jaxopt2.minimize(lambda p, a: jnp.sum((p - 1.0) ** 2), jnp.zeros(4, jnp.float32),
                           None, solver=jaxopt2.Newton())
    assert jaxopt2.status_name(sol.status) == "successful"


def test_optimizer_integer_params():
    opt = jaxopt2.optimizers.hessian_free()
    with pytest.raises(TypeError, match="float32"):
        opt.init({"w": jnp.zeros(3, jnp.int32)})


def test_optimizer_mismatched_grads():
    opt = jaxopt2.optimizers.regularized_newton()
    params = {"w": jnp.zeros(3, jnp.float32)}
    state = opt.init(params)
    value_fn = lambda p: jnp.sum(p["w"] ** 2)
    with pytest.raises(ValueError, match="same params"):
        opt.update({"v": jnp.zeros(3, jnp.float32)}, state, params, value_fn=value_fn)
    with pytest.raises(ValueError, match="shape"):
        opt.update({"w": jnp.zeros(4, jnp.float32)}, state, params, value_fn=value_fn)


def test_sketched_newton_bilevel_misuse():
    """Data closed over, a hyperparameter vector as `args`: refused, naming batch_fn."""
    X = jax.random.normal(jax.random.key(0), (500, 4), jnp.float32)
    y = X @ jnp.arange(1.0, 5.0, dtype=jnp.float32)
    fun = lambda w, lam: jnp.mean((X @ w - y) ** 2) + jnp.sum(lam * w**2)
    with pytest.raises(ValueError, match="batch_fn"):
        jaxopt2.minimize(fun, jnp.zeros(4, jnp.float32), jnp.full(4, 0.1, jnp.float32),
                         solver=jaxopt2.SketchedNewton(sketch_size=50))
    # the same problem with the data in `args` (the hyperparameter a scalar) runs
    fun2 = lambda w, a: jnp.mean((a[0] @ w - a[1]) ** 2) + a[2] * jnp.sum(w**2)
    sol = jaxopt2.minimize(fun2, jnp.zeros(4, jnp.float32), (X, y, jnp.float32(0.1)),
                           solver=jaxopt2.SketchedNewton(sketch_size=50), throw=False)
    assert jnp.all(jnp.isfinite(sol.params))
