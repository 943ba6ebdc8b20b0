"""Randomized linear algebra on matrix-free lineax operators: low-rank eigen- and singular value
decompositions (Halko–Martinsson–Tropp), the Hutch++ trace estimator and stochastic Lanczos
quadrature (spectral densities, log-determinants).

Like `_estimators`, everything needs only `op.mv` (and `op.transpose().mv` for the SVD) and the
operator's structures, so it runs on any lineax operator, including the curvature operators of
`jaxopt2.curvature`. The few Krylov / range-finder vectors are raveled to flat vectors of the
parameter size (never the data); results that are vectors in the operator's space come back as
pytrees with a leading axis, one slice per vector (`V[i]` in `jtu.tree_map(lambda v: v[i], V)`
form), so for a plain (n,) input structure they are (rank, n) arrays whose rows are the
vectors. Sizes (`rank`, `num_matvecs`, ...) are Python ints, so every function traces under
`jax.jit` with those fixed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from ._estimators import _check_positive, _check_square, lanczos
from ._tree import ravel


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
    if not isinstance(q, int) or q < 0:
        raise ValueError(f"`power_iterations` must be a non-negative int, got {q!r}.")


def _stack(unravel, V):
    """Columns of the flat (n, r) matrix V as a pytree with a leading axis of length r."""
    return jax.vmap(unravel)(V.T)


def _sketch_size(rank, oversampling, n, name):
    _check_positive(rank, "rank")
    if not isinstance(oversampling, int) or oversampling < 0:
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

    Reference: Halko, Martinsson and Tropp, "Finding structure with randomness", SIAM Review
    2011, Algorithms 4.4 and 5.3.
    """
    _check_square(op, "randomized_eigh")
    _check_power(power_iterations)
    n, dtype, unravel = _flat_space(op.in_structure())
    ell = _sketch_size(rank, oversampling, n, "randomized_eigh")

    def A(X):
        return _matmat(op, unravel, dtype, X)

    Q = _orth(A(jax.random.normal(key, (n, ell), dtype)))
    Q = jax.lax.fori_loop(0, power_iterations, lambda _, Q: _orth(A(Q)), Q)
    B = Q.T @ A(Q)
    # B is symmetric up to rounding; symmetrise so eigh sees exactly what it assumes.
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

    Reference: Halko, Martinsson and Tropp 2011, Algorithms 4.4 and 5.1.
    """
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


def hutchpp(op: lx.AbstractLinearOperator, num_matvecs: int, key):
    """Hutch++ estimate of the trace of a square (symmetric) operator A.

    Split the budget of m = `num_matvecs` products into thirds: with Rademacher S (n × m/3),
    Q = orth(A S) captures the top of the spectrum, whose trace tr(Qᵀ A Q) is computed
    exactly; Hutchinson with Rademacher G estimates only the trace of the deflated remainder,

        tr(A) ≈ tr(Qᵀ A Q) + (1/g) tr(Gᵀ (I − QQᵀ) A (I − QQᵀ) G).

    For PSD A the error is O(tr(A)/m) with constant probability instead of Hutchinson's
    O(tr(A)/√m), and it is never much worse: a big win whenever the spectrum has a few large
    eigenvalues (low rank plus noise). Unbiased for any A. Costs exactly `num_matvecs` ≥ 3
    products (m//3 for S, m//3 for Q, the rest for G).

    Returns a scalar in the dtype of the flattened input structure.

    Reference: Meyer, Musco, Musco and Woodruff, "Hutch++: optimal stochastic trace
    estimation", SOSA 2021.
    """
    _check_square(op, "hutchpp")
    if not isinstance(num_matvecs, int) or num_matvecs < 3:
        raise ValueError(f"`hutchpp` needs num_matvecs ≥ 3 (an int), got {num_matvecs!r}.")
    n, dtype, unravel = _flat_space(op.in_structure())
    k = num_matvecs // 3
    g = num_matvecs - 2 * k
    s_key, g_key = jax.random.split(key)
    S = jax.random.rademacher(s_key, (n, k), dtype)
    G = jax.random.rademacher(g_key, (n, g), dtype)

    def A(X):
        return _matmat(op, unravel, dtype, X)

    Q = _orth(A(S))
    top = jnp.trace(Q.T @ A(Q))
    G = G - Q @ (Q.T @ G)
    rest = jnp.sum(G * A(G)) / g
    return top + rest


def slq(op: lx.AbstractLinearOperator, key, num_probes: int, lanczos_steps: int):
    """Stochastic Lanczos quadrature: a discrete approximation of the spectral density
    μ = (1/n) Σᵢ δ(λᵢ) of a symmetric operator A.

    For each of N = `num_probes` Rademacher probes z (normalised, v = z/√n) run m =
    `lanczos_steps` Lanczos steps; the tridiagonal T = U diag(θ) Uᵀ defines the m-point Gauss
    quadrature vᵀ f(A) v ≈ Σⱼ U₀ⱼ² f(θⱼ), exact for polynomials of degree < 2m. Averaging over
    probes (Hutchinson) gives

        tr f(A) = n ∫ f dμ ≈ n Σ_{probes, j} wⱼ f(θⱼ),   wⱼ = U₀ⱼ² / N,

    so the weights sum to 1. Use it for log-determinants (f = log, see `logdet_slq`),
    tr(A⁻¹), heat-kernel traces or plots of a Hessian's spectrum.

    Returns `(nodes, weights)`, both (num_probes, lanczos_steps) arrays (lanczos_steps is
    capped at n). Nodes of steps masked after a breakdown get weight 0.

    Reference: Ubaru, Chen and Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos
    quadrature", SIMAX 2017; Ghorbani, Krishnan and Xiao, "An investigation into neural net
    optimization via Hessian eigenvalue density", ICML 2019.
    """
    _check_square(op, "slq")
    _check_positive(num_probes, "num_probes")
    _check_positive(lanczos_steps, "lanczos_steps")
    n, dtype, unravel = _flat_space(op.in_structure())
    steps = min(lanczos_steps, n)

    def matvec(q):
        return ravel(op.mv(unravel(q)))[0].astype(dtype)

    def one_probe(key):
        v = jax.random.rademacher(key, (n,), dtype) / math.sqrt(n)
        alphas, betas, alive = lanczos(matvec, v, steps)
        # Masked steps form a decoupled block (β = 0) whose eigenvectors have no weight on v;
        # α₀ (a Rayleigh quotient, so positive for PD A) keeps their nodes harmless under log.
        alphas = jnp.where(alive, alphas, alphas[0])
        T = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
        nodes, U = jnp.linalg.eigh(T)
        return nodes, U[0] ** 2

    nodes, weights = jax.vmap(one_probe)(jax.random.split(key, num_probes))
    return nodes, weights / num_probes


def logdet_slq(op: lx.AbstractLinearOperator, key, num_probes: int, lanczos_steps: int):
    """log det A ≈ n Σ wⱼ log θⱼ for a symmetric positive definite operator A, by `slq`.

    The quadrature error decays like exp(−4m/√κ) in the number of Lanczos steps m (κ the
    condition number), so 20–50 steps suffice for moderately conditioned A; the remaining
    error is the Hutchinson error of tr log A, O(‖log A‖_F / √num_probes).
    Returns a scalar.
    """
    n, _, _ = _flat_space(op.in_structure())
    nodes, weights = slq(op, key, num_probes, lanczos_steps)
    return n * jnp.sum(weights * jnp.log(nodes))
