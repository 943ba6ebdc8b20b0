"""`Newton(sqrt_hessian=...)` (issue 20, dense curvature at BLAS speed): with ∇²f = BᵀB + R
from the model/loss split, the Hessian is one matrix product instead of d Hessian-vector
products. The iterates must be Newton's own (the same Hessian up to rounding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2

N, D = 400, 12
_rng = np.random.default_rng(0)
X = _rng.normal(size=(N, D)) * np.linspace(0.5, 4.0, D)
Y = (_rng.uniform(size=N) < 1 / (1 + np.exp(-X @ _rng.normal(size=D) / 3))).astype(float)
LAM = 1e-2


def loss(p, data):
    X, y, lam = data
    z = X @ p["w"] + p["b"]
    return (jnp.mean(jnp.logaddexp(0.0, z) - y * z)
            + 0.5 * lam * (jnp.sum(p["w"] ** 2) + p["b"] ** 2))


def sqrt_hessian(p, data):
    """B = diag(√(σ'(z)/n)) [1 X] (columns in the flattened order of {"b", "w"}), R = λ."""
    X, _, lam = data
    s = jax.nn.sigmoid(X @ p["w"] + p["b"])
    weights = jnp.sqrt(s * (1 - s) / X.shape[0])[:, None]
    return jnp.concatenate([weights, weights * X], axis=1), lam


def _data(dtype):
    return (jnp.asarray(X, dtype), jnp.asarray(Y, dtype), jnp.asarray(LAM, dtype))


def _p0(dtype):
    return {"b": jnp.zeros((), dtype), "w": jnp.zeros(D, dtype)}


def _solve(solver, data, dtype, **kw):
    return jaxopt2.minimize(loss, _p0(dtype), data, solver=solver, throw=False, **kw)


def _flat(p):
    return np.concatenate([np.atleast_1d(np.asarray(p["b"], np.float64)),
                           np.asarray(p["w"], np.float64)])


@pytest.mark.float64
def test_same_iterates_as_newton_with_jax_hessian():
    ref = _solve(jaxopt2.Newton(rtol=1e-12), _data(jnp.float64), jnp.float64)
    sol = _solve(jaxopt2.Newton(rtol=1e-12, sqrt_hessian=sqrt_hessian), _data(jnp.float64),
                 jnp.float64)
    assert jaxopt2.status_name(sol.status) == "successful"
    np.testing.assert_allclose(_flat(sol.params), _flat(ref.params), rtol=1e-11, atol=1e-12)
    assert int(sol.stats["num_steps"]) == int(ref.stats["num_steps"])
    assert int(sol.stats["num_jac"]) == int(sol.stats["num_steps"])
    # one step from the same point: the same direction as the dense Hessian's
    one = lambda s: _solve(s, _data(jnp.float64), jnp.float64, max_steps=1)  # noqa: E731
    np.testing.assert_allclose(_flat(one(jaxopt2.Newton(sqrt_hessian=sqrt_hessian)).params),
                               _flat(one(jaxopt2.Newton()).params), rtol=1e-12, atol=1e-14)


def test_float32_jit_and_the_float64_answer():
    sol = jax.jit(lambda d: _solve(jaxopt2.Newton(sqrt_hessian=sqrt_hessian), d,
                                   jnp.float32))(_data(jnp.float32))
    assert jaxopt2.status_name(sol.status) == "successful"
    assert sol.params["w"].dtype == jnp.float32
    g = jax.grad(loss)(sol.params, _data(jnp.float32))
    g0 = jax.grad(loss)(_p0(jnp.float32), _data(jnp.float32))
    assert float(jnp.max(jnp.abs(g["w"]))) <= 1e-3 * float(jnp.max(jnp.abs(g0["w"])))


def test_vmap_one_bad_problem_and_implicit_gradient():
    solver = jaxopt2.Newton(sqrt_hessian=sqrt_hessian)
    good = _data(jnp.float32)
    bad = (good[0].at[0, 0].set(jnp.nan), good[1], good[2])
    batch = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), good, bad)
    # every transformation compiled once: eagerly each would trace and compile op by op
    sols = jax.jit(jax.vmap(lambda d: _solve(solver, d, jnp.float32)))(batch)
    single = jax.jit(lambda d: _solve(solver, d, jnp.float32))(good)
    names = list(jaxopt2.status_name(sols.status))
    assert names[0] == "successful" and names[1] != "successful", names
    np.testing.assert_allclose(sols.params["w"][0], single.params["w"], rtol=1e-6, atol=1e-6)

    # d w*/d λ by the implicit function theorem, against plain Newton's (the same solution)
    def w_sum(lam, s):
        return jnp.sum(_solve(s, (good[0], good[1], lam), jnp.float32).params["w"])
    plain = jaxopt2.Newton()
    got = jax.jit(jax.grad(lambda lam: w_sum(lam, solver)))(jnp.float32(LAM))
    want = jax.jit(jax.grad(lambda lam: w_sum(lam, plain)))(jnp.float32(LAM))
    np.testing.assert_allclose(got, want, rtol=1e-3)
    # the adjoint's BᵀB (from sqrt_hessian) under vmap, in float32
    lams = jnp.asarray([LAM, 10 * LAM], jnp.float32)
    got = jax.jit(jax.vmap(jax.grad(lambda lam: w_sum(lam, solver))))(lams)
    want = jax.jit(jax.vmap(jax.grad(lambda lam: w_sum(lam, plain))))(lams)
    np.testing.assert_allclose(got, want, rtol=1e-3)


