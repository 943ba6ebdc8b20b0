"""Dense-vs-matrix-free checks for `jaxopt2.curvature`: every operator against the matrix built
by `jax.hessian` / `jax.jacfwd`, in float32 and float64, under jit, vmap and grad; the
Hutchinson estimators against their known mean and variance; Lanczos against a known spectrum.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxopt2 import curvature

pytestmark = pytest.mark.float64  # written for float64 tolerances

N, D, K = 6, 3, 2  # examples, features, classes
TOL = {jnp.float32: dict(rtol=2e-4, atol=2e-5), jnp.float64: dict(rtol=1e-10, atol=1e-12)}
DTYPES = [jnp.float32, jnp.float64]


def make_problem(dtype, seed=0):
    # numpy draws: eager jax.random would compile a kernel per shape and dtype.
    rng = np.random.default_rng(seed)
    params = {"W": rng.normal(size=(D, K)), "b": rng.normal(size=K)}
    args = {"X": rng.normal(size=(N, D)), "Y": np.eye(K)[rng.integers(0, K, N)]}
    return jtu.tree_map(lambda x: jnp.asarray(x, dtype), (params, args))


def make_batch(size):
    """The data of `size` problems, stacked along a leading axis."""
    return jtu.tree_map(
        lambda *x: jnp.stack(x), *[make_problem(jnp.float64, s)[1] for s in range(size)]
    )


def model(p, a):
    return jnp.tanh(a["X"] @ p["W"] + p["b"])


def linear_model(p, a):
    return a["X"] @ p["W"] + p["b"]


def xent(out, a):
    return -jnp.sum(a["Y"] * jax.nn.log_softmax(out)) / N


def squared(out, a):
    return 0.5 * jnp.sum((out - a["Y"]) ** 2)


def per_example(p, a):
    return -jnp.sum(a["Y"] * jax.nn.log_softmax(model(p, a)), axis=-1)


def objective(p, a):
    return jnp.sum(per_example(p, a)) / N + 0.1 * jnp.sum(p["W"] ** 4)


def random_like(tree, seed):
    flat, unravel = ravel_pytree(tree)
    return unravel(jnp.asarray(np.random.default_rng(seed).normal(size=flat.shape), flat.dtype))


def flat(tree):
    return ravel_pytree(tree)[0]


@functools.partial(jax.jit, static_argnums=0)
def dense_hessian(fun, params, args):
    theta, unravel = ravel_pytree(params)
    return jax.hessian(lambda t: fun(unravel(t), args))(theta)


@functools.partial(jax.jit, static_argnums=0)
def dense_jacobian(fn, params, args):
    theta, unravel = ravel_pytree(params)
    return jax.jacfwd(lambda t: flat(fn(unravel(t), args)))(theta)


@functools.partial(jax.jit, static_argnums=(0, 1))
def dense_ggn(model_fn, loss_fn, params, args):
    out = model_fn(params, args)
    J = dense_jacobian(model_fn, params, args)
    H_loss = jax.hessian(lambda o: loss_fn(o.reshape(out.shape), args))(out.ravel())
    return J.T @ H_loss @ J


@jax.jit
def dense_empirical_fisher(params, args):
    theta, unravel = ravel_pytree(params)

    def one_loss(t, x, y):
        return per_example(unravel(t), {"X": x[None], "Y": y[None]})[0]

    grads = jax.vmap(jax.grad(one_loss), (None, 0, 0))(theta, args["X"], args["Y"])
    return grads.T @ grads / N


def assert_dtypes(tree, dtype):
    for leaf in jtu.tree_leaves(tree):
        assert leaf.dtype == dtype, (leaf.dtype, dtype)


# Each case: (name, build operator, dense reference), all on (params, args).
OPERATORS = {
    "hessian": (
        lambda p, a: curvature.hessian(objective, p, a),
        lambda p, a: dense_hessian(objective, p, a),
    ),
    "ggn_xent": (
        lambda p, a: curvature.gauss_newton(model, xent, p, a),
        lambda p, a: dense_ggn(model, xent, p, a),
    ),
    "ggn_squared": (
        lambda p, a: curvature.gauss_newton(model, squared, p, a),
        lambda p, a: dense_ggn(model, squared, p, a),
    ),
    "empirical_fisher": (
        lambda p, a: curvature.empirical_fisher(per_example, p, a),
        dense_empirical_fisher,
    ),
}


# Eager JAX compiles every primitive separately, so the tests jit whole computations to stay
# fast; the code under test is the same either way.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPERATORS)
def test_operator_matches_dense(name, dtype):
    build, dense = OPERATORS[name]
    params, args = make_problem(dtype)
    v = random_like(params, 1)
    matrix, out = jax.jit(lambda p, a, v: (build(p, a).as_matrix(), build(p, a).mv(v)))(
        params, args, v
    )
    reference = jax.jit(dense)(params, args)
    assert reference.dtype == dtype
    np.testing.assert_allclose(matrix, reference, **TOL[dtype])
    assert jtu.tree_structure(out) == jtu.tree_structure(params)
    assert_dtypes(out, dtype)
    np.testing.assert_allclose(flat(out), reference @ flat(v), **TOL[dtype])
    op = eqx.filter_eval_shape(build, params, args)  # tags are static
    assert lx.is_symmetric(op)
    if name != "hessian":
        assert lx.is_positive_semidefinite(op)
        assert np.linalg.eigvalsh(np.asarray(reference, np.float64)).min() > -1e-5


def quad_reference(name, params, args, v):
    """vᵀ C v for each curvature C from second directional derivatives and jvps alone, an
    independent route to the same number (cheap to differentiate, unlike the dense matrix)."""

    def second_derivative(fun, x, direction):
        along = lambda t: fun(jtu.tree_map(lambda a, d: a + t * d, x, direction))
        return jax.jvp(lambda t: jax.jvp(along, (t,), (1.0,))[1], (0.0,), (1.0,))[1]

    if name == "hessian":
        return second_derivative(lambda p: objective(p, args), params, v)
    if name == "empirical_fisher":
        Jv = jax.jvp(lambda p: per_example(p, args), (params,), (v,))[1]
        return jnp.mean(Jv**2)
    loss = xent if name == "ggn_xent" else squared
    out, Jv = jax.jvp(lambda p: model(p, args), (params,), (v,))
    return second_derivative(lambda o: loss(o, args), out, Jv)


@pytest.mark.parametrize("name", OPERATORS)
def test_operator_under_jit_vmap_grad(name):
    build, dense = OPERATORS[name]
    params, args = make_problem(jnp.float64)
    v = random_like(params, 1)
    batch = make_batch(3)

    @jax.jit
    def ours(batch, args):
        products = jax.vmap(lambda a: build(params, a).mv(v))(batch)
        # The operator is differentiable in the data it closes over.
        grad = jax.grad(lambda a: flat(v) @ flat(build(params, a).mv(v)))(args)
        return jax.vmap(flat)(products), grad

    @jax.jit
    def reference(batch, args):
        products = jax.vmap(lambda a: dense(params, a) @ flat(v))(batch)
        return products, jax.grad(lambda a: quad_reference(name, params, a, v))(args)

    (products, grad), (products_ref, grad_ref) = ours(batch, args), reference(batch, args)
    np.testing.assert_allclose(products, products_ref, rtol=1e-10)
    np.testing.assert_allclose(flat(grad), flat(grad_ref), rtol=1e-9, atol=1e-12)


def test_mixed_precision_keeps_params_dtype():
    params, _ = make_problem(jnp.float32)
    _, args = make_problem(jnp.float64)
    v = random_like(params, 1)
    names = ["hessian", "ggn_xent", "empirical_fisher"]
    outs = jax.jit(lambda p, a, v: [OPERATORS[n][0](p, a).mv(v) for n in names])(params, args, v)
    assert_dtypes(outs, jnp.float32)


@jax.jit
def ggn_and_hessians(params, args):
    objectives = {
        "nonlinear": (model, xent),
        "linear_xent": (linear_model, xent),
        "linear_squared": (linear_model, squared),
    }

    def pair(m, loss):
        G = curvature.gauss_newton(m, loss, params, args).as_matrix()
        return G, dense_hessian(lambda p, a: loss(m(p, a), a), params, args)

    matrices = {name: pair(*objective) for name, objective in objectives.items()}
    return matrices, curvature.fisher(model, xent, params, args).as_matrix()


def test_ggn_equals_hessian_for_linear_model_only():
    params, args = make_problem(jnp.float64)
    matrices, fisher = ggn_and_hessians(params, args)
    # Softmax cross-entropy on logits is a categorical NLL: its Fisher is the GGN.
    np.testing.assert_allclose(fisher, matrices["nonlinear"][0], rtol=1e-12)
    for name in ["linear_xent", "linear_squared"]:
        np.testing.assert_allclose(*matrices[name], rtol=1e-10, atol=1e-12)
    G, H = matrices["nonlinear"]
    assert np.abs(G - H).max() > 1e-3


def residual(p, a):
    return {"fit": model(p, a) - a["Y"], "reg": 0.1 * p["W"] ** 2}


@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobian_and_transpose_match_dense(dtype):
    params, args = make_problem(dtype)
    v = random_like(params, 1)
    u = random_like(residual(params, args), 2)

    @jax.jit
    def products(params, args, v, u):
        J = curvature.jacobian(residual, params, args)
        return J.as_matrix(), J.mv(v), J.transpose().mv(u)

    matrix, Jv, JTu = products(params, args, v, u)
    J_dense = dense_jacobian(residual, params, args)
    assert J_dense.shape == (N * K + D * K, D * K + K)
    np.testing.assert_allclose(matrix, J_dense, **TOL[dtype])
    assert jtu.tree_structure(Jv) == jtu.tree_structure(u)
    assert_dtypes(Jv, dtype)
    np.testing.assert_allclose(flat(Jv), J_dense @ flat(v), **TOL[dtype])
    assert jtu.tree_structure(JTu) == jtu.tree_structure(params)
    assert_dtypes(JTu, dtype)
    np.testing.assert_allclose(flat(JTu), J_dense.T @ flat(u), **TOL[dtype])


def test_jacobian_transpose_under_vmap():
    params, args = make_problem(jnp.float64)
    u = random_like(residual(params, args), 2)
    batch = make_batch(3)
    out = jax.jit(jax.vmap(lambda a: curvature.jacobian(residual, params, a).transpose().mv(u)))(
        batch
    )
    expected = jax.jit(jax.vmap(lambda a: dense_jacobian(residual, params, a).T @ flat(u)))(batch)
    np.testing.assert_allclose(jax.vmap(flat)(out), expected, rtol=1e-10)


def test_cg_on_ggn_of_ridge_problem_matches_dense_solve():
    # f(p) = ½‖X w + b − y‖² + ½ λ‖p‖², written as loss(model(p)) with the parameters among
    # the outputs, so its GGN is AᵀA + λI with A = [1, X].
    lam = 0.3
    rng = np.random.default_rng(3)
    X, y = jnp.asarray(rng.normal(size=(20, 5))), jnp.asarray(rng.normal(size=20))
    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    rhs = random_like(params, 4)

    def ridge_model(p, a):
        return a[0] @ p["w"] + p["b"], p

    def ridge_loss(out, a):
        penalty = sum(jnp.sum(leaf**2) for leaf in jtu.tree_leaves(out[1]))
        return 0.5 * jnp.sum((out[0] - a[1]) ** 2) + 0.5 * lam * penalty

    @jax.jit
    def solve(params, args, rhs):
        op = curvature.gauss_newton(ridge_model, ridge_loss, params, args)
        sol = lx.linear_solve(op, rhs, lx.CG(rtol=1e-12, atol=1e-12, max_steps=100))
        return sol.value, sol.result

    value, result = solve(params, (X, y), rhs)
    assert result == lx.RESULTS.successful
    A = jnp.column_stack([jnp.ones(20), X])  # ravel order: "b" before "w"
    dense = A.T @ A + lam * jnp.eye(6)
    np.testing.assert_allclose(flat(value), jnp.linalg.solve(dense, flat(rhs)), rtol=1e-8)


# --- Hutchinson ---------------------------------------------------------------------------


def pytree_matrix_operator(A, structure_like):
    """A dense matrix acting on a pytree through ravel, to test estimators on pytree inputs."""
    _, unravel = ravel_pytree(structure_like)
    structure = jax.eval_shape(lambda: structure_like)
    return lx.FunctionLinearOperator(lambda v: unravel(A @ flat(v)), structure, lx.symmetric_tag)


def random_symmetric(n, dtype, seed):
    B = np.random.default_rng(seed).normal(size=(n, n))
    return jnp.asarray((B + B.T) / 2 + np.diag(np.arange(n)), dtype)


LIKE = {"a": jnp.zeros((2, 3)), "b": jnp.zeros(2)}


@jax.jit
def hutchinson_estimates(A, key):
    op = pytree_matrix_operator(A, LIKE)
    return (
        curvature.diagonal(op, key, 4000),
        curvature.diagonal(op, key, 4000, batch_size=300),
        curvature.trace(op, key, 4000),
    )


def test_hutchinson_unbiased_within_statistical_tolerance():
    A = random_symmetric(8, jnp.float64, 5)
    num = 4000
    diag, chunked, tr = hutchinson_estimates(A, jax.random.key(0))
    assert jtu.tree_structure(diag) == jtu.tree_structure(LIKE)
    # Chunking changes memory, not the probes.
    np.testing.assert_allclose(flat(chunked), flat(diag), rtol=1e-12)
    # For Rademacher z, Var[(z ⊙ Az)ᵢ] = Σ_{j≠i} Aᵢⱼ²; allow 5 standard errors.
    sigma = jnp.sqrt(jnp.sum(A**2, axis=1) - jnp.diag(A) ** 2)
    err = jnp.abs(flat(diag) - jnp.diag(A))
    assert jnp.all(err <= 5 * sigma / jnp.sqrt(num)), (err, sigma / jnp.sqrt(num))
    # For symmetric A, Var[zᵀAz] = 2 Σ_{i≠j} Aᵢⱼ².
    sigma_tr = jnp.sqrt(2 * (jnp.sum(A**2) - jnp.sum(jnp.diag(A) ** 2)))
    assert abs(tr - jnp.trace(A)) <= 5 * sigma_tr / jnp.sqrt(num)
    # The probes really vary: another key gives another (equally good) estimate.
    other, _, _ = hutchinson_estimates(A, jax.random.key(1))
    assert np.abs(flat(other) - flat(diag)).max() > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_hutchinson_exact_on_diagonal_operator_and_keeps_dtype(dtype):
    # With no off-diagonal mass every probe is exact; a wrong estimator would not be.
    params, _ = make_problem(dtype)
    d = {"W": jnp.arange(1.0, 7.0, dtype=dtype).reshape(D, K), "b": jnp.array([-2.0, 3.0], dtype)}

    @jax.jit
    def estimates(d, key):
        op = lx.FunctionLinearOperator(
            lambda v: jtu.tree_map(jnp.multiply, d, v), jax.eval_shape(lambda: params)
        )
        return curvature.diagonal(op, key, 3), curvature.trace(op, key, 3)

    diag, tr = estimates(d, jax.random.key(0))
    assert_dtypes(diag, dtype)
    np.testing.assert_allclose(flat(diag), flat(d), **TOL[dtype])
    assert tr.dtype == dtype
    np.testing.assert_allclose(tr, 22.0, **TOL[dtype])


def test_hutchinson_on_ggn_under_vmap():
    params, _ = make_problem(jnp.float64)
    batch = make_batch(2)
    num = 1000

    @jax.jit
    @jax.vmap
    def estimate_and_dense(a):
        op = curvature.gauss_newton(model, squared, params, a)
        return flat(curvature.diagonal(op, jax.random.key(0), num)), dense_ggn(
            model, squared, params, a
        )

    diag, G = estimate_and_dense(batch)
    sigma = jnp.sqrt(jnp.sum(G**2, axis=2) - jnp.diagonal(G, axis1=1, axis2=2) ** 2)
    err = jnp.abs(diag - jnp.diagonal(G, axis1=1, axis2=2))
    assert jnp.all(err <= 5 * sigma / jnp.sqrt(num) + 1e-12)


# --- Lanczos ------------------------------------------------------------------------------


def known_spectrum(eigenvalues, seed, dtype=jnp.float64):
    n = eigenvalues.shape[0]
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return jnp.asarray((Q * np.asarray(eigenvalues)) @ Q.T, dtype)


@functools.partial(jax.jit, static_argnums=2)
@functools.partial(jax.vmap, in_axes=(0, None, None))
def lanczos_batch(A, key, num_iters):
    op = lx.MatrixLinearOperator(A, lx.symmetric_tag)
    return curvature.extreme_eigenvalues(op, key, num_iters)


def test_lanczos_extreme_eigenvalues_known_spectrum():
    gapped = np.concatenate([[-3.0], np.linspace(0.0, 1.0, 38), [7.0]])
    A = known_spectrum(gapped, 0)
    op = pytree_matrix_operator(A, {"a": jnp.zeros((5, 6)), "b": jnp.zeros(10)})
    lo, hi = eqx.filter_jit(curvature.extreme_eigenvalues)(op, jax.random.key(0), 25)
    assert lo.dtype == hi.dtype == jnp.float64
    np.testing.assert_allclose([lo, hi], [-3.0, 7.0], rtol=1e-10)
    # A full Krylov space gives the exact extremes of any spectrum; three distinct eigenvalues
    # make it invariant after 3 steps (β = 0); the identity and zero break down at once.
    batch = jnp.stack(
        [
            known_spectrum(np.linspace(-1.0, 2.0, 40), 1),
            known_spectrum(np.repeat([-1.0, 0.5, 4.0], [10, 20, 10]), 2),
            np.eye(40),
            np.zeros((40, 40)),
        ]
    )
    # More steps than dimensions: capped at the dimension, where the space is exhausted.
    lo, hi = lanczos_batch(batch, jax.random.key(1), 45)
    np.testing.assert_allclose(lo, [-1.0, -1.0, 1.0, 0.0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(hi, [2.0, 4.0, 1.0, 0.0], rtol=1e-10, atol=1e-14)


def test_lanczos_float32_under_vmap():
    eigenvalues = np.concatenate([[0.1], np.linspace(1.0, 2.0, 18), [9.0]])
    batch = jnp.stack([known_spectrum(eigenvalues * (i + 1), i, jnp.float32) for i in range(3)])
    lo, hi = lanczos_batch(batch, jax.random.key(0), 20)
    assert lo.dtype == hi.dtype == jnp.float32
    scale = jnp.arange(1.0, 4.0)
    np.testing.assert_allclose(lo, 0.1 * scale, rtol=1e-4)
    np.testing.assert_allclose(hi, 9.0 * scale, rtol=1e-5)


def test_lanczos_on_ggn_matches_dense_eigh():
    params, args = make_problem(jnp.float64)

    @jax.jit
    def extremes_and_dense(params, args):
        op = curvature.gauss_newton(model, xent, params, args)
        extremes = curvature.extreme_eigenvalues(op, jax.random.key(2), 8)
        return extremes, jnp.linalg.eigvalsh(dense_ggn(model, xent, params, args))

    (lo, hi), dense = extremes_and_dense(params, args)
    np.testing.assert_allclose([lo, hi], [dense[0], dense[-1]], rtol=1e-8, atol=1e-12)


def test_estimators_reject_bad_inputs():
    params, args = make_problem(jnp.float64)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="square"):
        jax.eval_shape(lambda: curvature.trace(curvature.jacobian(residual, params, args), key, 4))
    with pytest.raises(ValueError, match="num_iters"):
        jax.eval_shape(
            lambda: curvature.extreme_eigenvalues(
                curvature.hessian(objective, params, args), key, 0
            )
        )
    with pytest.raises(ValueError, match="batch_size"):
        jax.eval_shape(
            lambda: curvature.diagonal(
                curvature.hessian(objective, params, args), key, 4, batch_size=0
            )
        )
