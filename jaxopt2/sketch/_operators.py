"""Random sketching operators S: ℝⁿ → ℝᵏ (k ≪ n) as lineax linear operators.

Every sketch is drawn from a PRNG key and satisfies E[SᵀS] = I, so ‖Sx‖² is an unbiased
estimate of ‖x‖² and, for k large enough, S is a subspace embedding (a Johnson–Lindenstrauss
map): ‖Sx‖ ≈ ‖x‖ uniformly over a fixed low-dimensional subspace. They differ in the cost of a
product and in how much randomness they store:

    sketch               storage   cost of S x        notes
    gaussian             k n       O(k n)             best constants, dense
    rademacher           k n       O(k n)             ±1/√k, as good as Gaussian in practice
    srht (DCT)           n         O(n log n)         fast transform, subsampled rows
    sparse sign          s n       O(s n)             CountSketch-like, s nonzeros a column
    row sampling         k         O(k)               picks rows, good with leverage scores

The input may be a flat vector (`structure` an int n) or any pytree (`structure` a pytree of
arrays or `jax.ShapeDtypeStruct`s, e.g. the parameters): the pytree is raveled inside the
product, so `S` is a `lineax.FunctionLinearOperator` whose `in_structure()` is that pytree
and whose output is a flat vector of length k. `S.transpose()` (by `jax.linear_transpose`) and
`S.as_matrix()` come from lineax; nothing is ever materialised unless you ask for it.

Inputs are checked when traced: `key` must be a JAX PRNG key (`jax.random.key(0)` or a legacy
`jax.random.PRNGKey(0)`), `k` a positive Python int, the dtype floating, and `S.mv` of a
vector not shaped like the structure is a ValueError that shows both shapes. Sampling
probabilities are checked on their values (see `row_sampling_sketch`).

References: Halko, Martinsson and Tropp, "Finding structure with randomness", SIAM Review
2011; Woodruff, "Sketching as a tool for numerical linear algebra", FnT-TCS 2014; Martinsson
and Tropp, "Randomized numerical linear algebra", Acta Numerica 2020.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from .._estimators import _check_key, _check_positive, _fail_if
from .._tree import ravel


def _structure(structure, dtype):
    """`structure` as a pytree of ShapeDtypeStructs, plus the flat size and dtype."""
    if isinstance(structure, bool) or (isinstance(structure, int) and structure < 0):
        raise ValueError(
            f"the sketched dimension `n` must be an int ≥ 0 or a pytree of arrays / "
            f"`jax.ShapeDtypeStruct`s; got {structure!r}.")
    if isinstance(structure, int):
        dtype = jnp.result_type(float) if dtype is None else dtype
        structure = jax.ShapeDtypeStruct((structure,), dtype)
    else:
        structure = jtu.tree_map(lambda s: jax.ShapeDtypeStruct(jnp.shape(s), s.dtype), structure)
    zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), structure)
    flat = jax.eval_shape(lambda: ravel(zeros)[0])
    n = flat.shape[0]
    dtype = flat.dtype if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"sketches need a floating dtype, got {dtype}.")
    return structure, n, dtype


def _shapes(tree):
    leaves, treedef = jtu.tree_flatten(tree)
    return treedef, [tuple(jnp.shape(leaf)) for leaf in leaves]


class _Sketch(lx.FunctionLinearOperator):
    """A `lineax.FunctionLinearOperator` whose `mv` first checks its argument against the
    input structure: lineax's own check fails deep inside closure conversion, with a message
    about "dynamic arguments" that does not say which vector was wrong."""

    def mv(self, vector):
        want, got = _shapes(self.in_structure()), _shapes(vector)
        if want != got:
            raise ValueError(
                f"sketch.mv: the vector must be shaped like the sketch's input structure "
                f"(`n` / `structure` when the sketch was built): expected {want[0]} with leaf "
                f"shapes {want[1]}, got {got[0]} with leaf shapes {got[1]}.")
        return super().mv(vector)


def _operator(flat_fn, structure, dtype) -> lx.FunctionLinearOperator:
    def mv(x):
        return flat_fn(ravel(x)[0].astype(dtype))

    return _Sketch(mv, structure)


def _check_k(k, n, name, at_most_n=False):
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`{name}` needs a positive Python int k, got {k!r}.")
    if at_most_n and k > n:
        raise ValueError(f"`{name}` samples k ≤ n rows without replacement; got k={k}, n={n}.")


def _begin(name, key, k, structure, dtype, *, at_most_n=False):
    """What every sketch over a `structure` checks first (the structure, then `k`, then the
    key); returns `_structure`'s `(structure, n, dtype)`."""
    structure, n, dtype = _structure(structure, dtype)
    _check_k(k, n, name, at_most_n)
    _check_key(key, name)
    return structure, n, dtype


