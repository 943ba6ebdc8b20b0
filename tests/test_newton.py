"""Newton and NewtonCG: convergence to dense-Newton references and closed forms, the
indefinite-curvature paths, the trust region, pluggable curvature and preconditioner, dtypes,
and jit + vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxopt2
from jaxopt2 import RESULTS
from jaxopt2._base import evaluate
from jaxopt2._linalg import damped_cholesky
from jaxopt2._solver.newton_cg import _NewtonCGState

pytestmark = pytest.mark.float64  # written for float64 tolerances

SOLVERS = {
    "Newton": jaxopt2.Newton,
    "NewtonCG": jaxopt2.NewtonCG,
    "NewtonCG-TR": lambda **kw: jaxopt2.NewtonCG(trust_region=True, **kw),
}
NAMES = list(SOLVERS)


# ----------------------------------------------------------------------------- problems


def logreg_data(seed=0, n=120, d=6, dtype=jnp.float64, spread=10.0):
    kx, kw, kn = jax.random.split(jax.random.PRNGKey(seed), 3)
    X = jax.random.normal(kx, (n, d), dtype) * jnp.linspace(1.0, spread, d, dtype=dtype)
    noise = jax.random.normal(kn, (n,), dtype)
    y = (X @ jax.random.normal(kw, (d,), dtype) + noise > 0).astype(dtype)
    return X, y


def logreg(params, args):
    X, y = args
    z = X @ params["w"] + params["b"]
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.05 * jnp.sum(params["w"] ** 2)


def logreg_init(d=6, dtype=jnp.float64):
    return {"w": jnp.zeros(d, dtype), "b": jnp.zeros((), dtype)}


@functools.cache
def logreg_reference(seed):
    return dense_newton(logreg, logreg_init(), logreg_data(seed))


def softmax_data(seed=1, n=150, d=5, k=4):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kx, (n, d)), jax.random.randint(ky, (n,), 0, k)


def softmax(params, args):
    X, labels = args
    z = X @ params["W"] + params["b"]
    nll = jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, labels[:, None], 1)[:, 0]
    return jnp.mean(nll) + 0.01 * (jnp.sum(params["W"] ** 2) + jnp.sum(params["b"] ** 2))


def rosenbrock(x, args):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def double_well(x, args):
    # saddle at the origin, minima at (±1/√2, 0); ∂²f/∂x² = 12x² − 2 < 0 for |x| < 0.41
    return x[0] ** 4 - x[0] ** 2 + x[1] ** 2


def dense_newton(fun, params, args, steps=30):
    """The reference: plain Newton with jnp.linalg.solve on the flattened parameters."""
    flat, unravel = ravel_pytree(params)
    f = lambda x: fun(unravel(x), args)
    step = jax.jit(lambda x: x - jnp.linalg.solve(jax.hessian(f)(x), jax.grad(f)(x)))
    for _ in range(steps):
        flat = step(flat)
    return unravel(flat)


def assert_tree_close(a, b, **kw):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


def solve(fun, params, args=None, solver=None, **kw):
    return jaxopt2.minimize(fun, params, args, solver=solver, **kw)


# ----------------------------------------------------------------------------- convergence


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.parametrize("name", NAMES)
def test_logistic_regression_batch_matches_dense_newton(name):
    # jit + vmap over a batch of problems; each must match its own dense-Newton reference
    seeds = (0, 1)
    batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[logreg_data(s) for s in seeds])
    run = lambda a: solve(logreg, logreg_init(), a, SOLVERS[name](rtol=1e-10))
    sols = jax.jit(jax.vmap(run))(batch)
    assert jnp.all(sols.status == RESULTS.successful)
    for i, seed in enumerate(seeds):
        got = jax.tree_util.tree_map(lambda x, i=i: x[i], sols.params)
        assert_tree_close(got, logreg_reference(seed), rtol=1e-8, atol=1e-10)
    stats = {k: np.asarray(v) for k, v in sols.stats.items()}
    # Newton-type local convergence: a handful of steps from zero to a 1e-10 gradient
    assert np.all(stats["num_steps"] <= 12)
    if name == "Newton":
        np.testing.assert_array_equal(stats["num_hessian"], stats["num_steps"])
        # no products in the steps; the curvature check's two batched Lanczos runs (from a
        # fixed vector and from g) at the end only
        from jaxopt2._stopping import CURVATURE_STEPS
        n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(logreg_init()))
        assert np.all(stats["num_hvp"] == 2 * min(n, CURVATURE_STEPS))
    else:
        assert np.all(stats["num_hessian"] == 0)
        assert np.all(stats["num_hvp"] >= stats["num_steps"])
    if name == "NewtonCG":
        gd = solve(logreg, logreg_init(), logreg_data(seeds[0]),
                   jaxopt2.GradientDescent(rtol=1e-6), max_steps=3000, throw=False)
        assert 5 * stats["num_steps"][0] < int(gd.stats["num_steps"])


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.parametrize("name", ["Newton", "NewtonCG"])
def test_softmax_regression_matches_dense_newton(name):
    args = softmax_data()
    p0 = {"W": jnp.zeros((5, 4)), "b": jnp.zeros(4)}
    ref = dense_newton(softmax, p0, args)
    sol = solve(softmax, p0, args, SOLVERS[name](rtol=1e-9))
    assert sol.status == RESULTS.successful
    assert_tree_close(sol.params, ref, rtol=1e-6, atol=1e-8)
    assert int(sol.stats["num_steps"]) <= 15


@pytest.mark.parametrize("name", ["Newton"])  # NewtonCG on a quadratic: test_jacobi_*
def test_quadratic_closed_form(name):
    key = jax.random.PRNGKey(3)
    M = jax.random.normal(key, (7, 7))
    A = M @ M.T + 0.5 * jnp.eye(7)
    center = {"u": jnp.arange(3.0), "v": -jnp.ones((2, 2))}
    c, unravel = ravel_pytree(center)

    def quad(p, A):
        x = ravel_pytree(p)[0] - c
        return 0.5 * x @ A @ x

    p0 = jax.tree_util.tree_map(jnp.zeros_like, center)
    sol = solve(quad, p0, A, SOLVERS[name](rtol=1e-10))
    assert sol.status == RESULTS.successful
    assert_tree_close(sol.params, center, atol=1e-8)
    if name == "Newton":  # exact on a quadratic: one step, and at most one confirming it
        assert int(sol.stats["num_steps"]) <= 2


@pytest.mark.parametrize("name", ["Newton", "NewtonCG"])  # trust region: test_trust_region_*
def test_rosenbrock(name):
    values = []
    sol = solve(rosenbrock, jnp.array([-1.2, 1.0]), solver=SOLVERS[name](rtol=1e-9),
                max_steps=150, callback=lambda k, p, v, g: values.append(float(v)))
    assert sol.status == RESULTS.successful
    np.testing.assert_allclose(sol.params, [1.0, 1.0], atol=1e-6)
    assert np.all(np.diff(values) <= 0)


@pytest.mark.parametrize("name", NAMES)
def test_indefinite_start_reaches_a_minimum(name):
    x0 = jnp.array([0.05, 1.0])  # ∂²f/∂x² ≈ −2: the Hessian is indefinite here
    assert jnp.linalg.eigvalsh(jax.hessian(double_well)(x0, None))[0] < 0
    values = []
    # default rtol: at rtol=1e-10 the trust-region variant sits at the minimizer with steps
    # below the resolution of x, which the stopping rule cannot count as evidence
    sol = solve(double_well, x0, solver=SOLVERS[name](), max_steps=60,
                callback=lambda k, p, v, g: values.append(float(v)))
    assert sol.status == RESULTS.successful
    np.testing.assert_allclose(sol.params, [2**-0.5, 0.0], atol=1e-6)
    assert np.all(np.diff([double_well(x0, None)] + values) <= 0)
    # a local minimum, not the saddle: the Hessian there is positive definite
    assert jnp.linalg.eigvalsh(jax.hessian(double_well)(sol.params, None))[0] > 0


def test_newton_fallback_gives_a_descent_step():
    x0 = jnp.array([0.05, 0.0])
    fn = lambda p, a: (double_well(p, a), None)
    it = evaluate(fn, x0, None)
    solver = jaxopt2.Newton()
    step = jax.jit(lambda it: solver.step(fn, it, None, solver.init(fn, it, None)))
    new, state, counts, result = step(it)
    assert result == RESULTS.successful
    assert state.damping > 0  # the plain Cholesky failed and the damped one was used
    step = new.params - x0
    assert jnp.dot(it.grad, step) < 0
    assert new.value < it.value
    assert int(counts.hessian) == 1
    # the plain Newton step would go uphill in x (towards the saddle's maximum direction)
    newton_step = -jnp.linalg.solve(jax.hessian(double_well)(x0, None), it.grad)
    assert jnp.dot(it.grad, newton_step) > 0


def test_damped_cholesky_factor():
    h = jnp.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, -3.0]])  # eigenvalues 3, −1, −3
    damped = jax.jit(jax.vmap(lambda h: damped_cholesky(h, 12)))
    spd = jnp.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    factors, taus = damped(jnp.stack([h, spd]))
    factor, tau = factors[0], taus[0]
    assert tau > 3.0
    np.testing.assert_allclose(factor @ factor.T, h + tau * jnp.eye(3), atol=1e-12)
    assert taus[1] == 0  # positive definite: no damping, the plain factor
    np.testing.assert_allclose(factors[1], jnp.linalg.cholesky(spd), atol=1e-15)


# ----------------------------------------------------------------------------- NewtonCG options


def test_trust_region_rejects_without_gradient():
    # a huge first radius forces rejections: each costs one objective, no gradient
    solver = jaxopt2.NewtonCG(trust_region=True, initial_radius=1e3, rtol=1e-9)
    values = []
    sol = solve(rosenbrock, jnp.array([-1.2, 1.0]), solver=solver, max_steps=150,
                callback=lambda k, p, v, g: values.append(float(v)))
    assert sol.status == RESULTS.successful
    np.testing.assert_allclose(sol.params, [1.0, 1.0], atol=1e-6)
    assert np.all(np.diff(values) <= 0)  # a rejected step keeps the iterate
    steps, fun, grad = (int(sol.stats[k]) for k in ("num_steps", "num_fun", "num_grad"))
    assert fun == steps
    assert grad < steps + 1  # some steps were rejected and skipped the gradient
    assert int(sol.stats["num_hvp"]) > steps


def test_gauss_newton_curvature_matches():
    args = logreg_data(seed=0)
    ref = logreg_reference(0)

    def model(p, a):
        return a[0] @ p["w"] + p["b"], p["w"]  # the regulariser is a loss on an output too

    def loss(out, a):
        z, w = out
        return jnp.mean(jnp.logaddexp(0.0, z) - a[1] * z) + 0.05 * jnp.sum(w**2)

    ggn = lambda f, p, a: jaxopt2.curvature.gauss_newton(model, loss, p, a)
    sol = solve(logreg, logreg_init(), args, jaxopt2.NewtonCG(curvature=ggn, rtol=1e-10))
    assert sol.status == RESULTS.successful
    assert_tree_close(sol.params, ref, rtol=1e-8, atol=1e-10)
    assert int(sol.stats["num_steps"]) <= 12


def test_jacobi_preconditioner_is_used():
    scales = jnp.logspace(0, 3, 30)
    A = jnp.diag(scales) + 0.1 * jnp.ones((30, 30))
    b = jnp.ones(30)
    quad = lambda x, a: 0.5 * x @ a[0] @ x - a[1] @ x
    jacobi = lambda f, p, a, op: (lambda r: r / jnp.diag(a[0]))
    plain = jaxopt2.NewtonCG(rtol=1e-10, forcing=1e-10)
    precond = jaxopt2.NewtonCG(rtol=1e-10, forcing=1e-10, preconditioner=jacobi)
    s1 = solve(quad, jnp.zeros(30), (A, b), plain)
    s2 = solve(quad, jnp.zeros(30), (A, b), precond)
    x_star = jnp.linalg.solve(A, b)
    for s in (s1, s2):
        assert s.status == RESULTS.successful
        np.testing.assert_allclose(s.params, x_star, rtol=1e-7)
    assert int(s2.stats["num_hvp"]) < int(s1.stats["num_hvp"])


def test_forcing_terms():
    state = lambda g, eta: _NewtonCGState(jnp.asarray(g), jnp.asarray(eta), jnp.ones(()),
                                          jnp.zeros((), jnp.int32), jnp.inf, jnp.inf,
                                          jnp.array(False), jnp.asarray(200), jnp.zeros(()))
    ew = jaxopt2.NewtonCG()
    # choice 2: 0.9 (‖gₖ‖/‖gₖ₋₁‖)², here 0.9 · 0.1² = 0.009 ...
    np.testing.assert_allclose(ew._forcing_term(state(1.0, 0.2), 0.1), 0.009)
    # ... unless the safeguard 0.9 ηₖ₋₁² = 0.225 > 0.1 holds it up
    np.testing.assert_allclose(ew._forcing_term(state(1.0, 0.5), 0.1), 0.225)
    # capped at 0.5 when the gradient grows
    np.testing.assert_allclose(ew._forcing_term(state(1.0, 0.5), 3.0), 0.5)
    sqrt = jaxopt2.NewtonCG(forcing="sqrt")
    np.testing.assert_allclose(sqrt._forcing_term(state(1.0, 0.5), 0.01), 0.1)
    np.testing.assert_allclose(sqrt._forcing_term(state(1.0, 0.5), 4.0), 0.5)
    np.testing.assert_allclose(jaxopt2.NewtonCG(forcing=0.3)._forcing_term(state(1.0, 0.5), 9.0),
                               0.3)
    with pytest.raises(ValueError, match="forcing"):
        jaxopt2.NewtonCG(forcing="bogus")
    with pytest.raises(ValueError, match="forcing"):
        jaxopt2.NewtonCG(forcing=1.5)


# ----------------------------------------------------------------------------- dtypes, transforms


@pytest.mark.parametrize("name", NAMES)
def test_float32(name):
    args = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), logreg_data(0))
    ref = logreg_reference(0)
    sol = solve(logreg, logreg_init(dtype=jnp.float32), args, SOLVERS[name]())
    assert sol.status == RESULTS.successful
    for leaf in jax.tree_util.tree_leaves((sol.params, sol.value)):
        assert leaf.dtype == jnp.float32
        assert jnp.all(jnp.isfinite(leaf))
    assert_tree_close(sol.params, ref, atol=2e-3)


@pytest.mark.parametrize("name", ["Newton", "NewtonCG-TR"])
def test_wrong_gradient_reports_failure(name):
    @jax.custom_jvp
    def bowl(x):
        return jnp.sum(x**2)

    @bowl.defjvp
    def bowl_jvp(primals, tangents):  # the gradient with the wrong sign: every step goes uphill
        (x,), (t,) = primals, tangents
        return bowl(x), -2 * jnp.dot(x, t)

    sol = solve(lambda x, a: bowl(x), jnp.ones(3), solver=SOLVERS[name](), max_steps=100,
                throw=False)
    assert sol.status == RESULTS.line_search_failed
    np.testing.assert_array_equal(sol.params, jnp.ones(3))  # no uphill step was taken


def test_mixed_precision_leaves():
    # f is float64 but its float32 leaf limits how finely f resolves; a tight default
    # tolerance must still be reached, with every leaf keeping its dtype
    f = lambda p, a: (jnp.sum((p["a"] - 1.0) ** 4 + p["a"] ** 2)
                      + jnp.sum((p["b"] + 2.0) ** 2 * (1 + p["a"][0] ** 2)))
    p0 = {"a": jnp.zeros(2, jnp.float32), "b": jnp.zeros(3, jnp.float64)}
    sol = solve(f, p0, solver=jaxopt2.NewtonCG())
    assert sol.status == RESULTS.successful
    assert sol.params["a"].dtype == jnp.float32 and sol.params["b"].dtype == jnp.float64
    # 4(a − 1)³ + 2a = 0 at a ≈ 0.4102455
    np.testing.assert_allclose(sol.params["a"], 0.4102455, rtol=1e-5)
    np.testing.assert_allclose(sol.params["b"], -2.0, rtol=1e-6)


def _rotated_quadratic(n, dtype, seed=0):
    """½xᵀAx − bᵀx, A = Q diag(1 … 1e4, log-spaced, + 0.1) Qᵀ with a random rotation Q: CG
    needs about 3n iterations in float64 to reach a certifying residual."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * (np.logspace(0, 4, n) + 0.1)) @ q.T
    b = a @ rng.standard_normal(n)
    return jnp.asarray(a, dtype), jnp.asarray(b, dtype), np.linalg.solve(a, b)


