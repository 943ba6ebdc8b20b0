"""SketchedNewton (Newton sketch, subsampled Newton) and SubspaceNewton: the sketches'
expectations, convergence to a dense-Newton reference, exactness in the limits (full subspace),
user batch functions and the input checks. jit, vmap, float32, pytrees and implicit gradients
are in the contract tests (tests/solvers.py registers both solvers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2 import RESULTS
from jaxopt2._solver.sketched_newton import SKETCHES, sketch_rows

# float64: written for float64 tolerances; slow: ~6 min of sampled solves (make test-slow;
# SketchedNewton's contract tests stay in the default run, tests/test_contract.py)
pytestmark = [pytest.mark.float64, pytest.mark.slow]

N, D = 3000, 12


def glm_data(seed=0, n=N, d=D, dtype=jnp.float64):
    """Logistic regression with correlated, badly scaled features."""
    kx, kw, kr = jax.random.split(jax.random.PRNGKey(seed), 3)
    scales = jnp.logspace(0, -2, d, dtype=dtype)
    rotation, _ = jnp.linalg.qr(jax.random.normal(kr, (d, d), dtype))
    X = jax.random.normal(kx, (n, d), dtype) * scales @ rotation
    y = (X @ jax.random.normal(kw, (d,), dtype) * 30 > 0).astype(dtype)
    return X, y, jnp.asarray(1e-4, dtype)


def glm(w, args):
    X, y, lam = args
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * lam * w @ w


def glm_sqrt_hessian(w, args):
    X, _, lam = args
    p = jax.nn.sigmoid(X @ w)
    return jnp.sqrt(p * (1 - p) / X.shape[0])[:, None] * X, lam


@jax.jit
def newton_reference(args):
    f = lambda w: glm(w, args)
    step = lambda w, _: (w - jnp.linalg.solve(jax.hessian(f)(w), jax.grad(f)(w)), None)
    return jax.lax.scan(step, jnp.zeros(args[0].shape[1], args[0].dtype), None, length=40)[0]


@pytest.mark.parametrize("kind", SKETCHES)
def test_sketch_rows_is_unbiased(kind):
    """E[(SB)ᵀ(SB)] = BᵀB: the mean over many sketches approaches BᵀB, and one sketch of m
    rows is already a fair approximation (a subspace embedding)."""
    B = jax.random.normal(jax.random.PRNGKey(1), (400, 5)) * jnp.arange(1.0, 6.0)
    gram = B.T @ B
    one = jax.jit(lambda k: (lambda sb: sb.T @ sb)(sketch_rows(kind, k, B, 60)))
    keys = jax.random.split(jax.random.PRNGKey(2), 200)
    mean = jnp.mean(jax.vmap(one)(keys), axis=0)
    scale = jnp.linalg.norm(gram)
    assert jnp.linalg.norm(mean - gram) / scale < 0.06
    assert jnp.linalg.norm(one(keys[0]) - gram) / scale < 0.6


@pytest.mark.parametrize("kind", ["uniform", "uniform-sqrt", "leverage", "gaussian", "srht",
                                  "sparse_sign"])
def test_converges_to_the_newton_solution(kind):
    args = glm_data()
    if kind == "uniform":
        solver = jaxopt2.SketchedNewton(sketch_size=200, rtol=1e-10)
    else:
        solver = jaxopt2.SketchedNewton(sketch_size=200, sketch=kind.removesuffix("-sqrt"),
                                        sqrt_hessian=glm_sqrt_hessian, rtol=1e-10)
    sol = jax.jit(lambda a: jaxopt2.minimize(glm, jnp.zeros(D), a, solver=solver,
                                             max_steps=100))(args)
    assert sol.status == RESULTS.successful
    ref = newton_reference(args)
    np.testing.assert_allclose(sol.params, ref, rtol=1e-5, atol=1e-6 * jnp.max(jnp.abs(ref)))
    # A sketch of 200 of 3000 rows: about 16 steps for the subspace embeddings, 30 for
    # uniform rows (the correlated features make the rows coherent), against 83 for LBFGS.
    assert int(sol.stats["num_steps"]) <= (40 if kind.startswith("uniform") else 20)
    assert int(sol.stats["num_hessian"]) == int(sol.stats["num_steps"])
    expected_jac = 0 if kind == "uniform" else int(sol.stats["num_steps"])
    assert int(sol.stats["num_jac"]) == expected_jac


def test_larger_sketches_take_fewer_steps():
    args = glm_data(1, n=1000)
    steps = []
    for m in (30, 1000):
        solver = jaxopt2.SketchedNewton(sketch_size=m, sketch="gaussian",
                                        sqrt_hessian=glm_sqrt_hessian)
        steps.append(int(jaxopt2.minimize(glm, jnp.zeros(D), args, solver=solver,
                                          max_steps=200).stats["num_steps"]))
    assert steps[1] < steps[0]


def test_batch_fn_and_pytree_params():
    """A user batch function (here: contiguous blocks) on dict params; the default subsample
    leaves the scalar hyperparameter alone."""
    X, y, lam = glm_data(2)

    def fun(p, args):
        return glm(p["w"], (args["X"], args["y"], args["lam"]))

    def batch_fn(args, key, m):
        start = jax.random.randint(key, (), 0, X.shape[0] - m)
        take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, m)
        return {"X": take(args["X"]), "y": take(args["y"]), "lam": args["lam"]}

    data = {"X": X, "y": y, "lam": lam}
    ref = newton_reference((X, y, lam))
    for solver in (jaxopt2.SketchedNewton(sketch_size=300, batch_fn=batch_fn, rtol=1e-10),
                   jaxopt2.SketchedNewton(sketch_size=300, rtol=1e-10)):
        sol = jaxopt2.minimize(fun, {"w": jnp.zeros(D)}, data, solver=solver, max_steps=100)
        np.testing.assert_allclose(sol.params["w"], ref, rtol=1e-5,
                                   atol=1e-6 * jnp.max(jnp.abs(ref)))


def test_implicit_gradient_through_subsampling():
    """dw*/dλ by the implicit function theorem equals the closed form −H⁻¹w* (the sketch only
    changes the path, not the solution)."""
    X, y, _ = glm_data(3, n=500)
    solver = jaxopt2.SketchedNewton(sketch_size=100, rtol=1e-10)
    w_of = lambda lam: jaxopt2.minimize(glm, jnp.zeros(D), (X, y, lam), solver=solver,
                                        max_steps=100).params
    jac = jax.jacrev(w_of)(jnp.asarray(1e-2))
    w = w_of(jnp.asarray(1e-2))
    H = jax.hessian(glm)(w, (X, y, jnp.asarray(1e-2)))
    np.testing.assert_allclose(jac, -jnp.linalg.solve(H, w), rtol=1e-6)


def test_input_checks():
    with pytest.raises(ValueError, match="sqrt_hessian"):
        jaxopt2.SketchedNewton(sketch="srht")
    with pytest.raises(ValueError, match="sketch"):
        jaxopt2.SketchedNewton(sketch="bogus")
    with pytest.raises(ValueError, match="sketch_size"):
        jaxopt2.SketchedNewton(sketch_size=0)
    X, y, lam = glm_data(n=100)
    # A prior mean of length d is not per-example data: the default subsample cannot tell,
    # so it asks for a batch_fn.
    prior = lambda w, a: glm(w, a[:3]) + jnp.sum((w - a[3]) ** 2)
    with pytest.raises(ValueError, match="batch_fn"):
        jaxopt2.minimize(prior, jnp.zeros(D), (X, y, lam, jnp.ones(D)),
                         solver=jaxopt2.SketchedNewton())
    bad = jaxopt2.SketchedNewton(sketch="gaussian", sqrt_hessian=lambda w, a: (a[0].T, None))
    with pytest.raises(ValueError, match="shape"):
        jaxopt2.minimize(glm, jnp.zeros(D), (X, y, lam), solver=bad)
    with pytest.raises(ValueError, match="subspace"):
        jaxopt2.SubspaceNewton(subspace="bogus")


# ----------------------------------------------------------------------------- SubspaceNewton


@pytest.mark.parametrize("subspace", ["coordinate", "gaussian"])
def test_full_subspace_is_newton(subspace):
    """With k = d the subspace is everything and each step is exactly Newton's."""
    args = glm_data(4, n=400)
    run = lambda solver: jaxopt2.minimize(glm, jnp.zeros(D), args, solver=solver, max_steps=3,
                                          throw=False).params
    np.testing.assert_allclose(run(jaxopt2.SubspaceNewton(subspace_dim=D, subspace=subspace)),
                               run(jaxopt2.Newton()), rtol=1e-10, atol=1e-12)