def gaussian_sketch(key, k: int, structure, *, dtype=None) -> lx.FunctionLinearOperator:
    """Dense Gaussian sketch, entries i.i.d. N(0, 1/k), so E[SᵀS] = I.

    The reference JL map: a subspace embedding of a d-dimensional subspace with distortion ε
    needs only k = O(d/ε²) rows. Stores k n numbers; use it for small n or as the test matrix
    of a randomized range finder.
    """
    structure, n, dtype = _begin("gaussian_sketch", key, k, structure, dtype)
    matrix = jax.random.normal(key, (k, n), dtype) / math.sqrt(k)
    return _operator(lambda x: matrix @ x, structure, dtype)


def rademacher_sketch(key, k: int, structure, *, dtype=None) -> lx.FunctionLinearOperator:
    """Dense sign sketch, entries i.i.d. ±1/√k, so E[SᵀS] = I.

    Same guarantees as the Gaussian sketch up to constants (Achlioptas 2003) with cheaper
    random numbers.
    """
    structure, n, dtype = _begin("rademacher_sketch", key, k, structure, dtype)
    matrix = jax.random.rademacher(key, (k, n), dtype) / math.sqrt(k)
    return _operator(lambda x: matrix @ x, structure, dtype)


def srht_sketch(key, k: int, structure, *, dtype=None) -> lx.FunctionLinearOperator:
    """Subsampled randomized trigonometric transform, S = √(n/k) P F D:

    D is a diagonal of random signs, F the orthonormal DCT-II (`jax.scipy.fft.dct` with
    `norm="ortho"`), P picks k of the n rows uniformly without replacement. Then
    E[PᵀP] = (k/n) I gives E[SᵀS] = (n/k) D Fᵀ (k/n) I F D = I. The signs spread any vector's
    mass evenly over the transformed coordinates (they become "incoherent"), which is why
    sampling few of them is safe. A product costs O(n log n) and the sketch stores only
    O(n) numbers. The DCT is real and orthogonal for every n, so, unlike the Hadamard
    transform, it needs no padding to a power of two.

    Reference: Ailon and Chazelle, "The fast Johnson–Lindenstrauss transform", STOC 2006;
    Tropp, "Improved analysis of the subsampled randomized Hadamard transform", 2011.
    """
    structure, n, dtype = _begin("srht_sketch", key, k, structure, dtype, at_most_n=True)
    sign_key, row_key = jax.random.split(key)
    signs = jax.random.rademacher(sign_key, (n,), dtype)
    rows = jax.random.choice(row_key, n, (k,), replace=False)
    scale = math.sqrt(n / k)

    def flat_fn(x):
        return scale * jax.scipy.fft.dct(signs * x, norm="ortho")[rows]

    return _operator(flat_fn, structure, dtype)


