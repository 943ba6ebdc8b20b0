"""Fixed-point solvers (FixedPointIteration, Anderson) against dense and converged references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2._results import RESULTS

pytestmark = pytest.mark.float64  # written for float64 tolerances


def _affine(n, radius, seed=0, low=None):
    """A symmetric A with eigenvalues spread over [low, radius] (low = −radius by default)
    and a vector b."""
    low = -radius if low is None else low
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    a = (q * np.linspace(low, radius, n)) @ q.T
    b = np.random.default_rng(seed + 1).normal(size=n)
    return jnp.asarray(a), jnp.asarray(b)


def _affine_map(y, args):
    a, b = args
    return a @ y + b


def _deq_map(y, args):
    w, x = args
    return jnp.tanh(w @ y + x)


@pytest.fixture(scope="module")
def affine():
    # Spectrum in [0, 0.95]: plain iteration contracts by only 0.95 per step.
    a, b = _affine(40, 0.95, low=0.0)
    return a, b, jnp.linalg.solve(jnp.eye(40) - a, b)


@pytest.fixture(scope="module")
def deq():
    # tanh is 1-Lipschitz and ‖W‖ = 0.95: a contraction, and a slow one since the small
    # inputs keep tanh' close to 1.
    w, _ = _affine(30, 0.95, seed=3, low=0.0)
    x = 0.1 * np.random.default_rng(4).normal(size=30)
    y = np.zeros(30)
    for _ in range(2000):  # independent NumPy reference: 0.95^2000 is far below eps
        y = np.tanh(w @ y + x)
    return w, jnp.asarray(x), jnp.asarray(y)


SOLVERS = {"fpi": jaxopt2.FixedPointIteration(rtol=1e-10), "anderson": jaxopt2.Anderson(rtol=1e-10)}


def _solve(g, args, y0, solver, max_steps=2000):
    # Jitted whole: one compile, rather than op-by-op dispatch of the front door.
    @jax.jit
    def run(args, y0):
        sol = jaxopt2.fixed_point(g, y0, args, solver=solver, max_steps=max_steps, throw=False)
        return sol.params, sol.status, sol.stats["num_fun"], sol.value

    return run(args, y0)


@pytest.mark.parametrize("problem", ["affine", "deq"])
def test_both_solvers_reach_the_fixed_point_anderson_much_cheaper(problem, affine, deq):
    if problem == "affine":
        a, b, ref = affine
        g, args = _affine_map, (a, b)
    else:
        w, x, ref = deq
        g, args = _deq_map, (w, x)
    y0 = jnp.zeros_like(ref)
    evals = {}
    for name, solver in SOLVERS.items():
        y, status, nfun, value = _solve(g, args, y0, solver)
        assert status == RESULTS.successful, name
        # Residual 1e-10 relative, error ≤ residual / (1 − 0.95).
        np.testing.assert_allclose(y, ref, atol=1e-8 * float(jnp.max(jnp.abs(ref))),
                                   err_msg=name)
        np.testing.assert_allclose(value, g(y, args), rtol=1e-14)  # value is g at the solution
        evals[name] = int(nfun)
    # Measured: 406 vs 82 (affine), 146 vs 40 (deq).
    assert evals["anderson"] * 3 <= evals["fpi"], evals


def test_anderson_finite_termination_on_affine_map():
    # With β = 1 and history ≥ n, Anderson on an affine map is GMRES in disguise: it is exact
    # after about n + 1 steps, whatever the contraction factor (ridge keeps the then-singular
    # Gram matrix solvable).
    n = 6
    a, b = _affine(n, 0.99, seed=5)
    ref = jnp.linalg.solve(jnp.eye(n) - a, b)
    y, status, nfun, _ = _solve(_affine_map, (a, b), jnp.zeros(n),
                                jaxopt2.Anderson(history=10, rtol=1e-12), max_steps=50)
    assert status == RESULTS.successful
    # n + 3, plus one step whose size confirms the converged residual (the step test of
    # jaxopt2/_stopping.py: success needs a small residual and a small last step)
    assert int(nfun) <= n + 4
    np.testing.assert_allclose(y, ref, atol=1e-9)


def test_damping_for_averaged_non_contractive_maps():
    # y ← −y + c (a reflection) oscillates undamped; with β = ½ the averaged map converges.
    c = jnp.array([1.0, -2.0, 4.0])

    def reflect(y, args):
        return -y + args

    _, status, _, _ = _solve(reflect, c, jnp.zeros(3), jaxopt2.FixedPointIteration(),
                             max_steps=30)
    assert status == RESULTS.max_steps_reached
    y, status, _, _ = _solve(reflect, c, jnp.zeros(3),
                             jaxopt2.FixedPointIteration(damping=0.5), max_steps=30)
    assert status == RESULTS.successful
    np.testing.assert_allclose(y, c / 2, rtol=1e-12)

    # A rotation by 2.5 rad (nonexpansive, not contractive): plain iteration never converges;
    # damped Anderson does, in a handful of steps.
    th = 2.5
    rot = jnp.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    shift = jnp.array([1.0, 2.0])
    ref = jnp.linalg.solve(jnp.eye(2) - rot, shift)
    y, status, nfun, _ = _solve(_affine_map, (rot, shift), jnp.zeros(2),
                                jaxopt2.Anderson(damping=0.5), max_steps=30)
    assert status == RESULTS.successful and int(nfun) <= 10
    np.testing.assert_allclose(y, ref, atol=1e-8)


def test_pytree_state_with_mixed_dtypes():
    # y = {"u": (3,) float64, "v": (2, 2) float32}, coupled affinely; dtypes must be kept.
    a, b = _affine(7, 0.8, seed=7)
    ref = np.linalg.solve(np.eye(7) - np.asarray(a), np.asarray(b))

    def g(y, args):
        a, b = args
        flat = jnp.concatenate([y["u"], y["v"].ravel().astype(jnp.float64)])
        out = a @ flat + b
        return {"u": out[:3], "v": out[3:].reshape(2, 2).astype(jnp.float32)}

    y0 = {"u": jnp.zeros(3), "v": jnp.zeros((2, 2), jnp.float32)}
    for solver in (jaxopt2.Anderson(history=3, rtol=1e-5), jaxopt2.FixedPointIteration(rtol=1e-5)):
        y, status, _, _ = _solve(g, (a, b), y0, solver)
        assert status == RESULTS.successful
        assert y["u"].dtype == jnp.float64 and y["v"].dtype == jnp.float32
        np.testing.assert_allclose(y["u"], ref[:3], atol=1e-4)
        np.testing.assert_allclose(y["v"].ravel(), ref[3:], atol=1e-4)


def test_implicit_gradient_matches_closed_form(affine):
    a, _, _ = affine
    n = a.shape[0]
    weights = jnp.linspace(-1.0, 1.0, n)
    solver = jaxopt2.Anderson(rtol=1e-12)

    def fixed(b):
        return jaxopt2.fixed_point(_affine_map, jnp.zeros(n), (a, b), solver=solver,
                                   max_steps=500).params

    b = jnp.ones(n)
    inv_t = jnp.linalg.inv(jnp.eye(n) - a)
    # Reverse mode: d(wᵀy*)/db = (I − A)⁻ᵀ w.
    grad = jax.jit(jax.grad(lambda b: weights @ fixed(b)))(b)
    np.testing.assert_allclose(grad, inv_t.T @ weights, atol=1e-8)
    # Forward mode: dy* = (I − A)⁻¹ db.
    _, tangent = jax.jit(lambda b, v: jax.jvp(fixed, (b,), (v,)))(b, weights)
    np.testing.assert_allclose(tangent, inv_t @ weights, atol=1e-8)


def test_has_aux_returns_aux_at_the_solution(affine):
    a, b, ref = affine

    def g(y, args):
        out = _affine_map(y, args)
        return out, {"residual": jnp.max(jnp.abs(out - y)), "y": y}

    sol = jax.jit(lambda args: jaxopt2.fixed_point(g, jnp.zeros_like(b), args,
                                                   solver=jaxopt2.Anderson(), has_aux=True))((a, b))
    np.testing.assert_allclose(sol.aux["y"], sol.params)
    assert float(sol.aux["residual"]) <= 1e-7 * float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(sol.params, ref, atol=1e-5)


def test_anderson_rejects_bad_hyperparameters():
    for kwargs in ({"history": 0}, {"history": 2.0}, {"damping": 0.0}, {"damping": 1.5},
                   {"ridge": -1.0}, {"atol": -1.0}, {"rtol": -1e-3}):
        with pytest.raises(ValueError):
            jaxopt2.Anderson(**kwargs)
