"""Randomized Nyström approximation of a PSD operator, and the Nyström preconditioner.

For a positive-semidefinite operator A on pytrees (n parameters in all) and a test matrix
Ω ∈ ℝⁿˣʳ, the Nyström approximation is

    Â = (AΩ) (ΩᵀAΩ)⁺ (AΩ)ᵀ,

a rank-r PSD matrix with Â ⪯ A, built from r products with A (vmapped, so on a memory-bound
problem they cost about one pass over the data). It is stored as an eigendecomposition
Â = U Λ Uᵀ, U ∈ ℝⁿˣʳ orthonormal, so Â, (Â + μI)⁻¹ and the preconditioner below are all cheap
(O(nr) per product). A itself is never materialised: only the n×r sketch Y = AΩ is.

References: J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Fixed-rank approximation of a
positive-semidefinite matrix from streaming data", NeurIPS 2017 (Alg. 3); Z. Frangella,
J. A. Tropp, M. Udell, "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl. 44
(2023).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx

from .._estimators import _check_key, _check_operator, _fail_if
from .._prng import as_key, check_seed, module_key
from .._tree import ravel
from .._validate import check_number
from ..distributed import like, replicated_matmul, rows_like

_SYM_PSD = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


class NystromApproximation(eqx.Module):
    """Â = U diag(Λ) Uᵀ, a rank-`rank` PSD approximation of a PSD operator (see `nystrom`).

    `U` (n×r, orthonormal columns) and `eigenvalues` Λ (length r, descending, ≥ 0) act on the
    flattened parameter vector; `mv`, `solve` and `as_lineax` take and return pytrees shaped
    like the operator's input.
    """

    U: jax.Array
    eigenvalues: jax.Array
    unravel: Callable = eqx.field(static=True)

    def _flat(self, v):
        flat, _ = ravel(v)
        return flat.astype(self.U.dtype)

    def mv(self, v):
        """Â v = U Λ Uᵀ v."""
        x = self._flat(v)
        return self.unravel(self.U @ (self.eigenvalues * replicated_matmul(self.U.T, x)))

    def solve(self, v, mu):
        """(Â + μI)⁻¹ v for μ > 0, in closed form:

            (UΛUᵀ + μI)⁻¹ = U (Λ + μI)⁻¹ Uᵀ + (I − UUᵀ)/μ.
        """
        x = self._flat(v)
        c = replicated_matmul(self.U.T, x)
        y = self.U @ (c / (self.eigenvalues + mu)) + (x - self.U @ c) / mu
        return self.unravel(y)

    def as_lineax(self) -> lx.FunctionLinearOperator:
        """Â as a lineax operator on the same pytrees (tagged symmetric and PSD)."""
        structure = jax.eval_shape(self.unravel, jax.ShapeDtypeStruct(self.U.shape[:1],
                                                                      self.U.dtype))
        return lx.FunctionLinearOperator(self.mv, structure, tags=_SYM_PSD)


def nystrom(op: lx.AbstractLinearOperator, rank: int, key, *, shift=None) -> NystromApproximation:
    """Randomized Nyström approximation of a PSD operator `op` from `rank` products.

    The numerically stable (shifted) algorithm of Tropp, Yurtsever, Udell & Cevher (2017),
    Alg. 3:

    1. Ω: an n×r standard Gaussian matrix, orthonormalised by QR (as Frangella et al. do; it
       changes the span of nothing and conditions ΩᵀAΩ better).
    2. Y = AΩ, by `jax.vmap` of `op.mv` over the columns of Ω (unflattened to pytrees).
    3. ν = `shift`, default eps·‖Y‖_F: Y_ν = Y + νΩ is the sketch of A + νI, which is
       positive definite, so the Cholesky factor below exists in floating point.
    4. B = ΩᵀY_ν (symmetrised), C = chol(B), F = Y_ν C⁻ᵀ (so FFᵀ = Y_ν B⁻¹ Y_νᵀ).
    5. F = U Σ Vᵀ (thin SVD); Λ = max(Σ² − ν, 0) removes the shift again.

    For r products the expected error is near the best rank-k one: with r = k + p,
    E‖A − Â‖_* ≤ (1 + k/(p − 1)) ‖A − [A]_k‖_* (Tropp et al., 2017, Thm. 4.1).
    The parameters are flattened (they are small next to the data: this is for
    n·r values to fit in memory), in the widest dtype of the input leaves.

    **Checks.** `op` must be a square lineax operator, `rank` an int in [1, n] and `key` a PRNG
    key (`jax.random.key(0)`): anything else is a TypeError or ValueError when traced. `op` must
    also be positive semi-definite. Since ΩᵀAΩ has its eigenvalues inside [λ_min(A), λ_max(A)],
    an eigenvalue of B below −√eps·‖ΩᵀAΩ‖₂ proves A indefinite (or negative definite), and
    `nystrom` then raises a ValueError (under `jax.jit` or `jax.vmap` an
    `equinox.EquinoxRuntimeError`, from `equinox.error_if`) instead of returning the NaN the
    Cholesky factorisation would give. An operator with NaN entries gives NaN. A negative
    eigenvalue at round-off level (a PSD operator of low rank) raises the shift just enough for
    the factorisation to exist. For a symmetric indefinite operator use `randomized_eigh`;
    inside solvers, where one indefinite Hessian must not stop a batch, `nystrom_preconditioner`
    / `NystromPreconditioner` fall back to no preconditioning.

    ```python
    import jax, jax.numpy as jnp, lineax as lx
    from jaxopt2.sketch import nystrom
    X = jax.random.normal(jax.random.key(0), (6, 6))
    A = lx.MatrixLinearOperator(X @ X.T, lx.positive_semidefinite_tag)
    approx = nystrom(A, 6, jax.random.key(1))        # rank n: reproduces A
    dense = approx.U @ jnp.diag(approx.eigenvalues) @ approx.U.T
    assert jnp.allclose(dense, X @ X.T, rtol=1e-3, atol=1e-3 * jnp.linalg.norm(X) ** 2)
    ```
    """
    approx, indefinite = _nystrom(op, rank, key, shift, "nystrom")
    # on both arrays, so the check survives a caller that uses only one of them under jit
    u, lam = _fail_if(
        (approx.U, approx.eigenvalues), indefinite,
        "nystrom needs a positive semi-definite operator, but the sketch ΩᵀAΩ has a clearly "
        "negative eigenvalue: the operator is indefinite or negative definite. For a "
        "symmetric indefinite operator use jaxopt2.sketch.randomized_eigh; for a negative "
        "definite one pass its negation (e.g. the Hessian of -f); to precondition a solve "
        "use nystrom_preconditioner, which falls back to no preconditioning.")
    return NystromApproximation(u, lam, approx.unravel)


# n ≥ _TALL · rank: orthonormalise the n × rank sketches through rank × rank Gram matrices
# (products that keep a sharding of the n rows) instead of a QR or SVD of the tall matrix,
# which XLA does not partition: it would gather the whole n × rank sketch on every device
# where the parameters are sharded.
_TALL = 4


def _gram_qr(a):
    """a = Q R with Q's columns orthonormal up to the rounding of a's conditioning, from the
    eigendecomposition of the rank × rank Gram matrix aᵀa = V S² Vᵀ: Q = a V S⁻¹, R = S Vᵀ.
    Directions below √eps of the largest are rounding: their S is floored there."""
    e, v = jnp.linalg.eigh(replicated_matmul(a.T, a))
    e_max = jnp.maximum(jnp.max(e), jnp.finfo(a.dtype).tiny)
    s = jnp.sqrt(jnp.maximum(e, jnp.finfo(a.dtype).eps * e_max))
    return a @ (v / s), s[:, None] * v.T


def _tall_qr(a):
    """Cholesky-QR2 in eigh form: a second pass makes the columns orthonormal to rounding
    (Fukaya et al., "CholeskyQR2", 2014). Returns Q and R with a = Q R."""
    q1, r1 = _gram_qr(a)
    q, r2 = _gram_qr(q1)
    return q, r2 @ r1


def _tall_svd(a):
    """The thin SVD's U and σ of a tall a from `_tall_qr` and the SVD of the small R."""
    q, r = _tall_qr(a)
    w, sigma, _ = jnp.linalg.svd(r)
    return q @ w, sigma


