"""Statuses users print, convert and return: names, int codes, and the array form under
jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2 import RESULTS

pytestmark = pytest.mark.float64  # written for float64 tolerances


def _log_objective(x, a):
    # NaN at the start when any a >= 2 (x0 = 2): a `nonfinite` failure without any iteration.
    return jnp.sum(jnp.log(x - a) ** 2)


def _solve(a, dtype, max_steps=64):
    x0 = jnp.full(a.shape, 2.0, dtype)
    return jaxopt2.minimize(_log_objective, x0, a, solver=jaxopt2.GradientDescent(), throw=False,
                            max_steps=max_steps)


def test_names_follow_codes():
    assert RESULTS.names[0] == "successful"
    assert len(RESULTS.names) == len(RESULTS)
    for code, name in enumerate(RESULTS.names):
        item = getattr(RESULTS, name)
        assert int(item) == code
        assert item.name == name
        assert jaxopt2.status_name(code) == name
        assert item.message == RESULTS[item]


def test_print_str_repr():
    assert repr(RESULTS.successful) == "RESULTS.successful"
    assert str(RESULTS.successful) == "RESULTS.successful"
    assert repr(RESULTS.max_steps_reached) == "RESULTS.max_steps_reached"
    text = str(RESULTS.max_steps_reached)
    assert text.startswith("RESULTS.max_steps_reached: The solver reached `max_steps`")
    assert text.endswith(".") and "\n" not in text
    assert "status=RESULTS.successful" in repr(
        _solve(jnp.zeros(2, jnp.float32), jnp.float32))


def test_int_and_errors():
    assert int(RESULTS.successful) == 0
    assert int(RESULTS.nonfinite) == RESULTS.names.index("nonfinite")
    batch = RESULTS.where(jnp.array(True), RESULTS.nonfinite, RESULTS.successful)
    assert int(batch) == int(RESULTS.nonfinite)
    with pytest.raises(TypeError, match="status.code"):
        jax.jit(lambda s: int(s))(RESULTS.successful)
    with pytest.raises(ValueError, match="not a RESULTS code"):
        jaxopt2.status_name(len(RESULTS))
    with pytest.raises(TypeError, match="integer"):
        jaxopt2.status_name(True)
    with pytest.raises(TypeError, match="integer status codes"):
        jaxopt2.status_name(np.array([0.0]))


def test_where_and_cond_keep_one_pytree_structure():
    made = RESULTS.where(jnp.array(False), RESULTS.successful, RESULTS.diverged)
    assert type(made) is type(RESULTS.successful)
    assert bool(made == RESULTS.diverged)
    out = jax.lax.cond(jnp.array(True), lambda: made, lambda: RESULTS.successful)
    assert out.name == "diverged"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_code_under_jit(dtype):
    @jax.jit
    def code(a):
        sol = _solve(a, dtype)
        assert repr(sol.status) == "RESULTS<traced>"
        return sol.status_code, sol.status.code, sol.success

    c1, c2, ok = code(jnp.zeros(3, dtype))
    assert c1.dtype == jnp.int32 and c1.shape == ()
    assert int(c1) == int(c2) == 0 and bool(ok)
    c1, _, ok = code(jnp.full(3, 5.0, dtype))
    assert jaxopt2.status_name(c1) == "nonfinite" and not bool(ok)
    # Budget exhausted: a concrete failure status from outside jit.
    sol = _solve(jnp.zeros(3, dtype), dtype, max_steps=0)
    assert int(sol.status) == int(RESULTS.max_steps_reached)
    assert str(sol.status).startswith("RESULTS.max_steps_reached:")


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_vmap_one_failure_among_successes(dtype):
    a = jnp.array([[0.0, 0.0], [5.0, 0.0], [1.0, -1.0]], dtype)
    codes = jax.jit(jax.vmap(lambda a: _solve(a, dtype).status_code))(a)
    assert codes.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(codes), [0, int(RESULTS.nonfinite), 0])
    names = jaxopt2.status_name(codes)
    assert isinstance(names, np.ndarray) and names.shape == (3,)
    assert list(names) == ["successful", "nonfinite", "successful"]

    sols = jax.vmap(lambda a: _solve(a, dtype))(a)
    assert list(sols.status.name) == list(names)
    assert list(jaxopt2.status_name(sols.status)) == list(names)
    np.testing.assert_array_equal(np.asarray(sols.success), [True, False, True])
    assert repr(sols.status) == "RESULTS[successful, nonfinite, successful]"
    assert sols.status.message[1] == RESULTS[RESULTS.nonfinite]
    with pytest.raises(TypeError, match="single status"):
        int(sols.status)
    # 2-D batches of codes keep their shape.
    grid = jaxopt2.status_name(jnp.array([[0, 2], [1, 0]], jnp.int32))
    assert grid.shape == (2, 2) and grid[0, 1] == "nonfinite"


def test_status_name_of_traced_codes_says_what_to_do():
    with pytest.raises(TypeError, match="outside|status.code"):
        jax.jit(lambda c: jaxopt2.status_name(c))(jnp.int32(0))


def test_debug_print_shows_the_name_inside_jit(capfd):
    def show(ok):
        jax.debug.print("{s!r}", s=RESULTS.where(ok, RESULTS.successful, RESULTS.diverged))

    jax.jit(show)(jnp.array(False))
    jax.jit(jax.vmap(show))(jnp.array([True, False]))
    jax.effects_barrier()
    lines = capfd.readouterr().out.split()
    assert lines == ["RESULTS.diverged", "RESULTS.successful", "RESULTS.diverged"]
