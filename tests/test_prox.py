"""jaxopt2.prox: each operator against its closed form and against the definition
prox_{s·h}(x) = argmin_y h(y) + ‖y − x‖²/(2s) (certified by strong convexity: F(z) ≥ F(y) +
‖z − y‖²/(2s) for every z), Moreau's decomposition against independently written conjugates,
derivatives against closed forms and finite differences, a lasso hypergradient through
implicit differentiation, and the contract (jit, vmap, pytrees, dtypes, errors)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt2 import implicit, projection, prox


def rand(seed, shape, dtype=np.float64):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def soft(x, t):
    return np.sign(x) * np.maximum(np.abs(x) - t, 0)


# --------------------------------------------------------------------------- closed forms (f32)

def test_closed_forms_float32():
    x = rand(0, (6,), np.float32) * 2
    W = rand(1, (4, 3), np.float32)
    lam, s = 0.4, 0.7
    cases = [
        (prox.l1(x, lam, s), soft(x, s * lam)),
        (prox.non_negative_l1(x, lam, s), np.maximum(x - s * lam, 0)),
        (prox.ridge(x, lam, s), x / (1 + s * lam)),
        (prox.elastic_net(x, (lam, 2.0), s), soft(x, s * lam) / (1 + 2 * s)),
        (prox.l2(x, lam, s), x * max(1 - s * lam / np.linalg.norm(x), 0)),
        (functools.partial(prox.group_lasso, axis=-1)(W, 1.0, s),
         W * np.maximum(1 - s / np.linalg.norm(W, axis=1, keepdims=True), 0)),
        (prox.group_lasso(W, 1.0, s), W * max(1 - s / np.linalg.norm(W), 0)),
    ]
    for got, ref in cases:
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    U, sig, Vt = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(prox.nuclear(W, 0.5, s),
                               (U * np.maximum(sig - 0.5 * s, 0)) @ Vt, atol=1e-5)
    # Some group is zeroed and some is not, so both branches are exercised.
    rows = np.linalg.norm(W, axis=1)
    assert rows.min() < s < rows.max()


def test_pytree_strengths_and_unpenalised_leaves():
    x = {"w": jnp.array([1.0, -2.0, 0.1]), "b": jnp.array(3.0)}
    y = prox.l1(x, {"w": jnp.array([0.5, 0.5, 1.0]), "b": None})
    np.testing.assert_allclose(y["w"], [0.5, -1.5, 0.0])
    assert float(y["b"]) == 3.0
    groups = prox.group_lasso({"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}, 1.0)
    np.testing.assert_allclose(groups["a"], [2.4, 3.2], rtol=1e-6)   # each leaf a group
    np.testing.assert_array_equal(groups["b"], [0.0, 0.0])
    # One strength per row group, given without the reduced axis.
    W = jnp.array([[3.0, 4.0], [3.0, 4.0]])
    out = prox.group_lasso(W, jnp.array([1.0, 10.0]), axis=1)
    np.testing.assert_allclose(out, [[2.4, 3.2], [0.0, 0.0]], rtol=1e-6)


# -------------------------------------------------------------------------- the definition

def nuclear_norm(Y):
    return np.linalg.svd(Y, compute_uv=False).sum()


@pytest.mark.float64
def test_definition_by_strong_convexity():
    """y = prox_{s·h}(x) iff F(z) ≥ F(y) + ‖z − y‖²/(2s) for all z, F = h + ‖· − x‖²/(2s)."""
    rng = np.random.default_rng(3)
    lam, s = 0.6, 0.8
    cases = {   # name: (prox applied to x, h, shape)
        "l1": (lambda x: prox.l1(x, lam, s), lambda y: lam * np.abs(y).sum(), (5,)),
        "non_negative_l1": (lambda x: prox.non_negative_l1(x, lam, s),
                            lambda y: lam * y.sum() if y.min() >= 0 else np.inf, (5,)),
        "elastic_net": (lambda x: prox.elastic_net(x, (lam, 0.3), s),
                        lambda y: lam * np.abs(y).sum() + 0.15 * (y**2).sum(), (5,)),
        "l2": (lambda x: prox.l2(x, lam, s), lambda y: lam * np.linalg.norm(y), (5,)),
        "group_lasso": (lambda x: prox.group_lasso(x, lam, s, axis=0),
                        lambda y: lam * np.linalg.norm(y, axis=0).sum(), (2, 3)),
        "nuclear": (lambda x: prox.nuclear(x, lam, s), lambda y: lam * nuclear_norm(y), (3, 4)),
        "conjugate(ridge)": (lambda x: prox.conjugate(prox.ridge)(x, lam, s),
                             lambda y: (y**2).sum() / (2 * lam), (5,)),   # h* = ‖y‖²/(2λ)
    }
    for name, (p, h, shape) in cases.items():
        x = rng.normal(size=shape) * 1.5
        y = np.asarray(p(jnp.asarray(x)))
        F = lambda z, x=x, h=h: h(z) + ((z - x) ** 2).sum() / (2 * s)  # noqa: E731
        Fy = F(y)
        for scale in (1e-3, 1e-1, 1.0):
            for _ in range(15):
                z = y + scale * rng.normal(size=shape)
                if name == "non_negative_l1":
                    z = np.maximum(z, 0)
                assert F(z) >= Fy + ((z - y) ** 2).sum() / (2 * s) - 1e-10, name


@pytest.mark.float64
def test_l1_subgradient_condition():
    x, lam, s = rand(4, (8,)) * 2, 0.5, 1.5
    y = np.asarray(prox.l1(jnp.asarray(x), lam, s))
    g = (x - y) / s                       # must be in λ ∂‖y‖₁
    np.testing.assert_allclose(g[y != 0], lam * np.sign(y[y != 0]), atol=1e-12)
    assert np.all(np.abs(g[y == 0]) <= lam + 1e-12) and np.any(y == 0)


def test_indicator_is_the_projection_for_every_scale():
    x = jnp.array([0.3, 2.0, -1.0])
    simplex = prox.indicator(projection.simplex)
    for s in (0.1, 1.0, 10.0):
        np.testing.assert_array_equal(simplex(x, 1.0, s), projection.simplex(x, 1.0))
    np.testing.assert_array_equal(simplex(x), projection.simplex(x))      # the default value
    np.testing.assert_array_equal(prox.indicator(projection.box)(x, (0.0, 1.0), 3.0),
                                  np.array([0.3, 1.0, 0.0], np.float32))


@pytest.mark.float64
def test_moreau_decomposition_with_independent_conjugates():
    """x = prox_{s·h}(x) + s·prox_{h*/s}(x/s), with prox_{h*} written from h*'s closed form:
    the conjugate of λ‖·‖₁ is the indicator of the ℓ∞ ball of radius λ, of λ‖·‖₂ the
    indicator of the ℓ2 ball, of λ‖·‖²/2 the function ‖·‖²/(2λ)."""
    x, lam, s = jnp.asarray(rand(5, (6,)) * 2), 0.7, 1.3
    np.testing.assert_allclose(prox.l1(x, lam, s) + s * projection.linf_ball(x / s, lam), x,
                               atol=1e-12)
    np.testing.assert_allclose(prox.l2(x, lam, s) + s * projection.l2_ball(x / s, lam), x,
                               atol=1e-12)
    # And `conjugate` reproduces those conjugates' proxes.
    np.testing.assert_allclose(prox.conjugate(prox.l1)(x, lam, s), np.clip(x, -lam, lam),
                               atol=1e-12)
    np.testing.assert_allclose(prox.conjugate(prox.l2)(x, lam, s),
                               projection.l2_ball(x, lam), atol=1e-12)
    np.testing.assert_allclose(prox.conjugate(prox.ridge)(x, lam, s), x / (1 + s / lam),
                               atol=1e-12)
    # The conjugate of the indicator of a box is the support function; its prox is the soft
    # threshold with per-side thresholds: for the box [−λ, λ], soft(x, sλ).
    box = prox.indicator(projection.box)
    np.testing.assert_allclose(prox.conjugate(box)(x, (-lam, lam), s), soft(np.asarray(x), s * lam),
                               atol=1e-12)


# ---------------------------------------------------------------------------------- derivatives

def test_l1_derivatives_closed_form():
    x, lam, s = jnp.array([2.0, -0.3, -1.5, 0.1]), 0.5, 1.0
    mask = np.array([1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(jax.jacobian(prox.l1)(x, lam, s), np.diag(mask))
    np.testing.assert_allclose(jax.jacobian(prox.l1, argnums=1)(x, lam, s),
                               -s * np.sign(x) * mask)
    np.testing.assert_allclose(jax.jacobian(prox.l1, argnums=2)(x, lam, s),
                               -lam * np.sign(x) * mask)


@pytest.mark.float64
def test_jvps_against_finite_differences():
    rng = np.random.default_rng(6)
    gl = functools.partial(prox.group_lasso, axis=-1)
    cases = {   # name: (function of (x, hyperparams), x shape, hyperparams)
        "elastic_net": (lambda x, h: prox.elastic_net(x, (h[0], h[1]), 0.7), (6,), [0.4, 0.9]),
        "l2": (lambda x, h: prox.l2(x, h[0], 0.7), (6,), [0.8]),
        "group_lasso": (lambda x, h: gl(x.reshape(3, 2), h, 0.9).ravel(), (6,),
                        [0.5, 1.0, 0.4]),
        "nuclear": (lambda x, h: prox.nuclear(x.reshape(2, 3), h[0], 0.7).ravel(), (6,), [0.6]),
        "conjugate(l2)": (lambda x, h: prox.conjugate(prox.l2)(x, h[0], 0.5), (6,), [0.7]),
    }
    for name, (f, shape, h) in cases.items():
        x, h = jnp.asarray(rng.normal(size=shape) * 1.5), jnp.asarray(h)
        v, w = jnp.asarray(rng.normal(size=shape)), jnp.asarray(rng.normal(size=h.shape))
        eps = 1e-6
        both = jax.jit(lambda x, h, v, w, f=f, eps=eps: (f(x + eps * v, h + eps * w),
                                                f(x - eps * v, h - eps * w),
                                                jax.jvp(f, (x, h), (v, w))[1]))
        plus, minus, jvp = both(x, h, v, w)
        np.testing.assert_allclose(jvp, (plus - minus) / (2 * eps), atol=1e-6, err_msg=name)


@pytest.mark.float64
def test_lasso_hypergradient_through_implicit_differentiation():
    """w*(λ) = argmin ½‖Xw − y‖² + λ‖w‖₁; on the support S, X_Sᵀ(X_S w_S − y) + λ sign(w_S)
    = 0, so dw_S/dλ = −(X_SᵀX_S)⁻¹ sign(w_S) and dw/dλ = 0 off it."""
    X, y = rand(7, (30, 6)), rand(8, (30,))
    f = lambda w, data: 0.5 * jnp.sum((data[0] @ w - data[1]) ** 2)  # noqa: E731
    eta = 1.0 / np.linalg.norm(X, 2) ** 2

    @implicit.custom_fixed_point(implicit.proximal_gradient_map(f, prox.l1, eta))
    def lasso(w0, data, lam):          # ISTA: any solver, differentiated at its fixed point
        step = lambda _, w: prox.l1(w - eta * jax.grad(f)(w, data), lam, eta)  # noqa: E731
        return jax.lax.fori_loop(0, 3000, step, w0)

    lam = 0.3 * float(np.abs(X.T @ y).max())
    data = (jnp.asarray(X), jnp.asarray(y))
    # One compilation for the solution and its derivative.
    both = jax.jit(lambda lam: (lasso(jnp.zeros(6), data, lam),
                                jax.jacobian(lasso, argnums=2)(jnp.zeros(6), data, lam)))
    w, dw = both(lam)
    w = np.asarray(w)
    S = np.abs(w) > 1e-8
    assert 0 < S.sum() < 6
    ref = np.zeros(6)
    ref[S] = -np.linalg.solve(X[:, S].T @ X[:, S], np.sign(w[S]))
    np.testing.assert_allclose(dw, ref, atol=1e-8)


# ------------------------------------------------------------------------------------ contract

def test_jit_vmap_and_dtypes():
    X = jnp.asarray(rand(9, (4, 5), np.float32))
    lams = jnp.array([0.1, 0.5, 1.0, 2.0])
    out = jax.jit(jax.vmap(prox.l1))(X, lams)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, soft(np.asarray(X), np.asarray(lams)[:, None]), atol=1e-7)
    out = jax.vmap(lambda x, lam: prox.nuclear(x.reshape(2, 2)[None], lam).ravel())(
        X[:, :4], lams)
    for i in range(4):
        np.testing.assert_allclose(out[i], prox.nuclear(X[i, :4].reshape(2, 2), lams[i]).ravel(),
                                   atol=1e-5)
    assert prox.l2(X.astype(jnp.bfloat16), 0.5).dtype == jnp.bfloat16
    assert prox.group_lasso(X.astype(jnp.bfloat16), 0.5, axis=-1).dtype == jnp.bfloat16


def test_errors_say_what_to_fix():
    x = {"w": jnp.ones(3), "b": jnp.ones(())}
    with pytest.raises(ValueError, match="`l1`: `strength` must be non-negative"):
        prox.l1(x, -0.1)
    with pytest.raises(ValueError, match="`scale` must be non-negative"):
        prox.ridge(x, 0.1, -1.0)
    with pytest.raises(ValueError, match="structure of `x`"):
        prox.l1(x, {"w": 0.1})
    with pytest.raises(ValueError, match="pair `\\(l1, l2\\)`"):
        prox.elastic_net(x, 0.1)
    with pytest.raises(ValueError, match="one entry per group"):
        prox.group_lasso(jnp.ones((3, 2)), jnp.ones(4), axis=1)
    with pytest.raises(ValueError, match="matrix"):
        prox.nuclear(jnp.ones(3), 0.1)
    with pytest.raises(ValueError, match="positive"):
        prox.conjugate(prox.l1)(jnp.ones(3), 0.1, 0.0)
    with pytest.raises(TypeError, match="function"):
        prox.indicator("box")
    # Traced invalid strengths cannot raise: NaN where they are invalid, never a wrong number.
    out = jax.jit(prox.l1)(jnp.ones(2), jnp.array([0.5, -0.5]))
    assert float(out[0]) == 0.5 and np.isnan(out[1])
    assert np.all(np.isnan(jax.jit(prox.l2)(jnp.ones(2), -1.0)))


def test_docstring_examples_run(capsys):
    from tests.test_projection import docstring_blocks
    blocks = docstring_blocks(prox)
    assert len(blocks) == len(prox.__all__)
    for block in blocks:
        exec(block, {})
    out = capsys.readouterr().out
    assert "[ 0.5 -0.3 -0.5]" in out and "[1.5 2. ]" in out


def test_block_thresholds_have_finite_derivatives_at_zero():
    # ‖x‖ is not differentiable at 0; the prox is (it is 0 near 0), and so must its derivative
    # be, or a solver started at zeros would get NaN hypergradients.
    for f in (lambda x: prox.l2(x, 1.0), lambda x: prox.group_lasso(x, 1.0, axis=-1),
              lambda x: prox.l2(x, 0.0)):
        J = jax.jacobian(f)(jnp.zeros((2, 2)))
        assert np.all(np.isfinite(J))
    np.testing.assert_array_equal(jax.jacobian(lambda x: prox.l2(x, 0.0))(jnp.zeros(2)),
                                  np.eye(2))


@pytest.mark.float64
def test_float64_is_kept_everywhere():
    x = jnp.asarray(rand(10, (3, 3)))
    outs = [prox.l1(x, 0.1), prox.non_negative_l1(x, 0.1), prox.ridge(x, 0.1),
            prox.elastic_net(x, (0.1, 0.2)), prox.l2(x, 0.1), prox.group_lasso(x, 0.1, axis=0),
            prox.nuclear(x, 0.1), prox.conjugate(prox.l1)(x, 0.1, 0.5),
            prox.indicator(projection.psd)(x), projection.box(x, (0.0, 1.0)),
            projection.simplex(x), projection.l1_ball(x), projection.l2_ball(x),
            projection.linf_ball(x), projection.hyperplane(x, (x, 1.0)),
            projection.halfspace(x, (x, 1.0)), projection.affine_set(x[0], (x, x[1]))]
    assert all(o.dtype == jnp.float64 for o in outs)