def test_subspace_newton_large_problem():
    """d = 1000 with 50-dimensional coordinate subspaces: converges (each step costs 50
    Hessian-vector products, never a d × d matrix)."""
    d = 1000
    c = jnp.linspace(0.1, 0.9, d)

    def fun(x, c):  # strongly convex near its minimizer σ(x) ≈ c, weakly coupled
        return jnp.sum(jnp.logaddexp(0.0, x) - c * x) + 0.05 * jnp.sum((x[1:] - x[:-1]) ** 2)

    solver = jaxopt2.SubspaceNewton(subspace_dim=50, rtol=1e-6)
    sol = jax.jit(lambda c: jaxopt2.minimize(fun, jnp.zeros(d), c, solver=solver,
                                             max_steps=2000))(c)
    assert sol.status == RESULTS.successful
    g0 = jnp.max(jnp.abs(jax.grad(fun)(jnp.zeros(d), c)))
    assert jnp.max(jnp.abs(jax.grad(fun)(sol.params, c))) <= 1e-6 * g0
    # 50 per step, plus the saddle check's Lanczos products at the end (jaxopt2/_stopping.py)
    from jaxopt2._stopping import CURVATURE_STEPS
    assert int(sol.stats["num_hvp"]) == 50 * int(sol.stats["num_steps"]) + 2 * CURVATURE_STEPS


