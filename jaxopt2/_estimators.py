"""Randomized estimators on square matrix-free operators: Hutchinson's diagonal and trace
estimators, and Lanczos for the extreme eigenvalues.

They only need `op.mv` and `op.in_structure()`, so they work on any lineax operator, including
the curvature operators of `jaxopt2.curvature`. Probes live in the operator's input structure
(a pytree like the parameters), and each leaf keeps its dtype.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from ._linalg import lanczos
from ._prng import as_key
from ._tree import result_dtype, tree_dot


def _check_key(key, name: str):
    """`key` must be one JAX PRNG key: typed (`jax.random.key`) or legacy uint32 data
    (`jax.random.PRNGKey`), concrete or traced. Raises a TypeError naming `name` otherwise; the
    key itself is used unchanged, so the random draws are those of the key given."""
    if isinstance(key, int) and not isinstance(key, bool):
        # as_key's hint for ints points at a `seed=` keyword, which these functions lack.
        raise TypeError(
            f"`{name}`: `key` must be a JAX PRNG key, e.g. `jax.random.key({key})` (or a "
            f"legacy `jax.random.PRNGKey({key})`); got the Python int {key}. Wrap it: "
            f"key=jax.random.key({key}).")
    as_key(key, f"`{name}`")


def _fail_if(x, pred, message: str):
    """`x`, after checking the value-dependent condition `pred` is False.

    Called eagerly (concrete `pred`) it raises a plain ValueError, whose message is the
    whole story; under `jit`, `vmap` or `grad` it is `equinox.error_if` (an
    `EquinoxRuntimeError` when the compiled program runs, for any batch member)."""
    if isinstance(pred, jax.core.Tracer):
        return eqx.error_if(x, pred, message)
    if bool(pred):
        raise ValueError(message)
    return x


def _check_operator(op, name: str, *, square: bool = False):
    """`op` must be a lineax operator (square if `square`)."""
    if not isinstance(op, lx.AbstractLinearOperator):
        hint = ""
        if hasattr(op, "shape") and hasattr(op, "dtype"):
            hint = " For a dense matrix A pass `lineax.MatrixLinearOperator(A)`."
        raise TypeError(
            f"`{name}` needs a lineax linear operator (e.g. `lineax.MatrixLinearOperator(A)` or "
            f"an operator of `jaxopt2.curvature`); got {type(op).__name__}.{hint}")
    if square:
        _check_square(op, name)


def _check_square(op: lx.AbstractLinearOperator, name: str):
    def shapes(structure):
        leaves, treedef = jtu.tree_flatten(structure)
        return treedef, [leaf.shape for leaf in leaves]

    if shapes(op.in_structure()) != shapes(op.out_structure()):
        raise ValueError(
            f"`{name}` needs a square operator whose output has the structure of its input; "
            f"got input {op.in_structure()} and output {op.out_structure()}."
        )


def _check_positive(value, name: str):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive Python int, got {value!r}.")


def _rademacher(key, structure):
    # One draw of random bits for all leaves together: each threefry call site is slow to
    # compile, so per-leaf keys would make compilation, not the products, the bottleneck.
    leaves, treedef = jtu.tree_flatten(structure)
    sizes = [leaf.size for leaf in leaves]
    bits = jax.random.bits(key, (sum(sizes),), jnp.uint8)
    signs = 1 - 2 * (bits & 1).astype(jnp.int8)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    probe = [
        signs[o : o + leaf.size].reshape(leaf.shape).astype(leaf.dtype)
        for o, leaf in zip(offsets, leaves, strict=True)
    ]
    return jtu.tree_unflatten(treedef, probe)


def _probe_mean(estimate, key, num_probes: int, batch_size: int | None):
    """Mean of `estimate(key_i)` over `num_probes` probe keys split from `key`.

    Probes are vmapped `batch_size` at a time and the chunks summed in a scan, so memory is
    O(batch_size × dim) while the probes (hence the estimate) do not depend on `batch_size`.
    """
    batch_size = num_probes if batch_size is None else min(batch_size, num_probes)
    _check_positive(batch_size, "batch_size")
    num_chunks = -(-num_probes // batch_size)
    keys = jax.random.split(key, num_probes)

    def chunk(total, c):
        index = c * batch_size + jnp.arange(batch_size)
        values = jax.vmap(estimate)(keys[jnp.minimum(index, num_probes - 1)])
        # The last chunk may run past num_probes; those probes count for nothing.
        keep = index < num_probes

        def masked_sum(v):
            return jnp.sum(jnp.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0), axis=0)

        return jtu.tree_map(lambda t, v: t + masked_sum(v), total, values), None

    zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(estimate, keys[0]))
    total, _ = jax.lax.scan(chunk, zeros, jnp.arange(num_chunks))
    return jtu.tree_map(lambda t: (t / num_probes).astype(t.dtype), total)


def diagonal(op: lx.AbstractLinearOperator, key, num_probes: int, *, batch_size=None):
    """Hutchinson's estimate of the diagonal of a square operator A:

        diag(A) ≈ (1/N) Σₖ zₖ ⊙ (A zₖ),   zₖ Rademacher (±1 entries), N = `num_probes`.

    Unbiased, since E[zᵢ zⱼ] = δᵢⱼ; one probe's entry i has variance Σ_{j≠i} Aᵢⱼ², so the
    standard error is (Σ_{j≠i} Aᵢⱼ²)^½ / √N, small when A is diagonally dominant. Use it
    for diagonal preconditioners (Jacobi, AdaHessian / Sophia-style) and curvature
    diagnostics. Costs N products, vmapped `batch_size` at a time (default: all at once;
    smaller saves memory). The probes come from `key` alone, so `batch_size` does not change
    the estimate.

    Returns a pytree shaped like `op.in_structure()` (e.g. like the parameters), each leaf in
    its own dtype.

    Reference: Bekas, Kokiopoulou and Saad, "An estimator for the diagonal of a matrix",
    Applied Numerical Mathematics 2007.

    ```python
    import jax, jax.numpy as jnp, lineax as lx, jaxopt2
    A = lx.MatrixLinearOperator(jnp.diag(jnp.arange(1.0, 4.0)))
    jaxopt2.curvature.diagonal(A, jax.random.key(0), num_probes=8)  # exactly [1, 2, 3]
    ```
    """
    _check_operator(op, "diagonal", square=True)
    _check_key(key, "diagonal")
    _check_positive(num_probes, "num_probes")
    structure = op.in_structure()

    def estimate(key):
        z = _rademacher(key, structure)
        return jtu.tree_map(lambda a, b: (a * b).astype(a.dtype), z, op.mv(z))

    return _probe_mean(estimate, key, num_probes, batch_size)


def trace(op: lx.AbstractLinearOperator, key, num_probes: int, *, batch_size=None):
    """Hutchinson's estimate of the trace of a square operator A:

        tr(A) ≈ (1/N) Σₖ zₖᵀ A zₖ,   zₖ Rademacher, N = `num_probes`.

    Unbiased, with variance 2 Σ_{i≠j} Aᵢⱼ² / N (for symmetric A) — the smallest of any i.i.d.
    probe distribution. Use it for the average curvature (tr H / dim), effective dimension
    and regularization heuristics. Costs N products, vmapped `batch_size` at a time (as in
    `diagonal`).

    Returns a scalar in the widest dtype of the input structure.

    Reference: Hutchinson, "A stochastic estimator of the trace of the influence matrix for
    Laplacian smoothing splines", Communications in Statistics 1990.

    ```python
    import jax, jax.numpy as jnp, lineax as lx, jaxopt2
    A = lx.MatrixLinearOperator(jnp.diag(jnp.arange(1.0, 4.0)))
    jaxopt2.curvature.trace(A, jax.random.key(0), num_probes=8)  # exactly 6
    ```
    """
    _check_operator(op, "trace", square=True)
    _check_key(key, "trace")
    _check_positive(num_probes, "num_probes")
    structure = op.in_structure()
    dtype = result_dtype(structure)

    def estimate(key):
        z = _rademacher(key, structure)
        return tree_dot(z, op.mv(z)).astype(dtype)

    return _probe_mean(estimate, key, num_probes, batch_size)


def extreme_eigenvalues(op: lx.AbstractLinearOperator, key, num_iters: int):
    """The smallest and largest eigenvalues of a symmetric operator A, by Lanczos.

    From a random unit q₁, Lanczos builds an orthonormal basis Q of the Krylov space
    span{q₁, A q₁, …, A^{m-1} q₁} in which T = QᵀAQ is tridiagonal (αⱼ on the diagonal, βⱼ off
    it); the extreme eigenvalues of the small T (the Ritz values, from `jnp.linalg.eigvalsh`)
    converge to those of A fastest, typically in far fewer than dim steps. Every new vector
    is reorthogonalised against all previous ones (twice), so no spurious copies of converged
    eigenvalues appear; this keeps `num_iters` vectors of the parameter size, so use it with
    `num_iters` up to about 100. If the Krylov space becomes invariant (βⱼ = 0: A has fewer
    distinct eigenvalues than steps), the remaining steps are masked out and the result is
    exact, with no NaN. The Ritz values always lie inside [λ_min, λ_max]: the smallest is an
    upper bound on λ_min and the largest a lower bound on λ_max.

    Use it for step sizes (1/λ_max), condition numbers, damping and detecting negative
    curvature (λ_min < 0). Only the Krylov vectors of the parameters are flattened, never data.

    Returns `(smallest, largest)`, scalars in the widest dtype of the input structure.

    Reference: Lanczos 1950; Golub and Van Loan, "Matrix Computations", §10.1.

    ```python
    import jax, jax.numpy as jnp, lineax as lx, jaxopt2
    A = lx.MatrixLinearOperator(jnp.diag(jnp.arange(1.0, 11.0)), lx.symmetric_tag)
    jaxopt2.curvature.extreme_eigenvalues(A, jax.random.key(0), num_iters=10)  # (1., 10.)
    ```
    """
    _check_operator(op, "extreme_eigenvalues", square=True)
    _check_key(key, "extreme_eigenvalues")
    _check_positive(num_iters, "num_iters")
    zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), op.in_structure())
    flat, unravel = jax.flatten_util.ravel_pytree(zeros)
    n, dtype = flat.size, flat.dtype
    # The Krylov space has at most n dimensions; more steps would only break down.
    k = min(num_iters, n)

    def matvec(q):
        return jax.flatten_util.ravel_pytree(op.mv(unravel(q)))[0].astype(dtype)

    q0 = jax.random.normal(key, (n,), dtype)
    alphas, betas, alive = lanczos(matvec, q0 / jnp.linalg.norm(q0), k)
    # Steps after a breakdown are decoupled (β = 0); giving them α₀, a Rayleigh quotient of the
    # live block and so inside its spectrum, leaves the smallest and largest Ritz values alone.
    alphas = jnp.where(alive, alphas, alphas[0])
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    ritz = jnp.linalg.eigvalsh(tridiagonal)
    return ritz[0], ritz[-1]