def _nystrom(op, rank, key, shift, name):
    """`nystrom` without the error: the approximation and a bool array, True when ΩᵀAΩ + νI
    has an eigenvalue below −√eps·‖ΩᵀAΩ‖₂ (A is clearly not PSD; the result is then NaN)."""
    _check_operator(op, name, square=True)
    _check_key(key, name)
    structure = op.in_structure()
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), structure)
    # Under Explicit mesh axes the zeros take the parameters' sharding, so Ω's rows (and the
    # sketch's) are split as the parameters are, not replicated on every device.
    flat0, unravel = ravel(like(zeros, structure))
    n = flat0.shape[0]
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 < rank <= n:
        raise ValueError(f"`{name}`: `rank` must be a Python int in [1, {n}] (n, the operator's "
                         f"size); got {rank!r}.")
    if shift is not None:
        check_number("shift", shift, low=0.0, allow_none=True)
    dtype = flat0.dtype
    omega = jax.random.normal(key, (n, rank), dtype, **rows_like(flat0))
    omega = _tall_qr(omega)[0] if n >= _TALL * rank else jnp.linalg.qr(omega)[0]
    # Columns of Ω are the vmapped axis; the operator itself only ever sees pytrees.
    y = jax.vmap(lambda w: ravel(op.mv(unravel(w)))[0].astype(dtype), in_axes=1, out_axes=1)(
        omega)
    if shift is None:
        nu = jnp.finfo(dtype).eps * jnp.linalg.norm(y)
    else:
        nu = jnp.asarray(shift, dtype)
    # The spectrum of ΩᵀAΩ decides whether A can be PSD. It only chooses the shift and the
    # error, so no derivative flows through the eigenvalues (whose JVP is not needed).
    core = jax.lax.stop_gradient(replicated_matmul(omega.T, y))
    core_evals = jnp.linalg.eigvalsh(0.5 * (core + core.T))
    lowest = jax.lax.stop_gradient(core_evals[0] + nu)
    scale = jnp.max(jnp.abs(core_evals))
    indefinite = lowest < -jnp.sqrt(jnp.finfo(dtype).eps) * scale
    # A round-off negative eigenvalue (a PSD A of rank < r) would still break the Cholesky
    # factor; twice its size in extra shift restores a positive definite B.
    nu = jnp.where((lowest < 0) & ~indefinite, nu - 2 * lowest, nu)
    y_nu = y + nu * omega
    b = replicated_matmul(omega.T, y_nu)
    b = 0.5 * (b + b.T)  # rounding leaves B slightly asymmetric; Cholesky reads one triangle
    c = jnp.linalg.cholesky(b)  # B = C Cᵀ, C lower triangular
    # F = Y_ν C⁻ᵀ. The r × r inverse C⁻¹ first, then a product: a triangular solve against
    # the n × r Y_ν is not partitioned by XLA, which gathers Y_ν onto every device where the
    # parameters (so Y_ν's rows) are sharded; the product keeps Y_ν's row sharding.
    f = y_nu @ jsl.solve_triangular(c, jnp.eye(rank, dtype=dtype), lower=True).T
    u, sigma = _tall_svd(f) if n >= _TALL * rank else jnp.linalg.svd(f, full_matrices=False)[:2]
    lam = jnp.maximum(sigma**2 - nu, 0.0)
    return NystromApproximation(u, lam, unravel), indefinite


