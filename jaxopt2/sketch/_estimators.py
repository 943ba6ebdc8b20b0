"""Stochastic trace and spectral-density estimators on matrix-free lineax operators: Hutch++
(`hutchpp`) and stochastic Lanczos quadrature (`slq`, `logdet_slq`).

Like the Hutchinson estimators of `jaxopt2.curvature` (`diagonal`, `trace`), they only need
`op.mv` and the operator's structure; probes are drawn from the PRNG key given. Sizes
(`num_matvecs`, `num_probes`, `lanczos_steps`) are Python ints, so every function traces under
`jax.jit` with those fixed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import lineax as lx

from .._estimators import _check_key, _check_operator, _check_positive, _fail_if
from .._linalg import lanczos
from .._tree import ravel
from ._randomized import _flat_space, _matmat, _orth


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
    _check_operator(op, "hutchpp", square=True)
    _check_key(key, "hutchpp")
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
    _check_operator(op, "slq", square=True)
    _check_key(key, "slq")
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

    Ritz values lie inside [λ_min(A), λ_max(A)], so one below −√eps·max|θ| proves A is not
    positive definite: `logdet_slq` then raises a ValueError (under `jax.jit` or `jax.vmap` an
    `equinox.EquinoxRuntimeError`, from `equinox.error_if`) instead of returning NaN. For
    log|det A| of a symmetric indefinite A, sum `weights * log|nodes|` from `slq` (times n). A
    singular or numerically singular A (Ritz values at round-off level around 0) gives −inf or
    NaN.

    ```python
    import jax, jax.numpy as jnp, lineax as lx
    from jaxopt2.sketch import logdet_slq
    A = lx.MatrixLinearOperator(jnp.diag(jnp.arange(1.0, 11.0)), lx.positive_semidefinite_tag)
    logdet_slq(A, jax.random.key(0), num_probes=8, lanczos_steps=10)  # ≈ log 10! ≈ 15.1
    ```
    """
    _check_operator(op, "logdet_slq", square=True)
    _check_key(key, "logdet_slq")
    n, _, _ = _flat_space(op.in_structure())
    nodes, weights = slq(op, key, num_probes, lanczos_steps)
    live = jax.lax.stop_gradient(nodes)
    eps = jnp.finfo(nodes.dtype).eps
    nodes = _fail_if(
        nodes, jnp.min(live) < -jnp.sqrt(eps) * jnp.max(jnp.abs(live)),
        "logdet_slq needs a symmetric positive definite operator, but Lanczos found a clearly "
        "negative Ritz value, which proves the operator has a negative eigenvalue. For "
        "log|det A| of an indefinite A use n * sum(weights * log|nodes|) from "
        "jaxopt2.sketch.slq.")
    return n * jnp.sum(weights * jnp.log(nodes))
