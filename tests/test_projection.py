"""jaxopt2.projection: each projection against an independent reference (a different
algorithm, a KKT solve, or the variational inequality ⟨x − P(x), z − P(x)⟩ ≤ 0 for z in the
set), its derivative against the closed form and against finite differences, and the contract:
jit, vmap, pytrees, dtypes kept, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt2 import projection as P


def rand(seed, shape, dtype=np.float64):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def simplex_bisection(v, s):
    """Reference: θ solves Σ max(v − θ, 0) = s, found by bisection (not by sorting)."""
    lo, hi = v.min() - s, v.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > s else (lo, mid)
    return np.maximum(v - 0.5 * (lo + hi), 0)


def fd_jvp(f, x, v, eps=1e-6):
    return (np.asarray(f(x + eps * v)) - np.asarray(f(x - eps * v))) / (2 * eps)


# ------------------------------------------------------------------------------- values (float32)

def test_box_orthant_linf_against_clip():
    x = rand(0, (7,), np.float32)
    lo, hi = rand(1, (7,), np.float32) - 1, rand(2, (7,), np.float32) ** 2
    lo = np.minimum(lo, hi)
    y = P.box(jnp.asarray(x), (lo, hi))
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, np.clip(x, lo, hi))
    np.testing.assert_array_equal(P.non_negative(x), np.maximum(x, 0))
    np.testing.assert_array_equal(P.linf_ball(x, 0.3), np.clip(x, -0.3, 0.3))


def test_box_pytree_none_scalar_and_inf_bounds():
    x = {"w": jnp.array([-2.0, 0.5, 3.0]), "b": jnp.array(7.0), "c": jnp.array([-5.0, 5.0])}
    y = P.box(x, ({"w": -1.0, "b": None, "c": jnp.array([-jnp.inf, 0.0])}, {"w": 1.0, "b": 2.0,
                                                                              "c": jnp.inf}))
    np.testing.assert_array_equal(y["w"], [-1.0, 0.5, 1.0])
    assert float(y["b"]) == 2.0
    np.testing.assert_array_equal(y["c"], [-5.0, 5.0])
    y = P.box(x, (0.0, None))                          # one-sided, scalar broadcast to leaves
    np.testing.assert_array_equal(y["w"], [0.0, 0.5, 3.0])


@pytest.mark.parametrize("s", [1.0, 2.5])
def test_simplex_and_l1_ball_against_bisection(s):
    for seed in range(4):
        x = rand(seed, (9,), np.float32) * 2
        y = np.asarray(P.simplex(jnp.asarray(x), s))
        np.testing.assert_allclose(y, simplex_bisection(x.astype(np.float64), s), atol=2e-6)
        assert abs(y.sum() - s) < 1e-5 and y.min() >= 0
        z = np.asarray(P.l1_ball(jnp.asarray(x), s))
        ref = x if np.abs(x).sum() <= s else np.sign(x) * simplex_bisection(np.abs(x), s)
        np.testing.assert_allclose(z, ref, atol=2e-6)
    inside = np.array([0.1, -0.2, 0.3], np.float32)
    np.testing.assert_array_equal(P.l1_ball(inside, 1.0), inside)


def test_simplex_over_a_pytree_is_one_vector():
    x = {"a": jnp.array([0.3, 1.2]), "b": jnp.array([[0.9, -1.0]])}
    y = P.simplex(x)
    flat = np.concatenate([np.asarray(x["a"]), np.asarray(x["b"]).ravel()])
    ref = simplex_bisection(flat.astype(np.float64), 1.0)
    np.testing.assert_allclose(np.concatenate([y["a"], np.ravel(y["b"])]), ref, atol=2e-6)
    assert y["b"].shape == (1, 2)


def test_l2_ball_hyperplane_halfspace_closed_forms():
    x = jnp.asarray(rand(3, (5,), np.float32)) * 3
    y = P.l2_ball(x, 0.5)
    np.testing.assert_allclose(y, x * 0.5 / jnp.linalg.norm(x), rtol=1e-6)
    np.testing.assert_array_equal(P.l2_ball(0.01 * x, 10.0), 0.01 * x)
    a, b = jnp.asarray(rand(4, (5,), np.float32)), 0.7
    y = P.hyperplane(x, (a, b))
    assert abs(float(a @ y) - b) < 1e-5
    # x − y is normal to the plane: parallel to a.
    np.testing.assert_allclose(jnp.outer(x - y, a) - jnp.outer(a, x - y), 0, atol=1e-5)
    b_low = float(a @ x) - 1.0       # x violates aᵀy ≤ b_low: same as the hyperplane
    np.testing.assert_allclose(P.halfspace(x, (a, b_low)), P.hyperplane(x, (a, b_low)), atol=1e-6)
    np.testing.assert_array_equal(P.halfspace(x, (a, float(a @ x) + 1.0)), x)


@pytest.mark.float64
def test_affine_set_against_kkt_solve():
    m, n = 3, 6
    A, b, x = rand(5, (m, n)), rand(6, (m,)), rand(7, (n,))
    kkt = np.block([[np.eye(n), A.T], [A, np.zeros((m, m))]])
    ref = np.linalg.solve(kkt, np.concatenate([x, b]))[:n]
    y = P.affine_set(jnp.asarray(x), (A, b))
    np.testing.assert_allclose(y, ref, atol=1e-12)
    # Redundant equations (rank-deficient A, consistent b) give the same projection.
    A2, b2 = np.vstack([A, A[:1] + A[1:2]]), np.concatenate([b, b[:1] + b[1:2]])
    np.testing.assert_allclose(P.affine_set(jnp.asarray(x), (A2, b2)), ref, atol=1e-10)


@pytest.mark.float64
def test_psd_against_eigh_and_variational_inequality():
    X = rand(8, (4, 4))
    Y = np.asarray(P.psd(jnp.asarray(X)))
    w, V = np.linalg.eigh(0.5 * (X + X.T))
    np.testing.assert_allclose(Y, (V * np.maximum(w, 0)) @ V.T, atol=1e-12)
    assert np.linalg.eigvalsh(Y).min() > -1e-12
    for seed in range(10):               # ⟨X − P(X), Z − P(X)⟩ ≤ 0 for every PSD Z
        B = rand(100 + seed, (4, 4))
        assert np.sum((X - Y) * (B @ B.T - Y)) <= 1e-10
    stack = jnp.stack([jnp.asarray(X), -jnp.asarray(X)])   # a stack of matrices
    np.testing.assert_allclose(P.psd(stack)[0], Y, atol=1e-12)


@pytest.mark.float64
def test_variational_inequality_for_the_sets_over_pytrees():
    """⟨x − P(x), z − P(x)⟩ ≤ 0 for random z in the set: the defining property of the
    projection, independent of how it is computed."""
    rng = np.random.default_rng(9)
    x = {"u": jnp.asarray(rng.normal(size=3)) * 2, "v": jnp.asarray(rng.normal(size=(2, 2))) * 2}
    a = {"u": jnp.asarray(rng.normal(size=3)), "v": jnp.asarray(rng.normal(size=(2, 2)))}
    flat = lambda t: np.concatenate([np.ravel(t["u"]), np.ravel(t["v"])])  # noqa: E731
    fa = flat(a)
    cases = {   # the projection, and a map from any random vector into the set
        "simplex": (lambda t: P.simplex(t, 2.0), lambda z: 2.0 * np.abs(z) / np.abs(z).sum()),
        "l1": (lambda t: P.l1_ball(t, 1.5), lambda z: rng.uniform() * 1.5 * z / np.abs(z).sum()),
        "l2": (lambda t: P.l2_ball(t, 1.5),
               lambda z: rng.uniform() * 1.5 * z / np.linalg.norm(z)),
        "linf": (lambda t: P.linf_ball(t, 0.5), lambda z: np.clip(z, -0.5, 0.5)),
        "halfspace": (lambda t: P.halfspace(t, (a, -1.0)),
                      lambda z: z - max(fa @ z + 1.0 + rng.uniform(), 0) * fa / (fa @ fa)),
    }
    for name, (proj, into_set) in cases.items():
        y = flat(proj(x))
        assert np.linalg.norm(flat(x) - y) > 1e-3, name      # x is outside the set
        for _ in range(30):
            z = into_set(rng.normal(size=7))
            assert (flat(x) - y) @ (z - y) <= 1e-10, name


# --------------------------------------------------------------------------------- derivatives

def test_box_jacobian_is_the_free_mask():
    x = jnp.array([-2.0, 0.3, 0.9, 4.0])
    lo, hi = jnp.array([-1.0, 0.0, 0.0, 0.0]), jnp.array([1.0, 1.0, 0.5, 1.0])
    J = jax.jacobian(P.box)(x, (lo, hi))
    np.testing.assert_array_equal(J, np.diag([0.0, 1.0, 0.0, 0.0]))
    Jl, Ju = jax.jacobian(lambda b: P.box(x, b))((lo, hi))
    np.testing.assert_array_equal(Jl, np.diag([1.0, 0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(Ju, np.diag([0.0, 0.0, 1.0, 1.0]))


def test_box_derivative_at_ties_is_the_mask_and_shared_with_bounds():
    """At x = lower or x = upper the coordinate counts as free: derivative 1 (jnp.clip would
    give 0.5), 0 with respect to the bound. `minimize(..., bounds=)` projects with the same
    function, and linf_ball is the box [−r, r]. Away from ties: central differences."""
    from jaxopt2._composite import Composite

    x = jnp.array([-2.0, 0.0, 0.3, 1.0, 4.0])
    lo, hi = jnp.zeros(5), jnp.ones(5)
    mask = np.diag([0.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(jax.jacobian(P.box)(x, (lo, hi)), mask)
    Jl, Ju = jax.jacobian(lambda b: P.box(x, b))((lo, hi))
    np.testing.assert_array_equal(Jl, np.diag([1.0, 0.0, 0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(Ju, np.diag([0.0, 0.0, 0.0, 0.0, 1.0]))
    bounded = Composite(lower=lo, upper=hi)
    np.testing.assert_array_equal(bounded.project(x), P.box(x, (lo, hi)))
    np.testing.assert_array_equal(jax.jacobian(bounded.project)(x), mask)
    np.testing.assert_array_equal(jax.jacobian(lambda v: P.linf_ball(v, 1.0))(x),
                                  np.diag([0.0, 1.0, 1.0, 1.0, 0.0]))
    for i in (0, 2, 4):                                   # not at a tie: finite differences
        e = np.eye(5)[i]
        fd = (P.box(x + 1e-3 * e, (lo, hi)) - P.box(x - 1e-3 * e, (lo, hi))) / 2e-3
        np.testing.assert_allclose(fd, mask[:, i], atol=1e-3)   # float32 round-off


def test_simplex_jacobian_closed_form():
    x = jnp.array([0.8, -0.5, 0.6, 0.1, 2.0]) * 0.5
    y = P.simplex(x)
    s = np.asarray(y > 0, np.float32)
    k = s.sum()
    assert 1 < k < 5                      # a generic point with a partial support
    J = jax.jacobian(P.simplex)(x)
    np.testing.assert_allclose(J, np.diag(s) - np.outer(s, s) / k, atol=1e-6)
    # l1 ball outside: D (diag(s) − ssᵀ/k) D with D = diag(sign x).
    xb = jnp.array([0.8, -0.5, 0.6, -0.1, 2.0])
    yb = P.l1_ball(xb, 1.0)
    sb = np.asarray(yb != 0, np.float32)
    D = np.diag(np.sign(np.asarray(xb)))
    Jb = jax.jacobian(P.l1_ball)(xb, 1.0)
    np.testing.assert_allclose(Jb, D @ (np.diag(sb) - np.outer(sb, sb) / sb.sum()) @ D, atol=1e-6)


def test_ball_and_plane_jacobians_closed_form():
    x = jnp.array([1.0, -2.0, 2.0])                 # ‖x‖ = 3
    J = jax.jacobian(P.l2_ball)(x, 1.5)
    np.testing.assert_allclose(J, 0.5 * (np.eye(3) - np.outer(x, x) / 9.0), atol=1e-6)
    np.testing.assert_allclose(jax.jacobian(P.l2_ball)(0.1 * x, 1.5), np.eye(3), atol=1e-7)
    assert np.all(np.isfinite(jax.jacobian(P.l2_ball)(jnp.zeros(3), 1.0)))   # safe at 0
    a = jnp.array([1.0, 2.0, -1.0])
    J = jax.jacobian(P.hyperplane)(x, (a, 0.5))
    np.testing.assert_allclose(J, np.eye(3) - np.outer(a, a) / 6.0, atol=1e-6)


@pytest.mark.float64
def test_jvps_against_finite_differences():
    rng = np.random.default_rng(11)
    n = 6
    A, b = rng.normal(size=(2, n)), rng.normal(size=2)
    a = rng.normal(size=n)
    cases = {
        "simplex": lambda x: P.simplex(x, 1.3),
        "l1_ball": lambda x: P.l1_ball(x, 1.0),
        "l2_ball": lambda x: P.l2_ball(x, 1.0),
        "halfspace": lambda x: P.halfspace(x, (jnp.asarray(a), -0.5)),
        "affine_set": lambda x: P.affine_set(x, (A, b)),
        "psd": lambda x: P.psd(x.reshape(2, 3) @ x.reshape(2, 3).T - jnp.eye(2)).ravel(),
        "box": lambda x: P.box(x, (-0.5, 0.5)),
    }
    for name, f in cases.items():
        x = rng.normal(size=n) * 1.5
        v = rng.normal(size=n)
        # One compiled function per case (value at x ± εv, and the jvp): tests are dominated
        # by compiling, and eager mode compiles every primitive separately.
        both = jax.jit(lambda x, v, f=f: (f(x + 1e-6 * v), f(x - 1e-6 * v),
                                          jax.jvp(f, (x,), (v,))[1]))
        plus, minus, jvp = both(jnp.asarray(x), jnp.asarray(v))
        np.testing.assert_allclose(jvp, (plus - minus) / 2e-6, atol=1e-6, err_msg=name)
    # With respect to the set's parameters: b of the affine set, the radius, the PSD matrix.
    x = rng.normal(size=n)
    db = rng.normal(size=2)
    f = lambda bb: P.affine_set(jnp.asarray(x), (A, bb))  # noqa: E731
    np.testing.assert_allclose(jax.jvp(f, (jnp.asarray(b),), (jnp.asarray(db),))[1],
                               fd_jvp(f, b, db), atol=1e-6)
    g = lambda r: P.l1_ball(jnp.asarray(3 * x), r)  # noqa: E731
    np.testing.assert_allclose(jax.jvp(g, (1.0,), (1.0,))[1], fd_jvp(g, 1.0, 1.0), atol=1e-6)
    X, V = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    np.testing.assert_allclose(jax.jvp(P.psd, (jnp.asarray(X),), (jnp.asarray(V),))[1],
                               fd_jvp(P.psd, X, V), atol=1e-6)


# ----------------------------------------------------------------------------------- contract

def test_jit_vmap_and_dtype():
    X = jnp.asarray(rand(12, (4, 5), np.float32))
    rows = jax.jit(jax.vmap(P.simplex))(X)
    assert rows.dtype == jnp.float32
    for i in range(4):
        np.testing.assert_allclose(rows[i], P.simplex(X[i]), atol=1e-7)
    radii = jnp.array([0.5, 1.0, 2.0, 3.0])
    out = jax.vmap(P.l1_ball)(X, radii)
    for i in range(4):
        np.testing.assert_allclose(out[i], P.l1_ball(X[i], float(radii[i])), atol=1e-6)
    lows = jnp.array([-0.1, 0.0, 0.1, 0.2])
    np.testing.assert_array_equal(jax.vmap(lambda x, lo: P.box(x, (lo, 1.0)))(X, lows),
                                  np.clip(X, np.asarray(lows)[:, None], 1.0))
    Xh = X.astype(jnp.bfloat16)
    assert P.box(Xh, (0.0, 1.0)).dtype == jnp.bfloat16


def test_errors_say_what_to_fix():
    x = {"w": jnp.ones(3), "b": jnp.ones(())}
    with pytest.raises(ValueError, match=r"lower\['w'\]` > `upper\['w'\]"):
        P.box(x, ({"w": 2.0, "b": 0.0}, 1.0))
    with pytest.raises(ValueError, match="structure of `x`"):
        P.box(x, ({"w": 0.0}, 1.0))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        P.box(x, ({"w": jnp.zeros(2), "b": 0.0}, None))
    with pytest.raises(ValueError, match="NaN"):
        P.box(x, (jnp.nan, None))
    with pytest.raises(ValueError, match="positive"):
        P.l2_ball(x, -1.0)
    with pytest.raises(ValueError, match="positive"):
        P.simplex(jnp.ones(3), 0.0)
    with pytest.raises(ValueError, match="normal vector `a` is zero"):
        P.hyperplane(jnp.ones(3), (jnp.zeros(3), 1.0))
    with pytest.raises(ValueError, match="square"):
        P.psd(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"A of shape \(m, 3\)"):
        P.affine_set(jnp.ones(3), (jnp.ones((2, 4)), jnp.ones(2)))
    # Traced invalid parameters cannot raise: the result is NaN there, never a wrong number.
    assert np.all(np.isnan(jax.jit(P.l2_ball)(jnp.ones(3), -1.0)))
    y = jax.jit(lambda lo: P.box(jnp.zeros(2), (lo, jnp.array([1.0, 1.0]))))(jnp.array([0.0, 2.0]))
    assert float(y[0]) == 0.0 and np.isnan(y[1])


def docstring_blocks(module):
    """The ```python blocks of a module's docstrings (module and public functions)."""
    import re
    import textwrap
    docs = [module.__doc__] + [getattr(module, name).__doc__ for name in module.__all__]
    return [textwrap.dedent(block) for doc in docs if doc
            for block in re.findall(r"```python\n(.*?)\n\s*```", doc, re.S)]


def test_docstring_examples_run(capsys):
    blocks = docstring_blocks(P)
    assert len(blocks) == len(P.__all__)           # every public function has an example
    for block in blocks:
        exec(block, {})
    out = capsys.readouterr().out
    assert "Array([2., 0.]" in out and "Array(-1." in out   # the l1-ball example's answer
    assert "[[ 0.128 -0.096]" in out                        # the l2-ball Jacobian's


@pytest.mark.float64
def test_same_answers_as_jaxopt():
    """Users migrating from jaxopt get the same numbers (and the same simplex Jacobian).
    (jaxopt's affine-set projection runs a QP solver: slow to compile, and checked above
    against a KKT solve instead.)"""
    jaxopt = pytest.importorskip("jaxopt")     # a benchmark extra, not a test dependency
    from jaxopt2 import prox
    JP, JX = jaxopt.projection, jaxopt.prox
    rng = np.random.default_rng(0)
    x, a = jnp.asarray(rng.normal(size=12) * 2), jnp.asarray(rng.normal(size=12))
    lo = jnp.asarray(rng.normal(size=12)) - 1
    hi = lo + jnp.asarray(rng.uniform(size=12) * 2)
    pairs = {
        "box": (P.box(x, (lo, hi)), JP.projection_box(x, (lo, hi))),
        "simplex": (P.simplex(x, 1.7), JP.projection_simplex(x, 1.7)),
        "l1_ball": (P.l1_ball(x, 1.3), JP.projection_l1_ball(x, 1.3)),
        "l2_ball": (P.l2_ball(x, 1.3), JP.projection_l2_ball(x, 1.3)),
        "linf_ball": (P.linf_ball(x, 0.4), JP.projection_linf_ball(x, 0.4)),
        "hyperplane": (P.hyperplane(x, (a, 0.3)), JP.projection_hyperplane(x, (a, 0.3))),
        "halfspace": (P.halfspace(x, (a, -0.3)), JP.projection_halfspace(x, (a, -0.3))),
        "l1": (prox.l1(x, 0.4, 0.7), JX.prox_lasso(x, 0.4, 0.7)),
        "non_negative_l1": (prox.non_negative_l1(x, 0.4, 0.7),
                            JX.prox_non_negative_lasso(x, 0.4, 0.7)),
        "elastic_net": (prox.elastic_net(x, (0.4, 0.4 * 1.5), 0.7),
                        JX.prox_elastic_net(x, (0.4, 1.5), 0.7)),
        "l2": (prox.l2(x, 0.4, 0.7), JX.prox_group_lasso(x, 0.4, 0.7)),
        "ridge": (prox.ridge(x, 0.4, 0.7), JX.prox_ridge(x, 0.4, 0.7)),
        "simplex jacobian": (jax.jacobian(P.simplex)(x), jax.jacobian(JP.projection_simplex)(x)),
    }
    for name, (ours, theirs) in pairs.items():
        np.testing.assert_allclose(ours, theirs, atol=1e-10, err_msg=name)


@pytest.mark.float64
def test_birkhoff_is_sinkhorn_normalisation():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 5))
    Y = np.asarray(P.birkhoff(jnp.asarray(X), 0.5, rtol=1e-12))
    np.testing.assert_allclose(Y.sum(0), 1, atol=1e-11)
    np.testing.assert_allclose(Y.sum(1), 1, atol=1e-11)
    # doubly stochastic and of the form diag(r) exp(X/ε) diag(c): log Y − X/ε has rank-one sums
    L = np.log(Y) - X / 0.5
    np.testing.assert_allclose(L - L[:, :1] - L[:1, :] + L[0, 0], 0, atol=1e-9)
    with pytest.raises(ValueError, match="square"):
        P.birkhoff(jnp.ones((2, 3)))


@pytest.mark.slow  # three more Sinkhorn compilations
@pytest.mark.float64
def test_birkhoff_limit_and_derivative():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 5))
    X2 = X + 3 * np.eye(5)[rng.permutation(5)]  # a clear best assignment
    rows, cols = linear_sum_assignment(-X2)
    perm = np.zeros((5, 5))
    perm[rows, cols] = 1
    np.testing.assert_allclose(P.birkhoff(jnp.asarray(X2), 0.05), perm, atol=1e-3)
    # implicit derivative against a central difference
    V = rng.normal(size=X.shape)
    f = lambda x: P.birkhoff(x, 0.5, rtol=1e-12)  # noqa: E731
    h = 1e-6
    np.testing.assert_allclose(jax.jvp(f, (jnp.asarray(X),), (jnp.asarray(V),))[1],
                               (f(X + h * V) - f(X - h * V)) / (2 * h), atol=1e-7)