def _preconditioner_from(approx: NystromApproximation, mu) -> Callable:
    """r ↦ P⁻¹r for P⁻¹ = (λ_r + μ) U (Λ + μI)⁻¹ Uᵀ + (I − UUᵀ) (Frangella et al., 2023).

    P matches A + μI on the captured eigenspace and is a multiple of the identity on the rest,
    so P^{-1/2}(A + μI)P^{-1/2} has its top r eigenvalues flattened to about λ_r + μ: with r
    above the effective dimension CG then converges in O(1) iterations. For μ = 0 (a
    singular Â, or r beyond the numerical rank) the denominators are floored at eps·λ₁, so
    P⁻¹ stays symmetric positive definite. A non-finite approximation (an indefinite operator
    broke the Cholesky factorisation) gives the identity, i.e. plain CG.
    """
    u, lam = approx.U, approx.eigenvalues
    dtype = u.dtype
    mu = jnp.asarray(mu, dtype)
    ok = jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(lam))
    u = jnp.where(ok, u, 0.0)  # with U = 0 the formula below is the identity
    lam = jnp.where(ok, lam, 1.0)
    top = lam[0] + mu
    floor = jnp.finfo(dtype).eps * jnp.maximum(top, jnp.finfo(dtype).tiny)
    denom = jnp.maximum(lam + mu, floor)
    scale = denom[-1]  # = max(λ_r + μ, floor): the eigenvalues are sorted descending

    def apply(r):
        x, unravel = ravel(r)
        x_ = x.astype(dtype)
        c = replicated_matmul(u.T, x_)
        y = u @ (scale * c / denom) + (x_ - u @ c)
        return unravel(y.astype(x.dtype))

    return apply