# ----------------------------------------------------------------------------- PRNG keys


def _small_glm(dtype=jnp.float32):
    X, y, lam = glm_data(n=200, d=6, dtype=dtype)
    return X, y, lam


KEYED = {
    "SketchedNewton": lambda **kw: jaxopt2.SketchedNewton(sketch_size=8, **kw),
    "SketchedNewton-sqrt": lambda **kw: jaxopt2.SketchedNewton(
        sketch_size=8, sketch="gaussian", sqrt_hessian=glm_sqrt_hessian, **kw),
    "SubspaceNewton": lambda **kw: jaxopt2.SubspaceNewton(subspace_dim=2, **kw),
}


@pytest.mark.parametrize("name", KEYED)
def test_vmap_over_keys_gives_independent_streams(name):
    """The key is an array field: built inside `jax.vmap` from split keys, each member draws
    its own sketches (three keys, three different iterates after two steps), equal keys give
    equal results, and a key equals the seed it was made from."""
    args = _small_glm()
    make = KEYED[name]

    def solve(key):
        return jaxopt2.minimize(glm, jnp.zeros(6, jnp.float32), args, solver=make(key=key),
                                max_steps=2, throw=False).params

    keys = jax.random.split(jax.random.key(3), 3)
    batched = jax.jit(jax.vmap(solve))
    xs = np.asarray(batched(keys))
    assert xs.dtype == np.float32
    scale = np.max(np.abs(xs))
    for i in range(3):
        for j in range(i):
            assert np.max(np.abs(xs[i] - xs[j])) > 1e-3 * scale, (i, j)
    same = np.asarray(batched(jnp.stack([keys[1]] * 3)))
    np.testing.assert_allclose(same, np.broadcast_to(xs[1], same.shape), rtol=1e-4,
                               atol=1e-5 * scale)
    by_seed = jaxopt2.minimize(glm, jnp.zeros(6, jnp.float32), args, solver=make(seed=5),
                               max_steps=2, throw=False).params
    by_key = solve(jax.random.key(5))
    legacy = solve(jax.random.PRNGKey(5))
    np.testing.assert_allclose(by_key, by_seed, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(legacy, by_seed, rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore:A JAX array is being set as static")
@pytest.mark.parametrize("name", KEYED)
def test_key_validation(name):
    make = KEYED[name]
    for bad in (0, 1.5, "key", jnp.zeros(2, jnp.float32), jnp.zeros(3, jnp.uint32)):
        with pytest.raises(TypeError, match="key"):
            make(key=bad)
    with pytest.raises(TypeError, match="seed"):
        make(seed=jax.random.key(0))
    with pytest.raises(ValueError, match="either `key=` or `seed=`"):
        make(key=jax.random.key(0), seed=1)
    with pytest.raises(ValueError, match="seed"):
        make(seed=-1)
    # a batch of keys left unbatched: a clear error when the solve starts
    solver = make(key=jax.random.split(jax.random.key(0), 2))
    with pytest.raises(TypeError, match="batch of keys"):
        jaxopt2.minimize(glm, jnp.zeros(6, jnp.float32), _small_glm(), solver=solver,
                         max_steps=1)
