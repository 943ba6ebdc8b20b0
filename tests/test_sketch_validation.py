"""Input validation of the public sketching and curvature-estimation functions.

Static mistakes (a key that is not a PRNG key, a raw array or a non-square operator, a bad
size) are errors when traced, naming the argument; value-dependent preconditions (a PSD
operator for `nystrom`, a symmetric one for `randomized_eigh`, an SPD one for `logdet_slq`,
non-negative sampling probabilities) raise a ValueError when called eagerly and an
`EquinoxRuntimeError` under `jit`/`vmap`. Valid inputs are checked against dense references.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jaxopt2
from jaxopt2 import sketch as S

# A failed check inside a compiled program: EquinoxRuntimeError under `eqx.filter_jit`, JAX's
# runtime error carrying the same message under plain `jax.jit`.
JIT_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)

N = 8
KEY = jax.random.key(0)


def _psd(n=N, seed=0):
    # Module data is built while x64 is on (see conftest): fix float32, the tests' dtype.
    m = jax.random.normal(jax.random.key(seed), (n, n), jnp.float32)
    return m @ m.T + jnp.eye(n, dtype=jnp.float32)


PSD = _psd()
OP = lx.MatrixLinearOperator(PSD, lx.positive_semidefinite_tag)
SYM = lx.MatrixLinearOperator(PSD, lx.symmetric_tag)
A_TALL = jax.random.normal(jax.random.key(1), (12, 4), jnp.float32)

# Every public function that draws from a key, as key ↦ call.
KEYED = {
    "gaussian_sketch": lambda k: S.gaussian_sketch(k, 3, N),
    "rademacher_sketch": lambda k: S.rademacher_sketch(k, 3, N),
    "srht_sketch": lambda k: S.srht_sketch(k, 3, N),
    "sparse_sign_sketch": lambda k: S.sparse_sign_sketch(k, 3, N),
    "row_sampling_sketch": lambda k: S.row_sampling_sketch(k, 3, N),
    "leverage_scores": lambda k: S.leverage_scores(A_TALL, k),
    "nystrom": lambda k: S.nystrom(OP, 3, k),
    "nystrom_preconditioner": lambda k: S.nystrom_preconditioner(OP, 3, k),
    "randomized_eigh": lambda k: S.randomized_eigh(SYM, 2, k),
    "randomized_svd": lambda k: S.randomized_svd(OP, 2, k),
    "hutchpp": lambda k: S.hutchpp(OP, 6, k),
    "slq": lambda k: S.slq(OP, k, 2, 3),
    "logdet_slq": lambda k: S.logdet_slq(OP, k, 2, 3),
    "sketch_and_project": lambda k: S.sketch_and_project(A_TALL, A_TALL @ jnp.ones(4), k,
                                                         sketch_size=2, max_steps=2),
    "diagonal": lambda k: jaxopt2.curvature.diagonal(OP, k, 2),
    "trace": lambda k: jaxopt2.curvature.trace(OP, k, 2),
    "extreme_eigenvalues": lambda k: jaxopt2.curvature.extreme_eigenvalues(OP, k, 3),
}


@pytest.mark.parametrize("name", sorted(KEYED))
@pytest.mark.parametrize("bad", [0, 1.5, "int32-array", "batch"])
def test_bad_key_is_rejected(name, bad):
    bad = {"int32-array": jnp.zeros(2, jnp.int32),
           "batch": jax.random.split(KEY, 3)}.get(bad, bad)
    with pytest.raises(TypeError, match=rf"`{name}`.*`key` must be (a JAX PRNG key|one PRNG)"):
        jax.eval_shape(lambda: KEYED[name](bad)) if not isinstance(bad, (int, float)) \
            else KEYED[name](bad)


def test_int_key_message_says_how_to_wrap_it():
    with pytest.raises(TypeError, match=r"jax\.random\.key\(7\)"):
        S.gaussian_sketch(7, 3, N)


@pytest.mark.parametrize("name", ["gaussian_sketch", "srht_sketch", "nystrom", "trace"])
def test_legacy_and_typed_keys_agree(name):
    """A legacy uint32 key and the typed key wrapping it draw the same numbers."""
    legacy = jax.random.PRNGKey(3)
    typed = jax.random.wrap_key_data(legacy)
    as_array = lambda out: (out.as_matrix() if isinstance(out, lx.AbstractLinearOperator)
                            else out.eigenvalues if isinstance(out, S.NystromApproximation)
                            else out)
    np.testing.assert_array_equal(as_array(KEYED[name](legacy)), as_array(KEYED[name](typed)))


def test_gaussian_sketch_matrix_unchanged():
    """The checks do not change the draws: S is still normal(key, (k, n)) / √k."""
    key = jax.random.PRNGKey(5)
    expected = jax.random.normal(key, (3, N)) / jnp.sqrt(3.0)
    np.testing.assert_allclose(S.gaussian_sketch(key, 3, N).as_matrix(), expected, rtol=1e-6)


# ---------------------------------------------------------------- operators ----------------

OPERATOR_FNS = {
    "nystrom": lambda op: S.nystrom(op, 2, KEY),
    "nystrom_preconditioner": lambda op: S.nystrom_preconditioner(op, 2, KEY),
    "randomized_eigh": lambda op: S.randomized_eigh(op, 2, KEY),
    "hutchpp": lambda op: S.hutchpp(op, 6, KEY),
    "slq": lambda op: S.slq(op, KEY, 2, 3),
    "diagonal": lambda op: jaxopt2.curvature.diagonal(op, KEY, 2),
    "trace": lambda op: jaxopt2.curvature.trace(op, KEY, 2),
    "extreme_eigenvalues": lambda op: jaxopt2.curvature.extreme_eigenvalues(op, KEY, 3),
}


@pytest.mark.parametrize("name", sorted(OPERATOR_FNS))
def test_raw_array_is_rejected(name):
    with pytest.raises(TypeError, match=r"needs a lineax linear operator.*MatrixLinearOperator"):
        OPERATOR_FNS[name](PSD)


@pytest.mark.parametrize("name", sorted(OPERATOR_FNS))
def test_non_square_operator_is_rejected(name):
    with pytest.raises(ValueError, match=rf"`{name}` needs a square operator"):
        OPERATOR_FNS[name](lx.MatrixLinearOperator(jnp.ones((5, N))))


def test_randomized_svd_rejects_raw_array():
    with pytest.raises(TypeError, match=r"`randomized_svd` needs a lineax linear operator"):
        S.randomized_svd(jnp.ones((5, N)), 2, KEY)


@pytest.mark.parametrize("rank", [0, N + 1, 2.5, True, -1])
def test_nystrom_rank_is_checked(rank):
    with pytest.raises(ValueError, match=rf"`nystrom`: `rank` must be a Python int in \[1, {N}\]"):
        S.nystrom(OP, rank, KEY)


def test_nystrom_shift_and_mu_are_checked():
    with pytest.raises(ValueError, match=r"`shift` must be a finite number"):
        S.nystrom(OP, 2, KEY, shift=-1.0)
    with pytest.raises(ValueError, match=r"`mu` must be a finite number"):
        S.nystrom_preconditioner(OP, 2, KEY, mu=-1.0)
    with pytest.raises(ValueError, match=r"`mu` must be a finite number"):
        S.NystromPreconditioner(rank=2, mu=float("nan"))


# ---------------------------------------------------------------- nystrom: PSD ---------------

NOT_PSD = {"negative definite": -PSD, "indefinite": PSD - 0.5 * jnp.linalg.eigvalsh(PSD)[-1]
           * jnp.eye(N, dtype=jnp.float32)}


@pytest.mark.parametrize("case", sorted(NOT_PSD))
def test_nystrom_of_non_psd_operator_raises(case):
    op = lx.MatrixLinearOperator(NOT_PSD[case])
    with pytest.raises(ValueError, match=r"nystrom needs a positive semi-definite operator.*"
                                         r"randomized_eigh"):
        S.nystrom(op, N, KEY)


def test_nystrom_of_non_psd_operator_raises_under_jit_and_vmap():
    with pytest.raises(JIT_ERRORS, match=r"positive semi-definite"):
        jax.jit(lambda a: S.nystrom(lx.MatrixLinearOperator(a), 4, KEY).eigenvalues)(-PSD)
    batch = jnp.stack([PSD, -PSD])
    with pytest.raises(JIT_ERRORS, match=r"positive semi-definite"):
        jax.vmap(lambda a: S.nystrom(lx.MatrixLinearOperator(a), 4, KEY).eigenvalues)(batch)


def test_nystrom_full_rank_reproduces_psd_matrix():
    approx = jax.jit(lambda a: S.nystrom(lx.MatrixLinearOperator(a), N, KEY))(PSD)
    dense = approx.U @ jnp.diag(approx.eigenvalues) @ approx.U.T
    np.testing.assert_allclose(dense, PSD, atol=1e-3 * float(jnp.abs(PSD).max()))
    np.testing.assert_allclose(approx.eigenvalues, jnp.linalg.eigvalsh(PSD)[::-1], rtol=1e-3)


def test_nystrom_of_low_rank_psd_is_exact_and_finite():
    """rank(A) = 3 < r = 6: ΩᵀAΩ is singular (its round-off eigenvalues may be negative), the
    operator is PSD, so no error and Â = A (Nyström is exact when rank A ≤ r)."""
    x = jax.random.normal(jax.random.key(2), (N, 3)) * jnp.array([30.0, 1.0, 0.1])
    a = x @ x.T
    approx = S.nystrom(lx.MatrixLinearOperator(a), 6, KEY)
    dense = approx.U @ jnp.diag(approx.eigenvalues) @ approx.U.T
    assert bool(jnp.all(approx.eigenvalues >= 0))
    np.testing.assert_allclose(dense, a, atol=1e-3 * float(jnp.abs(a).max()))


def test_nystrom_of_nan_operator_propagates_nan_without_error():
    approx = S.nystrom(lx.MatrixLinearOperator(PSD.at[0, 0].set(jnp.nan)), 3, KEY)
    assert not bool(jnp.all(jnp.isfinite(approx.eigenvalues)))


def test_nystrom_gradient_through_full_rank_trace():
    """tr Â = tr(θ·A) at rank n, so d tr Â / dθ = tr A (the PSD check does not block grad)."""
    def tr(theta):
        return jnp.sum(S.nystrom(lx.MatrixLinearOperator(theta * PSD), N, KEY).eigenvalues)

    np.testing.assert_allclose(jax.grad(tr)(2.0), jnp.trace(PSD), rtol=1e-3)


def test_nystrom_preconditioner_of_indefinite_operator_falls_back_to_identity():
    v = jnp.arange(1.0, N + 1)
    apply = S.nystrom_preconditioner(lx.MatrixLinearOperator(-PSD), 4, KEY)
    np.testing.assert_allclose(apply(v), v)
    applied = jax.vmap(lambda a: S.nystrom_preconditioner(lx.MatrixLinearOperator(a), 4, KEY)(v))(
        jnp.stack([PSD, -PSD]))
    np.testing.assert_allclose(applied[1], v)  # the PSD member is unaffected, the other is I
    assert not np.allclose(applied[0], v)


# ---------------------------------------------------------------- other preconditions --------

def test_randomized_eigh_rejects_non_symmetric_operator():
    op = lx.MatrixLinearOperator(jnp.triu(PSD))
    with pytest.raises(ValueError, match=r"randomized_eigh needs a symmetric operator.*"
                                         r"randomized_svd"):
        S.randomized_eigh(op, 3, KEY)
    with pytest.raises(JIT_ERRORS, match=r"symmetric operator"):
        jax.jit(lambda a: S.randomized_eigh(lx.MatrixLinearOperator(a), 3, KEY)[0])(
            jnp.triu(PSD))


def test_randomized_eigh_symmetric_matches_eigvalsh():
    sym = PSD - 3.0 * jnp.eye(N)  # symmetric, indefinite: allowed here
    evals, _ = S.randomized_eigh(lx.MatrixLinearOperator(sym, lx.symmetric_tag), N, KEY)
    ref = jnp.linalg.eigvalsh(sym)
    ref = ref[jnp.argsort(-jnp.abs(ref))]
    np.testing.assert_allclose(evals, ref, rtol=1e-3, atol=1e-3)


def test_logdet_slq_rejects_indefinite_and_matches_slogdet():
    indefinite = lx.MatrixLinearOperator(PSD - 0.5 * jnp.linalg.eigvalsh(PSD)[-1] * jnp.eye(N),
                                         lx.symmetric_tag)
    with pytest.raises(ValueError, match=r"logdet_slq needs a symmetric positive definite"):
        S.logdet_slq(indefinite, KEY, 4, N)
    with pytest.raises(JIT_ERRORS, match=r"positive definite"):
        jax.jit(lambda k: S.logdet_slq(indefinite, k, 4, N))(KEY)
    # A diagonal SPD operator: every probe's Gauss quadrature with n steps is exact.
    d = jnp.arange(1.0, N + 1)
    est = S.logdet_slq(lx.MatrixLinearOperator(jnp.diag(d)), KEY, 4, N)
    np.testing.assert_allclose(est, jnp.sum(jnp.log(d)), rtol=1e-4)


@pytest.mark.parametrize("probs", [[1.0, -1.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
def test_row_sampling_bad_probabilities_raise(probs):
    probs = jnp.array(probs)
    with pytest.raises(ValueError, match=r"`probabilities` must be non-negative with a positive"):
        S.row_sampling_sketch(KEY, 3, 4, probs)
    with pytest.raises(JIT_ERRORS, match=r"`probabilities` must be non-negative"):
        jax.jit(lambda p: S.row_sampling_sketch(KEY, 3, 4, p).mv(jnp.ones(4)))(probs)


def test_row_sampling_probability_shape_and_valid_weights():
    with pytest.raises(ValueError, match=r"`probabilities` must have shape \(4,\)"):
        S.row_sampling_sketch(KEY, 3, 4, jnp.ones(6))
    p = jnp.array([1.0, 1.0, 2.0, 0.0])
    rows = S.row_sampling_sketch(KEY, 5, 4, p).as_matrix()
    # each row is e_i / √(k pᵢ) with p normalised, and the zero-probability row is never drawn
    idx = jnp.argmax(jnp.abs(rows), axis=1)
    assert not bool(jnp.any(idx == 3))
    np.testing.assert_allclose(rows[jnp.arange(5), idx], 1 / jnp.sqrt(5 * p[idx] / 4), rtol=1e-6)


def test_sketch_and_project_bad_row_probs_raise():
    b = A_TALL @ jnp.ones(4)
    for probs in (jnp.ones(12).at[0].set(-1.0), jnp.zeros(12).at[:2].set(1.0)):
        with pytest.raises(ValueError, match=r"`row_probs` must be non-negative with at least "
                                             r"sketch_size=3 positive"):
            S.sketch_and_project(A_TALL, b, KEY, sketch_size=3, row_probs=probs)
    with pytest.raises(JIT_ERRORS, match=r"`row_probs` must be non-negative"):
        jax.jit(lambda p: S.sketch_and_project(A_TALL, b, KEY, sketch_size=3, row_probs=p)[0])(
            jnp.ones(12).at[0].set(-1.0))


def test_sketch_and_project_valid_row_probs_still_solve():
    b = A_TALL @ jnp.arange(4.0)
    x, info = S.sketch_and_project(A_TALL, b, KEY, sketch_size=3,
                                   row_probs=jnp.sum(A_TALL**2, axis=1))
    assert bool(info.converged)
    np.testing.assert_allclose(x, jnp.arange(4.0), atol=1e-2)


@pytest.mark.parametrize("make", [S.gaussian_sketch, S.srht_sketch, S.sparse_sign_sketch,
                                  S.rademacher_sketch, S.row_sampling_sketch])
def test_sketch_mv_of_wrong_shape_names_both_shapes(make):
    op = make(KEY, 3, N)
    with pytest.raises(ValueError, match=r"shaped like the sketch's input.*\(8,\).*\(12,\)"):
        op.mv(jnp.ones(12))
    tree = make(KEY, 3, {"a": jnp.zeros(2), "b": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"shaped like the sketch's input"):
        tree.mv({"a": jnp.ones(2)})
    np.testing.assert_allclose(tree.mv({"a": jnp.ones(2), "b": jnp.ones(3)}),
                               tree.as_matrix() @ jnp.ones(5), rtol=1e-5)


def test_sketch_sizes_are_checked():
    with pytest.raises(ValueError, match=r"`nonzeros` must be a positive Python int"):
        S.sparse_sign_sketch(KEY, 3, N, nonzeros=0)
    with pytest.raises(ValueError, match=r"sketched dimension `n` must be an int ≥ 0"):
        S.gaussian_sketch(KEY, 3, -4)
    with pytest.raises(ValueError, match=r"positive Python int k"):
        S.gaussian_sketch(KEY, True, N)


def test_leverage_scores_checks_shape_and_sizes():
    with pytest.raises(ValueError, match=r"needs a tall matrix.*pass A\.T"):
        S.leverage_scores(A_TALL.T, KEY)
    with pytest.raises(ValueError, match=r"`sketch_size` must be a positive int or None"):
        S.leverage_scores(A_TALL, KEY, sketch_size=0)