def sparse_sign_sketch(
    key, k: int, structure, *, nonzeros: int = 8, dtype=None
) -> lx.FunctionLinearOperator:
    """Sparse sign sketch: each column holds `nonzeros` = s entries ±1/√s in s distinct rows
    chosen uniformly, everything else zero (s = 1 is CountSketch).

    Each column has unit norm and distinct columns have independent signs, so E[SᵀS] = I.
    With s ≈ 8 it embeds a d-dimensional subspace with k = O(d log d) rows, nearly as well as a
    Gaussian sketch, at a cost of O(s n) per product: S x is a segment sum of the n·s signed
    entries into k bins, never a dense k × n matrix. Stores n·s row indices and signs.

    Reference: Clarkson and Woodruff, "Low rank approximation and regression in input sparsity
    time", STOC 2013; Nelson and Nguyen, "OSNAP", FOCS 2013; Martinsson and Tropp 2020, §9.2.
    """
    structure, n, dtype = _begin("sparse_sign_sketch", key, k, structure, dtype)
    _check_positive(nonzeros, "nonzeros")
    rows, values = sparse_sign_pattern(key, n, k, nonzeros, dtype)
    flat_rows = rows.reshape(-1)

    def flat_fn(x):
        return jax.ops.segment_sum((values * x[:, None]).reshape(-1), flat_rows, num_segments=k)

    return _operator(flat_fn, structure, dtype)


def sparse_sign_pattern(key, n: int, k: int, nonzeros: int, dtype):
    """The nonzeros of an k × n sparse sign sketch: `rows` (n × s, distinct within a row of
    the pattern, i.e. within a column of S) and `values` (n × s, ±1/√s), s = min(nonzeros, k)."""
    s = min(nonzeros, k)
    row_key, sign_key = jax.random.split(key)
    # Floyd's algorithm, vectorised over columns: s rounds give a uniform s-subset of
    # {0..k-1} per column in O(n s²) work, instead of a length-k permutation per column.
    keys = jax.random.split(row_key, s)
    rows = jnp.zeros((n, 0), jnp.int32)
    for i, j in enumerate(range(k - s, k)):
        t = jax.random.randint(keys[i], (n,), 0, j + 1, jnp.int32)
        taken = jnp.any(rows == t[:, None], axis=1)
        rows = jnp.concatenate([rows, jnp.where(taken, j, t)[:, None]], axis=1)
    values = jax.random.rademacher(sign_key, (n, s), dtype) / math.sqrt(s)
    return rows, values


def row_sampling_sketch(
    key, k: int, n, probabilities=None, *, dtype=None
) -> lx.FunctionLinearOperator:
    """Row sampling: S x = (x_{i₁}/√(k p_{i₁}), …, x_{i_k}/√(k p_{i_k})), with indices drawn
    i.i.d. (with replacement) from `probabilities` p (uniform if None; normalised to sum 1).

    E[SᵀS] = Σᵣ E[e_i e_iᵀ / (k pᵢ)] = Σᵣ (1/k) I = I: the importance weights 1/√(k pᵢ) make
    the sketch unbiased for any p with pᵢ > 0. Applied to the rows of a tall matrix A (as
    S A), sampling with p proportional to the leverage scores (see `leverage_scores`) gives a
    subspace embedding of range(A) with k = O(d log d / ε²) rows; uniform sampling only works
    for incoherent A. `n` is an int or a pytree structure, as for the other sketches.

    `probabilities` must have shape (n,) (a ValueError when traced), be non-negative and have
    a positive sum: a negative entry or all zeros is a ValueError, or under `jax.jit` /
    `jax.vmap` an `equinox.EquinoxRuntimeError`. NaN probabilities give a NaN sketch.

    ```python
    import jax, jax.numpy as jnp
    from jaxopt2.sketch import row_sampling_sketch
    S = row_sampling_sketch(jax.random.key(0), 3, 4, probabilities=jnp.array([1.0, 1, 2, 0]))
    S.mv(jnp.arange(4.0))  # three entries x_i / √(3 p_i), never row 3
    ```

    Reference: Drineas, Mahoney and Muthukrishnan, "Sampling algorithms for ℓ₂ regression and
    applications", SODA 2006.
    """
    structure, size, dtype = _structure(n, dtype)
    _check_k(k, size, "row_sampling_sketch")
    _check_key(key, "row_sampling_sketch")
    if probabilities is None:
        rows = jax.random.randint(key, (k,), 0, size)
        weights = jnp.full((k,), math.sqrt(size / k), dtype)
    else:
        p = jnp.asarray(probabilities, dtype)
        if p.shape != (size,):
            raise ValueError(f"`probabilities` must have shape ({size},), got {p.shape}.")
        total = jnp.sum(p)
        # Checked when the values exist (also under jit); NaN compares False and propagates.
        p = _fail_if(
            p, jnp.any(p < 0) | (total == 0),
            "row_sampling_sketch: `probabilities` must be non-negative with a positive sum "
            "(they are normalised to sum 1); got a negative entry or all zeros.")
        p = p / total
        rows = jax.random.choice(key, size, (k,), replace=True, p=p)
        weights = 1 / jnp.sqrt(k * p[rows])
    return _operator(lambda x: weights * x[rows], structure, dtype)