@pytest.mark.parametrize("preconditioner", ["auto", None])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_newton_cg_grows_its_budget_to_certify_an_ill_conditioned_minimum(dtype, preconditioner):
    # At n = 60 the default budget, 2n = 120 products, is below the ~180 that CG needs to
    # certify in float64: with a fixed budget the solve spun to max_steps (256 · 120 products)
    # with x already right. The default doubles it after the certifying solve runs out.
    n = 60
    a, b, x_star = _rotated_quadratic(n, dtype)
    quad = lambda x, ab: 0.5 * x @ (ab[0] @ x) - ab[1] @ x
    sol = jaxopt2.minimize(quad, jnp.zeros(n, dtype), (a, b),
                           solver=jaxopt2.NewtonCG(preconditioner=preconditioner), throw=False)
    assert sol.status == RESULTS.successful, jaxopt2.status_name(sol.status)
    tol = 1e-9 if dtype == jnp.float64 else 1e-3
    np.testing.assert_allclose(sol.params, x_star, atol=tol * np.abs(x_star).max())
    assert int(sol.stats["num_hvp"]) < 10 * 2 * n * 8  # a few steps, not 256 of them
    assert int(sol.state.cg_limit) > 2 * n  # the budget grew
    # an integer budget is the user's: fixed, and the same solve stays uncertified
    if dtype == jnp.float64:
        fixed = jaxopt2.minimize(quad, jnp.zeros(n, dtype), (a, b), max_steps=30, throw=False,
                                 solver=jaxopt2.NewtonCG(preconditioner=preconditioner,
                                                         cg_max_steps=2 * n))
        assert fixed.status != RESULTS.successful
        assert int(fixed.state.cg_limit) == 2 * n