def test_bad_sqrt_hessian_is_refused():
    data = _data(jnp.float32)
    with pytest.raises(TypeError, match="sqrt_hessian"):
        jaxopt2.Newton(sqrt_hessian="BtB")
    with pytest.raises(ValueError, match=r"B of shape \(n, 13\)"):
        _solve(jaxopt2.Newton(sqrt_hessian=lambda p, a: (a[0], None)), data, jnp.float32)
    with pytest.raises(ValueError, match=r"R must be None, a scalar or a \(13, 13\)"):
        _solve(jaxopt2.Newton(sqrt_hessian=lambda p, a: (sqrt_hessian(p, a)[0], jnp.ones(13))),
               data, jnp.float32)


def _dw_dlam(solver, adjoint=None, dtype=jnp.float64):
    data = _data(dtype)

    def w_sum(lam):
        kw = {} if adjoint is None else {"adjoint": adjoint}
        return jnp.sum(jaxopt2.minimize(loss, _p0(dtype), (data[0], data[1], lam),
                                        solver=solver, **kw).params["w"])
    return jax.jit(jax.grad(w_sum))(jnp.asarray(LAM, dtype))


@pytest.mark.float64
def test_the_dense_adjoint_forms_b_t_b_from_sqrt_hessian():
    """The default adjoint takes ∂ₓ∇f = BᵀB + R from the solver's `sqrt_hessian` (one matrix
    product) instead of d batched products: the derivative is the same, and B is evaluated
    by the adjoint (the call count while tracing the differentiated solve grows)."""
    calls = []

    def counted(p, data):
        calls.append(1)
        return sqrt_hessian(p, data)

    want = _dw_dlam(jaxopt2.Newton(rtol=1e-12))
    got = _dw_dlam(jaxopt2.Newton(rtol=1e-12, sqrt_hessian=counted))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    traced_with_adjoint = len(calls)
    calls.clear()
    jax.jit(lambda d: _solve(jaxopt2.Newton(sqrt_hessian=counted), d, jnp.float64).params)(
        _data(jnp.float64))
    assert traced_with_adjoint > len(calls)  # the adjoint called it too
    # a user's own matrix (ImplicitAdjoint(matrix=...)) with any solver
    exact = jaxopt2.ImplicitAdjoint(matrix=lambda root, inputs: jax.hessian(
        lambda v: loss(jax.flatten_util.ravel_pytree(root)[1](v), inputs[1]))(
            jax.flatten_util.ravel_pytree(root)[0]))
    np.testing.assert_allclose(_dw_dlam(jaxopt2.NewtonCG(rtol=1e-12), exact), want, rtol=1e-9)


@pytest.mark.float64
def test_a_wrong_matrix_gives_a_loud_failure_not_a_wrong_derivative():
    """The dense solve's answer is checked against the true Hessian-vector products: a
    `sqrt_hessian` that is not the Hessian's square root fails the adjoint."""
    wrong = lambda p, data: (2.0 * sqrt_hessian(p, data)[0], LAM)  # noqa: E731
    with pytest.raises(Exception, match="(?s)adjoint_failed.*exact Hessian"):
        _dw_dlam(jaxopt2.Newton(rtol=1e-12, sqrt_hessian=wrong))
    quiet = jaxopt2.ImplicitAdjoint(throw=False)
    # (the solve itself still converges with a wrong B: only its curvature is off)
    assert np.isnan(np.asarray(_dw_dlam(jaxopt2.Newton(rtol=1e-12, sqrt_hessian=wrong),
                                        quiet))).all()


@pytest.mark.float64
@pytest.mark.parametrize("n, d", [(50, 40), (50, 257), (50, 300), (2 * 1024 + 37, 40),
                                  (3 * 1024, 260)])
def test_gram_matches_the_plain_product(n, d):
    """`_xla_cpu.gram` (on CPU: Bᵀ materialised, from 2,048 rows on in chunks of 1,024 rows
    with a tail, and from d = 256 on only the 10 upper blocks of a 4 × 4 blocking computed)
    equals BᵀB in float64 and float32, uneven blocks included, and is exactly symmetric;
    under vmap too."""
    from jaxopt2._xla_cpu import gram

    b = jax.random.normal(jax.random.key(d), (n, d), jnp.float64)
    out = jax.jit(gram)(b)
    ref = np.asarray(b).T @ np.asarray(b)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_array_equal(out, out.T)
    batched = jax.jit(jax.vmap(gram))(jnp.stack([b, 2 * b]))
    np.testing.assert_allclose(batched[1], 4 * ref, rtol=0, atol=4e-12 * np.abs(ref).max())
    out32 = jax.jit(gram)(b.astype(jnp.float32))
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