def leverage_scores(A, key, *, sketch_size: int | None = None, jl_dim: int | None = 32):
    """Approximate (row) leverage scores ℓᵢ = ‖e_iᵀ U‖² of a tall dense A (m × d, full column
    rank), U an orthonormal basis of range(A); Σ ℓᵢ = d and 0 ≤ ℓᵢ ≤ 1.

    Following Drineas, Magdon-Ismail, Mahoney and Woodruff (JMLR 2012): sketch the rows,
    S A with an SRHT of `sketch_size` rows (default min(m, 4d)), and take R from its QR.
    Since S embeds range(A), A R⁻¹ is nearly orthonormal and ℓᵢ ≈ ‖e_iᵀ A R⁻¹‖². The row norms
    are themselves estimated with a Gaussian JL projection G of `jl_dim` columns,
    ‖e_iᵀ A R⁻¹ G‖², so the cost is O(m d log m + m d · jl_dim) instead of O(m d²). With
    `jl_dim=None` (or ≥ d) the row norms are exact given R. Each ℓᵢ is within a constant
    factor of the truth with high probability, which is all importance sampling needs.

    Returns a vector of length m. Use with `row_sampling_sketch(key, k, m, probabilities=ℓ)`.
    """
    A = jnp.asarray(A)
    if A.ndim != 2:
        raise ValueError(f"`leverage_scores` needs a matrix, got shape {A.shape}.")
    m, d = A.shape
    if m < d:
        raise ValueError(
            f"`leverage_scores` needs a tall matrix A (m ≥ d rows), got shape {A.shape}; for "
            f"the leverage scores of the columns pass A.T.")
    _check_key(key, "leverage_scores")
    for name, value in (("sketch_size", sketch_size), ("jl_dim", jl_dim)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"`leverage_scores`: `{name}` must be a positive int or None, "
                             f"got {value!r}.")
    dtype = jnp.result_type(A.dtype, float)
    A = A.astype(dtype)
    sketch_key, jl_key = jax.random.split(key)
    k = min(m, 4 * d) if sketch_size is None else min(sketch_size, m)
    if k < m:
        S = srht_sketch(sketch_key, k, m, dtype=dtype)
        SA = jax.vmap(S.mv, in_axes=1, out_axes=1)(A)
    else:
        SA = A  # a sketch no smaller than A saves nothing: use A itself.
    R = jnp.linalg.qr(SA, mode="r")
    if jl_dim is None or jl_dim >= d:
        G = jnp.eye(d, dtype=dtype)
    else:
        G = jax.random.normal(jl_key, (d, jl_dim), dtype) / math.sqrt(jl_dim)
    # A (R⁻¹ G): a d × jl_dim triangular solve, then one tall product.
    projected = A @ jax.scipy.linalg.solve_triangular(R, G, lower=False)
    return jnp.sum(projected**2, axis=1)