def nystrom_preconditioner(op: lx.AbstractLinearOperator, rank: int, key, mu=0.0) -> Callable:
    """The Nyström preconditioner for A + μI as a pytree callable r ↦ P⁻¹r.

    Builds Â = UΛUᵀ = `nystrom(op, rank, key)` (`rank` products with `op`, vmapped) and returns

        P⁻¹ = (λ_r + μ) U (Λ + μI)⁻¹ Uᵀ + (I − UUᵀ),

    Frangella, Tropp & Udell, "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl.
    44 (2023). With r ≳ 2·d_eff(μ) (the effective dimension Σᵢ λᵢ/(λᵢ + μ)) the preconditioned
    condition number is O(1) with high probability. Pass it as `precond=` to a CG solve of
    (A + μI)x = b.

    `op`, `rank` and `key` are checked as in `nystrom`, and `mu` must be ≥ 0. Unlike
    `nystrom`, an operator that is not PSD is not an error here: the approximation then has
    no finite Cholesky factor and P⁻¹ falls back to the identity (plain CG), so one indefinite
    Hessian in a `jax.vmap`-ed batch of solves never stops the others.
    """
    check_number("mu", mu, low=0.0)
    approx, _ = _nystrom(op, rank, key, None, "nystrom_preconditioner")
    return _preconditioner_from(approx, mu)


class NystromPreconditioner(eqx.Module):
    """Nyström preconditioning for `jaxopt2.NewtonCG` (`NewtonCG(preconditioner=
    NystromPreconditioner(rank=...))`) and for the adjoint solve of implicit differentiation
    (`ImplicitAdjoint(preconditioner=NystromPreconditioner(rank=...))`).

    At every Newton step it sketches the curvature operator H with `rank` products (one vmapped
    batch) and preconditions CG on H p = −g with P⁻¹ = λ_r U Λ⁻¹ Uᵀ + (I − UUᵀ), i.e.
    `nystrom_preconditioner(H, rank, key, mu)` (μ = `mu`, default 0: NewtonCG solves with H
    itself, undamped). The sketch is drawn from `key` (a `jax.random.key`, or a legacy
    `jax.random.PRNGKey`), or from `jax.random.key(seed)` when no key is given (`seed=0` by
    default); the same key is used at every step, so every solve is deterministic. It pays
    off when H has a few large, well-separated eigenvalues (ill-conditioned features,
    ridge-like problems): CG then only has to resolve the flat tail.

    Costs: the min(`rank`, n) sketch products of each build are counted in NewtonCG's
    `sol.stats["num_hvp"]`, next to CG's (`num_products`).
    The curvature should be PSD (Gauss–Newton, convex objectives); with an indefinite
    Hessian a broken factorisation falls back to no preconditioning for that step.

    **Independent streams in a vmapped batch.** The key is an array field, not static, so a
    batch of problems solved under `jax.vmap` can draw independent sketches: split a key and
    build the preconditioner (and the solver holding it) inside the vmapped function,

    ```python
    import jax, jax.numpy as jnp, jaxopt2
    fun = lambda x, a: 0.5 * x @ (a * x) - x.sum()
    def solve(key):
        pre = jaxopt2.sketch.NystromPreconditioner(rank=2, key=key)
        return jaxopt2.minimize(fun, jnp.zeros(4), jnp.arange(1.0, 5.0),
                                solver=jaxopt2.NewtonCG(preconditioner=pre)).params
    xs = jax.vmap(solve)(jax.random.split(jax.random.key(0), 3))
    ```

    (a static `seed` would give every member the same sketch).
    """

    # static: the rank fixes array shapes
    rank: int = eqx.field(static=True)
    seed: int = eqx.field(static=True, default=0)
    mu: float = eqx.field(static=True, default=0.0)
    key: jax.Array | None = eqx.field(
        default=None, converter=lambda k: as_key(k, "NystromPreconditioner", batched=True))

    def __check_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"`rank` must be a positive int; got {self.rank!r}.")
        check_seed(self.seed, "NystromPreconditioner", self.key)
        check_number("mu", self.mu, low=0.0)

    def prng_key(self):
        """The typed key the sketch is drawn from: `key`, else `jax.random.key(seed)`."""
        return module_key(self.key, self.seed, "NystromPreconditioner")

    def num_products(self, n: int) -> int:
        """Products with the operator one build costs, for an operator on n unknowns."""
        return min(self.rank, n)

    def __call__(self, fun, params, args, op) -> Callable:
        # n from the operator, so the same object also serves ImplicitAdjoint (no params there)
        n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(op.in_structure()))
        rank = min(self.rank, n)
        return nystrom_preconditioner(op, rank, self.prng_key(), self.mu)
