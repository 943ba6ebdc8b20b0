"""Randomized low-rank decompositions of matrix-free lineax operators (Halko–Martinsson–Tropp):
`randomized_eigh` and `randomized_svd`, range finders with power iterations.

Everything needs only `op.mv` (and `op.transpose().mv` for the SVD) and the operator's
structures, so it runs on any lineax operator, including the curvature operators of
`jaxopt2.curvature`. The few range-finder vectors are raveled to flat vectors of the parameter
size (never the data); results that are vectors in the operator's space come back as pytrees
with a leading axis, one slice per vector (`V[i]` in `jtu.tree_map(lambda v: v[i], V)` form),
so for a plain (n,) input structure they are (rank, n) arrays whose rows are the vectors.
Sizes (`rank`, `oversampling`, ...) are Python ints, so every function traces under `jax.jit`
with those fixed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from .._estimators import _check_key, _check_operator, _check_positive, _fail_if
from .._tree import ravel


def _flat_space(structure):
    """Flat size, dtype and unravel of an operator's input or output structure."""
    zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), structure)
    flat, unravel = ravel(zeros)
    return flat.size, flat.dtype, unravel


def _matmat(op: lx.AbstractLinearOperator, unravel, dtype, X):
    """op applied to every column of the flat (n, l) matrix X, vmapped: (m, l)."""

    def mv(x):
        return ravel(op.mv(unravel(x)))[0].astype(dtype)

    return jax.vmap(mv, in_axes=1, out_axes=1)(X)


def _orth(Y):
    # Reduced QR: an orthonormal basis of range(Y). Householder QR is backward stable, so no
    # second pass is needed even when power iterations make Y's columns nearly parallel.
    return jnp.linalg.qr(Y)[0]


def _check_power(q):
    if isinstance(q, bool) or not isinstance(q, int) or q < 0:
        raise ValueError(f"`power_iterations` must be a non-negative int, got {q!r}.")


def _stack(unravel, V):
    """Columns of the flat (n, r) matrix V as a pytree with a leading axis of length r."""
    return jax.vmap(unravel)(V.T)


def _sketch_size(rank, oversampling, n, name):
    _check_positive(rank, "rank")
    if isinstance(oversampling, bool) or not isinstance(oversampling, int) or oversampling < 0:
        raise ValueError(f"`oversampling` must be a non-negative int, got {oversampling!r}.")
    if rank > n:
        raise ValueError(f"`{name}`: rank={rank} exceeds the operator's dimension {n}.")
    return min(rank + oversampling, n)


