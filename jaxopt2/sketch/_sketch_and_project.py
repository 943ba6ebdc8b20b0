"""Sketch-and-project: randomized iterative solvers for consistent linear systems A x = b.

Gower and Richtárik's framework (with the Euclidean metric B = I) contains randomized
Kaczmarz, randomized block Kaczmarz and Gaussian "sketch-and-project" as special cases: every
step draws a random sketch S (m × k) and projects the iterate onto the solution set of the
sketched system Sᵀ A x = Sᵀ b, which contains the solution set of A x = b. See
`sketch_and_project` for the method, its guarantees and when to use it.

References: R. M. Gower and P. Richtárik, "Randomized iterative methods for linear systems",
SIAM J. Matrix Anal. Appl. 36 (2015); D. Needell and J. A. Tropp, "Paved with good
intentions: analysis of a randomized block Kaczmarz method", Linear Algebra Appl. 441 (2014);
T. Strohmer and R. Vershynin, "A randomized Kaczmarz algorithm with exponential
convergence", J. Fourier Anal. Appl. 15 (2009).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from .._estimators import _check_key, _fail_if
from .._loops import while_loop
from .._tree import ravel

_SKETCHES = ("rows", "gaussian")


class SketchAndProjectInfo(eqx.Module):
    """Diagnostics of `sketch_and_project`.

    - `num_steps`: projections taken (int32 array; 0 if x₀ already satisfies the tolerance).
    - `residual_norm`: ‖A x − b‖₂ at the returned x, in the working dtype.
    - `converged`: bool array, True iff the residual norm is finite and at most
      atol + rtol·‖b‖₂. False after `max_steps` steps without reaching it, and whenever the
      data (A, b or x₀) are not finite.
    """

    num_steps: jax.Array
    residual_norm: jax.Array
    converged: jax.Array


class _Problem(NamedTuple):
    """A x = b on flat vectors: the products a step needs, whatever form A came in."""

    matvec: Callable  # x (n,) ↦ A x (m,)
    rows: Callable  # row indices (k,) ↦ the rows of A, (k, n)
    sketch_rows: Callable  # G (k, m) ↦ G A, (k, n)
    b: jax.Array
    x0: jax.Array
    unravel_x: Callable  # flat (n,) ↦ x in the caller's form


def _flat(structure):
    """Flat size, dtype and unravel of a pytree of ShapeDtypeStructs."""
    zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), structure)
    flat, unravel = ravel(zeros)
    return flat.shape[0], flat.dtype, unravel


def _check_like(tree, structure, name, what):
    """`tree` must have the pytree structure and leaf shapes of `structure`."""
    leaves, treedef = jtu.tree_flatten(tree)
    ref_leaves, ref_treedef = jtu.tree_flatten(structure)
    shapes = [jnp.shape(leaf) for leaf in leaves]
    ref_shapes = [s.shape for s in ref_leaves]
    if treedef != ref_treedef or shapes != ref_shapes:
        raise ValueError(
            f"`{name}` must match the operator's {what} structure: expected {ref_treedef} with "
            f"leaf shapes {ref_shapes}, got {treedef} with leaf shapes {shapes}."
        )


def _working_dtype(*dtypes):
    dtype = jnp.result_type(*dtypes, float)
    if not jnp.issubdtype(dtype, jnp.floating):
        # A complex system would need Aᴴ instead of Aᵀ everywhere; not supported.
        raise ValueError(f"`sketch_and_project` works over real floating dtypes, got {dtype}.")
    return dtype


def _as_vector(v, name):
    try:
        return jnp.asarray(v)
    except (TypeError, ValueError) as e:
        # e.g. a pytree with a dense A: only an operator knows how to flatten one
        raise ValueError(
            f"With a dense A, `{name}` must be a flat array; for pytrees wrap A in a lineax "
            f"operator with matching structures. Got {type(v).__name__}.") from e


def _dense_problem(A, b, x0) -> tuple[_Problem, int, int]:
    A = jnp.asarray(A)
    if A.ndim != 2:
        raise ValueError(
            f"`A` must be a 2-D array (m × n) or a lineax operator, got shape {A.shape}.")
    m, n = A.shape
    b = _as_vector(b, "b")
    if b.shape != (m,):
        raise ValueError(f"`b` must have shape ({m},) to match A's {m} rows, got {b.shape}.")
    if x0 is not None:
        x0 = _as_vector(x0, "x0")
        if x0.shape != (n,):
            raise ValueError(
                f"`x0` must have shape ({n},) to match A's {n} columns, got {x0.shape}.")
    dtype = _working_dtype(A.dtype, b.dtype, *([] if x0 is None else [x0.dtype]))
    A = A.astype(dtype)
    x0 = jnp.zeros(n, dtype) if x0 is None else x0.astype(dtype)
    problem = _Problem(
        matvec=lambda x: A @ x,
        rows=lambda idx: A[idx],  # a gather: only the k sampled rows are read
        sketch_rows=lambda G: G @ A,
        b=b.astype(dtype),
        x0=x0,
        unravel_x=lambda x: x,
    )
    return problem, m, n


def _operator_problem(op: lx.AbstractLinearOperator, b, x0) -> tuple[_Problem, int, int]:
    n, in_dtype, unravel_in = _flat(op.in_structure())
    m, out_dtype, unravel_out = _flat(op.out_structure())
    _check_like(b, op.out_structure(), "b", "output")
    if x0 is not None:
        _check_like(x0, op.in_structure(), "x0", "input")
    b_flat = ravel(b)[0]
    x0_flat = None if x0 is None else ravel(x0)[0]
    extra = [] if x0_flat is None else [x0_flat.dtype]
    dtype = _working_dtype(in_dtype, out_dtype, b_flat.dtype, *extra)
    op_t = op.transpose()

    # The flat vectors are cast to each structure's own dtype before unravelling (ravel_pytree's
    # unravel refuses another dtype) and back to the working dtype after.
    def matvec(x):
        return ravel(op.mv(unravel_in(x.astype(in_dtype))))[0].astype(dtype)

    def rmatvec(y):
        return ravel(op_t.mv(unravel_out(y.astype(out_dtype))))[0].astype(dtype)

    def rows(idx):
        # Row i of A is (Aᵀ eᵢ)ᵀ: k transposed products, batched into one vmapped call.
        return jax.vmap(rmatvec)(jax.nn.one_hot(idx, m, dtype=dtype))

    problem = _Problem(
        matvec=matvec,
        rows=rows,
        sketch_rows=lambda G: jax.vmap(rmatvec)(G),  # row j of G A is (Aᵀ gⱼ)ᵀ
        b=b_flat.astype(dtype),
        x0=jnp.zeros(n, dtype) if x0_flat is None else x0_flat.astype(dtype),
        unravel_x=lambda x: unravel_in(x.astype(in_dtype)),
    )
    return problem, m, n


def _min_norm_step(SA, Sr):
    """The least-norm d with (SᵀA) d = Sᵀr, i.e. d = (SᵀA)ᵀ ((SᵀA)(SᵀA)ᵀ)⁺ Sᵀr = (SᵀA)⁺ Sᵀr.

    Computed from a thin SVD of the k × n block SᵀA rather than from the k × k Gram matrix
    (SᵀA)(SᵀA)ᵀ: forming the Gram matrix squares the block's condition number, whereas the
    SVD resolves singular values down to about eps·σ_max. Singular values below the usual
    lstsq cutoff max(k, n)·eps·σ_max are treated as zero, so a rank-deficient block (repeated
    or dependent rows, zero rows, k > rank A) gives a finite step: the projection onto the
    sketched solution set, which for a consistent system is still well defined.
    """
    k, n = SA.shape
    U, s, Vt = jnp.linalg.svd(SA, full_matrices=False)
    cutoff = max(k, n) * jnp.finfo(SA.dtype).eps * s[0]  # s is sorted in descending order
    keep = s > cutoff
    inv_s = jnp.where(keep, 1 / jnp.where(keep, s, 1), 0)
    return Vt.T @ (inv_s * (U.T @ Sr))


def _gram_step(SA, Sr):
    """The same step from a Cholesky factorization of the k × k Gram matrix (SᵀA)(SᵀA)ᵀ + τI
    (k²n + k³/3 flops, several times fewer than the SVD's), τ = 10·eps·trace: squaring the
    block's condition number costs accuracy only for blocks of condition beyond ~1/√eps, so
    this is for well-conditioned (e.g. scaled or preconditioned) systems. A zero row of the
    block gets a zero coefficient from the shift, as the SVD's cutoff gives it."""
    return SA.T @ _shifted_gram_solve(SA @ SA.T, Sr)


def _shifted_gram_solve(gram, rhs):
    """(gram + τI)⁻¹ rhs by Cholesky, τ = 10·eps·trace (`_gram_step`'s shift)."""
    k, dtype = gram.shape[0], gram.dtype
    tau = 10 * jnp.finfo(dtype).eps * jnp.maximum(jnp.trace(gram), jnp.finfo(dtype).tiny)
    chol = jnp.linalg.cholesky(gram + tau * jnp.eye(k, dtype=dtype))
    return jax.scipy.linalg.cho_solve((chol, True), rhs)


def sketch_and_project(
    A,
    b,
    key,
    *,
    sketch_size: int,
    sketch: str = "rows",
    x0=None,
    max_steps: int = 1000,
    rtol=None,
    atol=0.0,
    row_probs=None,
    projection: str = "svd",
):
    """Solve a consistent linear system A x = b (A m × n, any shape) by sketch-and-project.

    From x₀, every step draws a random sketch S_k (m × k, k = `sketch_size`) and sets

        x_{k+1} = x_k − Aᵀ S_k (S_kᵀ A Aᵀ S_k)⁺ S_kᵀ (A x_k − b),

    the orthogonal projection of x_k onto the affine set {x : S_kᵀ A x = S_kᵀ b}, which
    contains every solution of A x = b. Hence the error to any solution never grows, and
    every iterate stays in x₀ + range(Aᵀ). With Z = Aᵀ S (SᵀAAᵀS)⁺ SᵀA (the projection onto
    the rows seen by the sketch) and x* the projection of x₀ onto the solution set,

        E‖x_k − x*‖² ≤ (1 − λ_min⁺(E[Z]))ᵏ ‖x₀ − x*‖²,

    linear convergence whenever E[Z] has the range of Aᵀ (true for both sketches below), to
    x* = x₀ + A⁺(b − A x₀): from x₀ = 0 that is the least-norm solution A⁺ b (Gower and
    Richtárik 2015, Thm. 4.6 and §3 with B = I). The system must be consistent (b ∈ range A);
    for an inconsistent one the iterates do not converge (use LSQR or a least-squares solver).

    Sketches (`sketch`):

    - ``"rows"``: S = a block of k distinct rows of the identity, drawn without replacement
      every step, uniformly or with probabilities proportional to `row_probs` (length m,
      non-negative, need not sum to 1; e.g. the squared row norms ‖aᵢ‖², as in Strohmer and
      Vershynin's randomized Kaczmarz; drawn by sequential sampling without replacement).
      This is randomized block Kaczmarz (Needell and Tropp 2014), k = 1 plain randomized
      Kaczmarz. Row weights are deliberately absent: scaling the columns of S leaves the
      projection unchanged, so only the distribution of the blocks matters. For the same
      reason uniform blocks behave like norm-weighted ones on the row-normalised system;
      weights ∝ ‖aᵢ‖² help when the large rows carry the information, but starve rows of
      tiny norm, which can make convergence much slower.
    - ``"gaussian"``: S with i.i.d. N(0, 1) entries (Gaussian sketch-and-project). Every
      step mixes all the equations, costing k products with Aᵀ (or one k × m by m × n matmul
      for an array), but its rate depends only on the spectrum of A, not on the row norms.

    Each step: SᵀA (a gather of k rows of a dense A; for an operator, k vmapped transposed
    products `A.transpose().mv`), a thin SVD of that k × n block (O(k²n), robust to
    rank-deficient blocks), and one product A x to update the residual r = A x − b, which is
    recomputed (not updated) so the returned residual norm is the true one at the returned x.
    It stops as soon as ‖A x − b‖₂ ≤ `atol` + `rtol`·‖b‖₂ (tested before every step) or after
    `max_steps` steps. `rtol` defaults to √eps of the working dtype (≈1.5e-8 in float64,
    ≈3.5e-4 in float32): the attainable residual is about eps·‖A‖·‖x‖, so much smaller values
    may be unreachable for ill-conditioned A (the solver then runs to `max_steps` and
    reports `converged=False`).

    When to use it: large consistent systems (underdetermined interpolation, overdetermined
    but noise-free fits, tomography-like problems) where blocks of rows are cheap to get and
    fit in memory while a full pass with Aᵀ is costly, or where the data stream in. Its rate
    is governed by λ_min⁺(E[Z]), roughly k·σ_min²(A)/‖A‖_F² for row blocks of a well-scaled A,
    i.e. by the scaled condition number ‖A‖_F²/σ_min², so it needs more steps than CG on the
    normal equations (CGLS/LSQR, which converge in O(κ) products, O(√κ) for CG on a PD
    system) but each step touches only k rows. Prefer CG for square symmetric positive
    definite systems and LSQR/LSMR for inconsistent (noisy) least squares.

    Arguments:
        A: a 2-D array (m × n), or a lineax operator with m outputs and n inputs (its input
            and output structures may be pytrees; an `lx.MatrixLinearOperator` takes the dense
            path). Only `A.mv` and `A.transpose().mv` are used for an operator.
        b: the right-hand side, shape (m,) (for an operator: a pytree like its output).
        key: a PRNG key (`jax.random.key(0)` or a legacy `jax.random.PRNGKey(0)`; anything
            else is a TypeError); it is split once per step inside the loop.
        sketch_size: k, a Python int in [1, m]; k = m solves in one step.
        sketch: ``"rows"`` or ``"gaussian"`` (static).
        x0: starting point, shape (n,) (a pytree like the operator's input); default 0.
        max_steps: static bound on the number of projections.
        rtol, atol: stopping tolerances on ‖A x − b‖₂ (see above).
        row_probs: optional sampling weights of the rows for ``sketch="rows"``: shape (m,),
            non-negative, at least `sketch_size` of them positive (else a ValueError, or under
            `jax.jit` / `jax.vmap` an `equinox.EquinoxRuntimeError`).
        projection: how each step solves its k × k projection: ``"svd"`` (a thin SVD of
            SᵀA, robust to any rank deficiency) or ``"cholesky"`` (a Cholesky factorization
            of the shifted Gram matrix (SᵀA)(SᵀA)ᵀ, several times cheaper; it squares the
            block's condition number, so use it on well-conditioned or preconditioned
            systems), or ``"gram"`` (an array A only: the same Cholesky steps with A Aᵀ
            formed once, m²n flops, after which a row-block step costs k³/3 + 2mk flops
            instead of k²n + k³/3 + mn: the residual is updated rather than recomputed, x
            formed and the residual recomputed once at the end; for many steps on a dense
            A).

    Returns `(x, info)`: x shaped like x₀ (an (n,) array, or a pytree like the operator's
    input) and a `SketchAndProjectInfo`. Works under `jax.jit` (with `sketch_size`, `sketch`
    and `max_steps` static) and `jax.vmap` (over b, x₀ or key); float32 stays float32.

    Example:

    ```python
    import jax
    import jax.numpy as jnp
    from jaxopt2.sketch import sketch_and_project

    A = jax.random.normal(jax.random.key(0), (40, 100))  # underdetermined, full row rank
    b = A @ jnp.ones(100)
    x, info = sketch_and_project(A, b, jax.random.key(1), sketch_size=10)
    assert info.converged
    # x is the least-norm solution pinv(A) b, not the vector of ones
    assert jnp.allclose(x, jnp.linalg.pinv(A) @ b, atol=1e-3)
    ```

    References: R. M. Gower and P. Richtárik, "Randomized iterative methods for linear
    systems", SIAM J. Matrix Anal. Appl. 36 (2015); D. Needell and J. A. Tropp, "Paved with
    good intentions: analysis of a randomized block Kaczmarz method", Linear Algebra Appl. 441
    (2014); T. Strohmer and R. Vershynin, "A randomized Kaczmarz algorithm with exponential
    convergence", J. Fourier Anal. Appl. 15 (2009).
    """
    if sketch not in _SKETCHES:
        raise ValueError(f"`sketch` must be one of {_SKETCHES}, got {sketch!r}.")
    if projection not in ("svd", "cholesky", "gram"):
        raise ValueError(f"`projection` must be 'svd', 'cholesky' or 'gram', got "
                         f"{projection!r}.")
    step_of = _min_norm_step if projection == "svd" else _gram_step
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"`max_steps` must be a non-negative Python int, got {max_steps!r}.")
    _check_key(key, "sketch_and_project")
    if isinstance(A, lx.MatrixLinearOperator):
        A = A.matrix  # flat structures: the gather path reads rows without transposes
    if isinstance(A, lx.AbstractLinearOperator):
        if projection == "gram":
            raise ValueError("projection='gram' needs A as an array (it forms A Aᵀ once); "
                             "use 'cholesky' or 'svd' with an operator.")
        problem, m, n = _operator_problem(A, b, x0)
    else:
        problem, m, n = _dense_problem(A, b, x0)
    k = sketch_size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= m:
        raise ValueError(
            f"`sketch_size` must be a Python int in [1, m] with m = {m} (the number of "
            f"equations, A's output size), got {k!r}.")
    dtype = problem.b.dtype
    probs = None
    if row_probs is not None:
        if sketch != "rows":
            raise ValueError("`row_probs` only applies to sketch='rows'; drop it or switch.")
        probs = jnp.asarray(row_probs, dtype)
        if probs.shape != (m,):
            raise ValueError(
                f"`row_probs` must have shape ({m},), one weight per equation, got "
                f"{probs.shape}.")
        # Blocks are drawn without replacement, so k rows need a positive weight. Checked on
        # the values (also under jit and vmap); NaN weights compare False and are let through.
        probs = _fail_if(
            probs, jnp.any(probs < 0) | (jnp.sum(probs > 0) < k),
            f"sketch_and_project: `row_probs` must be non-negative with at least "
            f"sketch_size={k} positive entries (blocks of rows are drawn without "
            f"replacement); got a negative weight or too few positive ones.")
    if rtol is None:
        rtol = float(jnp.finfo(dtype).eps) ** 0.5
    b_flat = problem.b
    tol = jnp.asarray(atol, dtype) + jnp.asarray(rtol, dtype) * jnp.linalg.norm(b_flat)

    def draw(key, r):
        """SᵀA (k × n) and Sᵀr (k,) for a fresh sketch."""
        if sketch == "rows":
            idx = jax.random.choice(key, m, (k,), replace=False, p=probs)
            return problem.rows(idx), r[idx]
        G = jax.random.normal(key, (k, m), dtype)  # Sᵀ; its scale is irrelevant
        return problem.sketch_rows(G), G @ r

    def residual(x):
        return problem.matvec(x) - b_flat

    def cond(state):
        _, r, _, step = state
        # NaN compares False, so a non-finite residual also ends the loop.
        return (step < max_steps) & (jnp.linalg.norm(r) > tol)

    def body(state):
        x, r, key, step = state
        key, subkey = jax.random.split(key)
        SA, Sr = draw(subkey, r)
        finite = jnp.all(jnp.isfinite(SA)) & jnp.all(jnp.isfinite(Sr))
        # LAPACK's SVD on non-finite input is not to be trusted: factor zeros instead and
        # poison x, so the residual turns NaN, the loop stops and `converged` is False.
        d = step_of(jnp.where(finite, SA, 0), jnp.where(finite, Sr, 0))
        x = jnp.where(finite, x - d, jnp.nan)
        return x, residual(x), key, step + 1

    x0_flat = problem.x0
    if projection == "gram":
        # A Aᵀ formed once (m²n flops). Every step moves x by −Aᵀ S c, so x = x₀ − Aᵀ y with
        # y accumulating the S c, and r = r₀ − (A Aᵀ) y: a step is a gather of k rows of
        # A Aᵀ (contiguous; symmetric, so its columns too), a k × k Cholesky and r ← r −
        # (A Aᵀ)[S]ᵀ c, k³/3 + 2mk flops against k²n + k³/3 + mn; x is formed once at the
        # end and the true residual recomputed there for `converged`. The same iterates up to
        # rounding.
        A_dense = jnp.asarray(A).astype(dtype)
        P = A_dense @ A_dense.T

        def gram_body(state):
            y, r, key, step = state
            key, subkey = jax.random.split(key)
            if sketch == "rows":
                idx = jax.random.choice(subkey, m, (k,), replace=False, p=probs)
                P_rows = P[idx]
                gram, Sr = P_rows[:, idx], r[idx]
            else:
                G = jax.random.normal(subkey, (k, m), dtype)
                P_rows = G @ P
                gram, Sr = P_rows @ G.T, G @ r
            c = _shifted_gram_solve(gram, Sr)
            c = jnp.where(jnp.all(jnp.isfinite(c)), c, jnp.nan)
            y = y.at[idx].add(c) if sketch == "rows" else y + G.T @ c
            return y, r - P_rows.T @ c, key, step + 1

        init = (jnp.zeros(m, dtype), residual(x0_flat), key, jnp.asarray(0, jnp.int32))
        y, _, _, steps = while_loop(cond, gram_body, init, max_steps=max_steps)
        x = x0_flat - A_dense.T @ y
        r = residual(x)
    else:
        init = (x0_flat, residual(x0_flat), key, jnp.asarray(0, jnp.int32))
        x, r, _, steps = while_loop(cond, body, init, max_steps=max_steps)
    res_norm = jnp.linalg.norm(r)
    converged = jnp.isfinite(res_norm) & (res_norm <= tol)
    info = SketchAndProjectInfo(num_steps=steps, residual_norm=res_norm, converged=converged)
    return problem.unravel_x(x), info
