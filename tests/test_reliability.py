"""Honest statuses and derivatives (issue 13): each case asserts its outcome class — a correct
success, an honest failure status, or a clear error — in float32 (the accelerator default) first.

The cases are categories, run over every solver of a front door: far starts, starts at the
solution, problems without a solution, saddles, unbounded objectives, rescaled problems, and the
full jit × grad/jacfwd/hessian × throw matrix of derivatives through a failed solve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2 as J

# slow: every solver on hostile cases, each a compile; .ci/run runs it (make test-slow)
pytestmark = pytest.mark.slow

F32 = jnp.float32
NEWTON_TYPE = {
    "Newton": J.Newton, "NewtonCG": J.NewtonCG,
    "NewtonCG-tr": lambda: J.NewtonCG(trust_region=True),
    "LBFGS": J.LBFGS, "BFGS": J.BFGS, "RegularizedNewton": J.RegularizedNewton,
    "DampedNewton": J.DampedNewton,
}
CURVATURE = {
    "Newton": J.Newton, "NewtonCG": J.NewtonCG, "RegularizedNewton": J.RegularizedNewton,
    "DampedNewton": J.DampedNewton, "SubspaceNewton": lambda: J.SubspaceNewton(subspace_dim=2),
}
ROOT = {"NewtonRaphson": J.NewtonRaphson, "NewtonKrylov": J.NewtonKrylov, "Broyden": J.Broyden}
FIXED = {"FixedPointIteration": J.FixedPointIteration, "Anderson": J.Anderson}


def status(sol):
    return J.status_name(sol.status)


def rosenbrock(x, _):
    return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


@pytest.mark.parametrize("name", NEWTON_TYPE)
def test_rosenbrock_float32_is_solved_or_fails_honestly(name):
    sol = J.minimize(rosenbrock, jnp.array([-1.2, 1.0], F32), None, solver=NEWTON_TYPE[name](),
                     throw=False)
    assert sol.params.dtype == F32
    if status(sol) == "successful":
        np.testing.assert_allclose(sol.params, [1.0, 1.0], atol=1e-3)
    else:
        assert status(sol) in ("line_search_failed", "max_steps_reached")


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1e3, 1e6])
@pytest.mark.parametrize("name", NEWTON_TYPE)
def test_far_start_is_as_accurate_as_a_near_one(name, scale):
    # (x − 1)⁴: the start's gradient is ~scale³, so a test relative to it alone is loose.
    fun = lambda x, _: jnp.sum((x - 1.0) ** 4)  # noqa: E731
    sol = J.minimize(fun, jnp.full(2, scale, F32), None, solver=NEWTON_TYPE[name](),
                     throw=False, max_steps=512)
    if status(sol) == "successful":
        # the quartic's minimizer is resolved to about eps^(1/4) by values; 1e-2 either way
        np.testing.assert_allclose(sol.params, 1.0, atol=2e-2)
    else:
        assert status(sol) in ("line_search_failed", "max_steps_reached")


@pytest.mark.parametrize("trust_region", [True, False])
def test_newton_cg_far_start_first_step_cut_by_the_radius_is_not_a_stall(trust_region):
    """From (x − 1)⁴ at 10⁶ the trust-region variant's first step is cut to the initial radius
    1, i.e. 1e-6·s(x₀), below float32's resolution of x: the first-step rule must not read it
    as a start at the solution (it did, and the curvature check then refused the point as
    ill_conditioned). Both variants now walk to the minimizer."""
    fun = lambda x, _: jnp.sum((x - 1.0) ** 4)  # noqa: E731
    sol = J.minimize(fun, jnp.full(2, 1e6, F32), None,
                     solver=J.NewtonCG(trust_region=trust_region), throw=False, max_steps=512)
    assert status(sol) == "successful"
    assert int(sol.stats["num_steps"]) > 10
    np.testing.assert_allclose(sol.params, 1.0, atol=2e-2)


@pytest.mark.parametrize("name", ROOT)
def test_root_far_start(name):
    sol = J.root_find(lambda y, _: y**3 - 8.0, jnp.array([1e4], F32), None,
                      solver=ROOT[name](), throw=False)
    if status(sol) == "successful":
        np.testing.assert_allclose(sol.params, [2.0], rtol=1e-3)


@pytest.mark.parametrize("name", FIXED)
def test_fixed_point_far_start(name):
    sol = J.fixed_point(lambda y, _: jnp.cos(y), jnp.array([1e3], F32), None,
                        solver=FIXED[name](), throw=False)
    assert status(sol) == "successful"
    np.testing.assert_allclose(sol.params, [0.7390851], rtol=1e-3)


@pytest.mark.parametrize("name", FIXED)
def test_map_without_fixed_point_never_succeeds(name):
    sol = J.fixed_point(lambda y, _: y + 1 / (1 + y**2), jnp.array([0.0], F32), None,
                        solver=FIXED[name](), throw=False)
    assert status(sol) != "successful"


@pytest.mark.parametrize("name", ROOT)
def test_function_without_root_never_succeeds(name):
    for fn in (lambda y, _: jnp.exp(-y), lambda y, _: y**2 + 1.0):
        sol = J.root_find(fn, jnp.array([0.5], F32), None, solver=ROOT[name](), throw=False)
        assert status(sol) != "successful", fn


@pytest.mark.float64
@pytest.mark.parametrize("name", ["NewtonRaphson", "NewtonKrylov"])
def test_line_search_steps_do_not_certify_a_root(name):
    # y² + 1 from 0.5 in float64: the line search cuts each Newton step ever shorter at y ≈ 0;
    # those steps contract but estimate nothing (only full Newton steps certify a root)
    for dtype in (jnp.float32, jnp.float64):
        sol = J.root_find(lambda y, _: y**2 + 1.0, jnp.full(2, 0.5, dtype), None,
                          solver=ROOT[name](), throw=False)
        assert status(sol) != "successful", dtype


def test_linear_root_is_exact_after_one_step():
    for S in ROOT.values():
        sol = J.root_find(lambda y, a: y - a, jnp.zeros(2, F32), jnp.ones(2, F32), solver=S(),
                          throw=False)
        assert status(sol) == "successful" and int(sol.stats["num_steps"]) <= 2
        np.testing.assert_allclose(sol.params, 1.0)


def _quadratic():
    A = jax.random.normal(jax.random.key(0), (5, 5), F32)
    H = A @ A.T + jnp.eye(5, dtype=F32)
    b = jnp.arange(5.0, dtype=F32)
    return H, b


@pytest.mark.slow
@pytest.mark.parametrize("name", [*NEWTON_TYPE, "GradientDescent"])
def test_warm_start_at_the_solution(name):
    H, b = _quadratic()
    fun = lambda x, b: 0.5 * x @ H @ x - b @ x + 3.0  # noqa: E731
    x_star = jnp.linalg.solve(H, b)
    solver = J.GradientDescent() if name == "GradientDescent" else NEWTON_TYPE[name]()

    def solve(b):
        return J.minimize(fun, x_star, b, solver=solver, throw=False)

    sol = solve(b)
    assert status(sol) == "successful"
    assert int(sol.stats["num_steps"]) <= 1
    # and its derivative is the closed form dx*/db = H⁻¹
    jac = jax.jacrev(lambda b: solve(b).params)(b)
    np.testing.assert_allclose(jac, jnp.linalg.inv(H), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", ROOT)
def test_root_warm_start(name):
    H, b = _quadratic()
    y_star = jnp.linalg.solve(H, b)
    sol = J.root_find(lambda y, b: H @ y - b, y_star, b, solver=ROOT[name](), throw=False)
    assert status(sol) == "successful" and int(sol.stats["num_steps"]) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("a", [1e-8, 1e8])
@pytest.mark.parametrize("name", NEWTON_TYPE)
def test_rescaled_objective_gives_the_same_minimizer(name, a):
    H, b = _quadratic()
    fun = lambda x, a: a * (0.5 * x @ H @ x - b @ x + jnp.sum(x**4) / 10)  # noqa: E731
    ref = J.minimize(fun, jnp.zeros(5, F32), jnp.asarray(1.0, F32), solver=J.Newton())
    sol = J.minimize(fun, jnp.zeros(5, F32), jnp.asarray(a, F32), solver=NEWTON_TYPE[name](),
                     throw=False)
    assert int(sol.stats["num_steps"]) > 0
    if status(sol) == "successful":
        np.testing.assert_allclose(sol.params, ref.params, atol=3e-3)


@pytest.mark.parametrize("a", [1e-8, 1e8])
def test_random_subspace_step_that_cannot_move_x_is_not_the_end(a):
    """A step that leaves x unchanged ends Newton-type solves (the next one would be the
    same), but not a random-subspace one: the next subspace differs. The honesty table
    caught SubspaceNewton ending `line_search_failed` on this rescaled objective."""
    H, b = _quadratic()
    fun = lambda x, a: a * (0.5 * x @ H @ x - b @ x)  # noqa: E731
    x_star = jnp.linalg.solve(H, b)
    sol = J.minimize(fun, jnp.zeros(5, F32), jnp.asarray(a, F32),
                     solver=J.SubspaceNewton(subspace_dim=2), max_steps=256, throw=False)
    assert status(sol) == "successful"
    np.testing.assert_allclose(sol.params, x_star, atol=3e-3 * float(jnp.max(jnp.abs(x_star))))


@pytest.mark.parametrize("name", [*CURVATURE, "LBFGS", "BFGS", "GradientDescent"])
def test_saddle_is_not_a_minimum(name):
    # first-order solvers land exactly on the saddle here (zero gradient): checked too
    solver = CURVATURE[name]() if name in CURVATURE else getattr(J, name)()
    sol = J.minimize(lambda x, _: x[0] ** 2 - x[1] ** 2, jnp.array([1.0, 0.0], F32), None,
                     solver=solver, throw=False)
    assert status(sol) == "saddle_point"
    with pytest.raises(RuntimeError, match="saddle_point"):
        J.minimize(lambda x, _: x[0] ** 2 - x[1] ** 2, jnp.array([1.0, 0.0], F32), None,
                   solver=solver)


@pytest.mark.parametrize("name", CURVATURE)
def test_minimum_with_a_flat_direction_is_not_a_saddle(name):
    # PSD Hessian with a zero eigenvalue: still a minimum
    fun = lambda x, _: (x[0] - 1.0) ** 2 + 0.0 * x[1]  # noqa: E731
    sol = J.minimize(fun, jnp.array([3.0, 2.0], F32), None, solver=CURVATURE[name](),
                     throw=False)
    assert status(sol) == "successful"


@pytest.mark.slow
@pytest.mark.parametrize("name", [*NEWTON_TYPE, "GradientDescent"])
def test_unbounded_objective_is_never_successful(name):
    solver = J.GradientDescent() if name == "GradientDescent" else NEWTON_TYPE[name]()
    sol = J.minimize(lambda x, _: -jnp.sum(x) + 0.0 * jnp.sum(x**2), jnp.zeros(3, F32), None,
                     solver=solver, throw=False)
    assert status(sol) != "successful"


@pytest.mark.float64
def test_unbounded_objective_reports_diverged():
    for dtype in (jnp.float32, jnp.float64):
        sol = J.minimize(lambda x, _: -jnp.sum(x), jnp.zeros(3, dtype), None, solver=J.LBFGS(),
                         throw=False)
        assert status(sol) == "diverged", dtype


@pytest.mark.float64
def test_far_minimizer_with_deep_minimum_is_not_diverged():
    fun = lambda x, _: jnp.sum((x - 1e4) ** 2) - 1e9  # noqa: E731
    sol = J.minimize(fun, jnp.zeros(2, jnp.float64), None, solver=J.LBFGS(), throw=False)
    assert status(sol) == "successful"
    np.testing.assert_allclose(sol.params, 1e4, rtol=1e-6)


@pytest.mark.parametrize("name", ["Newton", "NewtonCG", "LBFGS", "GradientDescent"])
def test_far_minimizer_of_an_ill_conditioned_quadratic_is_not_diverged(name):
    # float32, condition 1e4, start at 0: the minimizer lies ~1e4 out and f* ~ −1e4, past
    # the old divergence thresholds (1/√eps ≈ 2.9e3 in float32): every minimizer said
    # `diverged` on this bounded problem
    d = 12
    Q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(3), (d, d), F32))
    A = (Q * jnp.logspace(0, -4, d, dtype=F32)) @ Q.T
    b = jax.random.normal(jax.random.key(4), (d,), F32)
    x_star = np.linalg.solve(np.asarray(A, np.float64), np.asarray(b, np.float64))
    assert np.max(np.abs(x_star)) > 3e3  # past 1/√eps of float32
    solver = getattr(J, name)()
    sol = J.minimize(lambda x, a: 0.5 * x @ (a[0] @ x) - a[1] @ x, jnp.zeros(d, F32), (A, b),
                     solver=solver, throw=False)
    assert status(sol) != "diverged"
    if status(sol) == "successful":
        err = np.max(np.abs(np.asarray(sol.params, np.float64) - x_star))
        assert err <= 1e-2 * np.max(np.abs(x_star)), err


# -- derivatives through a failed solve: the jit × transform × throw matrix ------------------

def _objective(p, a):
    return jnp.sum(jnp.cosh(p - a)) + 0.1 * jnp.sum(p**4)


def _failed(throw, adjoint=None):
    kw = {} if adjoint is None else {"adjoint": adjoint}

    def g(a):
        return J.minimize(_objective, jnp.zeros(3, F32), a, solver=J.LBFGS(), max_steps=1,
                          throw=throw, **kw).params.sum()
    return g


TRANSFORMS = {"grad": jax.grad, "jacfwd": jax.jacfwd, "hessian": jax.hessian}
A = jnp.array([1.0, 2.0, 3.0], F32)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_failed_solve_derivative_raises_with_throw(transform, jit):
    f = TRANSFORMS[transform](_failed(True))
    f = jax.jit(f) if jit else f
    with pytest.raises(Exception, match="max_steps_reached"):
        jax.block_until_ready(f(A))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_failed_solve_derivative_is_nan_without_throw(transform, jit):
    f = TRANSFORMS[transform](_failed(False))
    f = jax.jit(f) if jit else f
    assert np.all(np.isnan(f(A)))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_failed_solve_derivative_is_nan_per_problem_under_vmap(transform):
    def g(a, steps_scale):
        # the second problem gets a huge `a`: 8 steps are not enough for it
        return J.minimize(_objective, jnp.zeros(3, F32), a * steps_scale, solver=J.LBFGS(),
                          max_steps=8).params.sum()

    f = jax.vmap(TRANSFORMS[transform](g), in_axes=(0, 0))
    out = f(jnp.stack([A, A]), jnp.array([1.0, 100.0], F32))
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))


def test_opt_in_differentiates_the_point_reached():
    adjoint = J.ImplicitAdjoint(differentiate_unconverged=True)
    g = jax.jit(jax.grad(_failed(False, adjoint)))(A)
    # the implicit derivative at the point reached: −H⁻¹ ∂²f/∂p∂a there, summed
    p = J.minimize(_objective, jnp.zeros(3, F32), A, solver=J.LBFGS(), max_steps=1,
                   throw=False).params
    H = jax.hessian(_objective)(p, A)
    cross = jax.jacfwd(jax.grad(_objective), argnums=1)(p, A)
    expected = -(jnp.ones(3) @ jnp.linalg.solve(H, cross))
    np.testing.assert_allclose(g, expected, rtol=1e-4)


def test_converged_solve_derivative_is_unchanged():
    def g(a):
        return J.minimize(_objective, jnp.zeros(3, F32), a, solver=J.LBFGS()).params.sum()
    fd = [(g(A.at[i].add(1e-2)) - g(A.at[i].add(-1e-2))) / 2e-2 for i in range(3)]
    np.testing.assert_allclose(jax.jit(jax.grad(g))(A), fd, rtol=2e-2)


def test_equation_door_failed_derivative_raises_under_jit_grad():
    def g(lam):
        return J.root_find(lambda y, l: y**3 - l, jnp.array([1e4], F32), lam,
                           solver=J.NewtonRaphson(), max_steps=2).params.sum()
    # (the implicit derivative's own Jacobian-stability check may fire first at that point)
    with pytest.raises(Exception, match="max_steps_reached|adjoint_failed"):
        jax.block_until_ready(jax.jit(jax.grad(g))(jnp.asarray(8.0, F32)))


def test_adjoint_failure_raises_under_jacfwd():
    # the solve succeeds but the adjoint's linear solve (GMRES with a budget of 2 products on
    # an ill-conditioned 12 × 12 system) fails in every tangent direction of jacfwd: that must
    # raise, not return NaN silently (jacfwd vmaps the tangents of one problem)
    import lineax as lx

    A = jnp.diag(jnp.logspace(0, 4, 12).astype(F32)) + 0.1 * jnp.eye(12, k=1, dtype=F32)
    adjoint = J.ImplicitAdjoint(linear_solver=lx.GMRES(rtol=1e-6, atol=1e-6, max_steps=2,
                                                       restart=2))

    def g(a):
        return J.root_find(lambda y, a: A @ y - a, jnp.zeros(12, F32), a,
                           solver=J.NewtonRaphson(), adjoint=adjoint).params

    a = jnp.ones(12, F32)
    with pytest.raises(Exception, match="adjoint_failed"):
        jax.block_until_ready(jax.jit(jax.jacfwd(g))(a))
    # under a vmap over problems the same failure is reported per problem, not raised: the
    # tangents whose solve failed are NaN, and the others are right
    out = np.asarray(jax.vmap(jax.jacfwd(g))(jnp.stack([a, 2 * a])))
    assert np.any(np.isnan(out))
    exact = np.broadcast_to(np.linalg.inv(np.asarray(A, np.float64)), out.shape)
    # (accepted adjoint solves meet ‖Ax − b‖ ≤ √eps‖b‖: entries are right to √eps·cond(A))
    np.testing.assert_allclose(out[~np.isnan(out)], exact[~np.isnan(out)], atol=1e-3)


def test_custom_root_checks_the_returned_point():
    from jaxopt2 import implicit

    @implicit.custom_root(lambda x, a: x**3 - a)
    def good(x0, a):
        return jnp.cbrt(a)

    @implicit.custom_root(lambda x, a: x**3 - a)
    def wrong(x0, a):
        return jnp.cbrt(a) + 0.1

    a = jnp.asarray(8.0, F32)
    np.testing.assert_allclose(jax.grad(good, argnums=1)(1.0, a), 1 / 12, rtol=1e-5)
    with pytest.raises(Exception, match="not_a_root"):
        jax.block_until_ready(jax.jit(jax.grad(wrong, argnums=1))(1.0, a))
    batched = jax.vmap(jax.grad(wrong, argnums=1), (None, 0))(1.0, jnp.array([8.0, 27.0], F32))
    assert np.all(np.isnan(batched))


def test_error_under_jit_names_the_status_and_the_hint():
    f = jax.jit(lambda a: J.minimize(_objective, jnp.zeros(3, F32), a, solver=J.LBFGS(),
                                     max_steps=1).params)
    with pytest.raises(Exception) as info:
        jax.block_until_ready(f(A))
    assert "max_steps_reached" in str(info.value) and "throw=False" in str(info.value)


@pytest.mark.parametrize("transform", [None, "grad", "jacfwd"])
def test_error_under_plain_jit_is_short(transform):
    # JAX reports a callback's exception with every Python frame above it (15 of JAX's own
    # dispatch and all of the caller's): ours is raised so that one frame is shown
    f = _failed(True)
    f = jax.jit(TRANSFORMS[transform](f) if transform else f)
    with pytest.raises(jax.errors.JaxRuntimeError) as info:
        jax.block_until_ready(f(A))
    text = str(info.value)
    assert len(text) < 1000, text
    assert "jaxopt2: solve failed (max_steps_reached)" in text and "throw=False" in text
    assert text.count("File ") <= 1 and "equinox" not in text