def randomized_eigh(
    op: lx.AbstractLinearOperator, rank: int, key, oversampling: int = 10, power_iterations: int = 2
):
    """Rank-`rank` eigendecomposition A ≈ V diag(λ) Vᵀ of a symmetric operator, by the
    randomized range finder with subspace (power) iteration.

    With ℓ = rank + `oversampling` Gaussian test vectors Ω (n × ℓ): Q = orth(A Ω), then q =
    `power_iterations` times Q ← orth(A Q) (re-orthonormalised every time, so small eigenvalues
    are not lost to rounding), and finally the Rayleigh–Ritz step: eigendecompose the small
    B = Qᵀ A Q = U diag(λ) Uᵀ and set V = Q U. The error obeys
    E‖A − Q Qᵀ A‖ ≤ C(n, ℓ, rank)^{1/(2q+1)} σ_{rank+1} (HMT Cor. 10.10): each power iteration
    sharpens the decay of the spectrum, so the result is close to the best rank-`rank`
    approximation, whose error is σ_{rank+1}. Costs ℓ (q + 2) products, vmapped.

    The range finder captures the eigenvalues of largest magnitude; the `rank` of them are
    returned ordered by decreasing |λ| (for a PSD operator: descending eigenvalues).

    Returns `(eigenvalues, eigenvectors)`: a (rank,) array and a pytree shaped like
    `op.in_structure()` with a leading axis of length `rank` (for a flat (n,) operator, a
    (rank, n) array whose rows are orthonormal eigenvectors).

    `op` must be a square lineax operator and `key` a PRNG key
    (TypeError / ValueError when traced otherwise). It must also be symmetric: if the small
    B = QᵀAQ is asymmetric beyond round-off, ‖B − Bᵀ‖_F > √eps·‖B‖_F, `randomized_eigh`
    raises a ValueError (under `jax.jit` or `jax.vmap` an `equinox.EquinoxRuntimeError`) rather than
    return the eigenvalues of (B + Bᵀ)/2, which are not A's; use `randomized_svd` for a
    non-symmetric operator.

    Reference: Halko, Martinsson and Tropp, "Finding structure with randomness", SIAM Review
    2011, Algorithms 4.4 and 5.3.

    ```python
    import jax, jax.numpy as jnp, lineax as lx
    from jaxopt2.sketch import randomized_eigh
    A = lx.MatrixLinearOperator(jnp.diag(jnp.arange(1.0, 21.0)), lx.symmetric_tag)
    evals, vecs = randomized_eigh(A, 3, jax.random.key(0))   # ≈ [20, 19, 18]
    ```
    """
    _check_operator(op, "randomized_eigh", square=True)
    _check_key(key, "randomized_eigh")
    _check_power(power_iterations)
    n, dtype, unravel = _flat_space(op.in_structure())
    ell = _sketch_size(rank, oversampling, n, "randomized_eigh")

    def A(X):
        return _matmat(op, unravel, dtype, X)

    Q = _orth(A(jax.random.normal(key, (n, ell), dtype)))
    Q = jax.lax.fori_loop(0, power_iterations, lambda _, Q: _orth(A(Q)), Q)
    B = Q.T @ A(Q)
    # B is symmetric up to rounding for a symmetric A; far from it, eigh of its symmetric
    # part would return numbers unrelated to A's eigenvalues. NaN compares False: it propagates.
    asymmetry = jax.lax.stop_gradient(jnp.linalg.norm(B - B.T))
    size = jax.lax.stop_gradient(jnp.linalg.norm(B))
    B = _fail_if(
        B, asymmetry > jnp.sqrt(jnp.finfo(dtype).eps) * size,
        "randomized_eigh needs a symmetric operator, but QᵀAQ is clearly asymmetric. For a "
        "non-symmetric operator use jaxopt2.sketch.randomized_svd.")
    # Symmetrise the rounding away so eigh sees exactly what it assumes.
    evals, U = jnp.linalg.eigh((B + B.T) / 2)
    order = jnp.argsort(-jnp.abs(evals))[:rank]
    return evals[order], _stack(unravel, Q @ U[:, order])


def randomized_svd(
    op: lx.AbstractLinearOperator, rank: int, key, oversampling: int = 10, power_iterations: int = 2
):
    """Rank-`rank` truncated SVD A ≈ U diag(σ) Vᵀ of a general (m × n) operator.

    Range finder on A with q = `power_iterations` rounds of subspace iteration on AAᵀ, each
    half re-orthonormalised (Q ← orth(A orth(Aᵀ Q))), then B = Qᵀ A (computed as (Aᵀ Q)ᵀ,
    since only products are available), its small SVD B = Ũ Σ Vᵀ, and U = Q Ũ. Costs
    ℓ (q + 1) products with A and ℓ (q + 1) with Aᵀ (`op.transpose()`), ℓ = rank +
    `oversampling`.

    Returns `(U, singular_values, V)`: U a pytree shaped like `op.out_structure()` with a
    leading axis of length `rank`, the (rank,) singular values in descending order, and V
    shaped like `op.in_structure()` with the same leading axis (for a flat matrix operator,
    (rank, m) and (rank, n) arrays whose rows are the singular vectors).

    `op` must be a lineax operator and `key` a PRNG key (TypeError when traced otherwise);
    `rank` ≤ min(m, n).

    Reference: Halko, Martinsson and Tropp 2011, Algorithms 4.4 and 5.1.
    """
    _check_operator(op, "randomized_svd")
    _check_key(key, "randomized_svd")
    _check_power(power_iterations)
    n, dtype, unravel_in = _flat_space(op.in_structure())
    m, out_dtype, unravel_out = _flat_space(op.out_structure())
    dtype = jnp.result_type(dtype, out_dtype)
    ell = _sketch_size(rank, oversampling, min(m, n), "randomized_svd")
    op_t = op.transpose()

    def A(X):
        return _matmat(op, unravel_in, dtype, X)

    def At(Y):
        return _matmat(op_t, unravel_out, dtype, Y)

    Q = _orth(A(jax.random.normal(key, (n, ell), dtype)))
    Q = jax.lax.fori_loop(0, power_iterations, lambda _, Q: _orth(A(_orth(At(Q)))), Q)
    B = At(Q).T  # ℓ × n
    U_small, s, Vt = jnp.linalg.svd(B, full_matrices=False)
    U = Q @ U_small[:, :rank]
    return _stack(unravel_out, U), s[:rank], _stack(unravel_in, Vt[:rank].T)
