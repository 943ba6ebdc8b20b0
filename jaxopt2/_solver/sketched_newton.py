"""Newton's method with a randomly sketched Hessian for finite sums: the Newton sketch and
subsampled Newton."""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._base import Counts, Iterate
from .._prng import as_key
from .._random_newton import AbstractRandomNewton, RandomNewtonState, damped_newton_step
from .._sqrt_hessian import add_rest, check_b, check_sqrt_hessian
from .._tree import ravel
from .._xla_cpu import gram
from ..distributed import explicit_spec, take_rows
from ..sketch._operators import (
    gaussian_sketch,
    leverage_scores,
    row_sampling_sketch,
    sparse_sign_pattern,
    srht_sketch,
)

SKETCHES = ("uniform", "leverage", "gaussian", "srht", "sparse_sign")
# Nonzeros per column of the sparse sign sketch (Martinsson & Tropp 2020 recommend s ≈ 8).
_SPARSE_NONZEROS = 8


def subsample_args(args, indices):
    """Subsampled Newton's default batch: `indices` taken along axis 0 of every array leaf of
    `args` with at least one dimension; scalars (hyperparameters such as a ridge weight) pass
    unchanged. Rows of data sharded over Explicit mesh axes come back replicated (`take_rows`:
    m rows, never the whole data)."""
    return jtu.tree_map(lambda a: take_rows(a, indices) if jnp.ndim(a) >= 1 else a, args)


def _num_examples(args) -> int:
    sizes = {jnp.shape(a)[0] for a in jtu.tree_leaves(args) if jnp.ndim(a) >= 1}
    if len(sizes) != 1:
        what = "no array with a leading axis" if not sizes else f"leading sizes {sorted(sizes)}"
        raise ValueError(
            "SketchedNewton without `sqrt_hessian` subsamples the examples in `args`: every "
            "array leaf of `args` must hold one row per example along axis 0 (scalars pass "
            f"unchanged), but `args` has {what}. Pass `batch_fn=(args, key, m) -> args` "
            "to say how to draw a random batch of m examples, or `sqrt_hessian=` for the "
            "Newton sketch.")
    return sizes.pop()


class _WithBatch(eqx.Module):
    """The closure-converted objective on the full data plus its conversion on a subsample's
    shapes (a converted function only accepts the shapes it was traced with)."""

    full: Callable
    batch: Callable

    def __call__(self, params, args):
        return self.full(params, args)


class SketchedNewton(AbstractRandomNewton):
    """Newton's method with a randomized Hessian approximation for finite sums
    f(x) = (1/n) Σᵢ ℓᵢ(x) + r(x) with many examples n and moderate dimension d: the Newton
    sketch and subsampled Newton.

    Each step solves H̃ₖ pₖ = −∇f(xₖ) with a d × d approximation H̃ₖ built from a fresh random
    sketch of the examples, by Cholesky (damped when H̃ₖ is not positive definite, as in
    `Newton`), then takes xₖ₊₁ = xₖ + tₖpₖ with Armijo backtracking from tₖ = 1. The gradient
    is exact, so the iteration converges to the true minimizer; the sketch only decides how
    fast (linearly, at a rate that improves with the sketch size m, and superlinearly as
    m → n). Where the exact Newton step costs n·d² per step to form the Hessian, the sketch
    costs m·d² plus the sketching, and a step needs only a few passes over the data, against
    the hundreds of gradients L-BFGS takes on an ill-conditioned problem.

    Two ways to give the approximation:

    - **Subsampled Newton** (default, `sqrt_hessian=None`, `sketch="uniform"`): for any `fun`
      that averages over the examples held in `args`. H̃ = ∇²f(x; S) is the exact Hessian of
      `fun` on a uniform sample S of m examples drawn with replacement (an unbiased estimate
      of ∇²f when `fun` is a mean; the regulariser enters exactly). By default every array
      leaf of `args` holds one row per example along axis 0 and scalars pass unchanged;
      `batch_fn(args, key, m) -> args` (a random batch of about m examples, in the form
      `fun` takes) overrides that. The m examples are drawn without replacement (with
      replacement, m = n draws hold only about 63% of the distinct rows). Costs d
      Hessian-vector products on the m sampled examples, and no pass over the full data.
      Data closed over in `fun` instead of passed in `args` is never subsampled (every
      "sampled" Hessian is then the full one); `args` with fewer rows than a `sketch_size`
      given is refused with a ValueError for that reason.
    - **Newton sketch** (`sqrt_hessian` given): `sqrt_hessian(params, args) -> (B, R)` with
      ∇²f(x) = BᵀB + R, B an n × d array (one row per example: for a generalized linear model
      f = (1/n)Σ φ(aᵢᵀx, yᵢ) + r(x), B = diag(√(φ''(Ax)/n)) A) and R the d × d Hessian of the
      rest (a matrix, a scalar meaning R·I, or None for 0). Then H̃ = (SB)ᵀ(SB) + R for a
      sketch S of m rows with E[SᵀS] = I (Pilanci & Wainwright 2017): `"gaussian"`,
      `"srht"` (randomized DCT, O(nd log n)), `"sparse_sign"` (8 nonzeros a column,
      O(nd)), `"uniform"` rows or `"leverage"` rows (sampled by approximate leverage scores
      of B, which embeds range(B) with m = O(d log d) rows even for coherent data).

    **Arguments:** `sketch_size` m (default max(10·d, 100), where that is at most a tenth of
    the n examples; otherwise the sketch would save less per step than its extra steps cost,
    so each step uses the exact Hessian ∇²f (BᵀB + R for the Newton sketch) and the solver
    is Newton's method, the same iterates for every key; larger is slower per step and
    faster per iteration. A `sketch_size` of at least n also gives the exact Hessian),
    `sketch`, `sqrt_hessian`, `batch_fn`, `key` (a
    `jax.random.key`, or a legacy `jax.random.PRNGKey`; split once per step and kept in the
    state, so solves are deterministic; `seed`, an int, default 0, is the shortcut used when
    no key is given), `rtol`/`atol` (stopping test on the exact gradient), `c1`,
    `max_backtracks`. The key is an array field, not static: to give a batch of problems
    solved under `jax.vmap` independent sketches, split a key and build the solver inside the
    vmapped function (a fixed `seed` would give every member the same sketches), e.g.
    `jax.vmap(lambda k: jaxopt2.minimize(fun, w0, (X, y), solver=SketchedNewton(key=k))
    .params)(jax.random.split(jax.random.key(0), n))`.

    Counts per step: one dense (sketched) Hessian (`num_hessian`), one `sqrt_hessian` call
    as `num_jac` (Newton sketch only), and one `num_grad`: the unit step is tried with value
    and gradient together, since it is nearly always accepted; backtracking (`num_fun`) only
    when it is not. The
    parameters are flattened and H̃ is dense, so d should stay in the thousands.

    References: M. Pilanci and M. J. Wainwright, "Newton sketch: a near linear-time
    optimization algorithm with linear-quadratic convergence", SIAM J. Optim. 27 (2017);
    F. Roosta-Khorasani and M. W. Mahoney, "Sub-sampled Newton methods", Math. Program. 174
    (2019); R. Bollapragada, R. Byrd and J. Nocedal, "Exact and inexact subsampled Newton
    methods for optimization", IMA J. Numer. Anal. 39 (2019).

    ```python
    import jax, jax.numpy as jnp, jaxopt2
    X = jax.random.normal(jax.random.key(0), (10_000, 20))
    y = (X[:, 0] > 0).astype(X.dtype)

    def fun(w, args):  # mean logistic loss + ridge: a mean over the rows of X and y
        X, y = args
        z = X @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 1e-3 * w @ w

    sol = jaxopt2.minimize(fun, jnp.zeros(20), (X, y), solver=jaxopt2.SketchedNewton())
    ```
    """

    sketch_size: int | None = eqx.field(static=True, default=None)
    sketch: str = eqx.field(static=True, default="uniform")
    sqrt_hessian: Callable | None = None
    batch_fn: Callable | None = None
    # Declared here rather than in the base so that a bad key's error names this solver.
    key: jax.Array | None = eqx.field(default=None, kw_only=True,
                                      converter=lambda k: as_key(k, "SketchedNewton", batched=True))

    def __check_init__(self):
        check_sqrt_hessian(self.sqrt_hessian, "SketchedNewton")
        if self.sketch not in SKETCHES:
            raise ValueError(f"`sketch` must be one of {SKETCHES}; got {self.sketch!r}.")
        if self.sketch != "uniform" and self.sqrt_hessian is None:
            raise ValueError(
                f"sketch={self.sketch!r} is the Newton sketch, which needs the square root of "
                "the Hessian: pass `sqrt_hessian=(params, args) -> (B, R)` with "
                "∇²f = BᵀB + R, or use sketch='uniform' (subsampled Newton) for any `fun`.")
        if self.sqrt_hessian is not None and self.batch_fn is not None:
            raise ValueError("`batch_fn` is for subsampled Newton; with `sqrt_hessian` the "
                             "sketch acts on the rows of B. Pass one of them.")
        if self.sketch_size is not None and self.sketch_size < 1:
            raise ValueError(f"`sketch_size` must be a positive int; got {self.sketch_size}.")

    def convert_objective(self, fn, params0, args):
        full = eqx.filter_closure_convert(fn, params0, args)
        if self.sqrt_hessian is not None:
            return full
        d = sum(jnp.size(leaf) for leaf in jtu.tree_leaves(params0))
        if self.batch_fn is None and self._sample_size(_num_examples(args), d) is None:
            return full  # the exact Hessian: `fun` only ever sees the full data
        batch = jax.eval_shape(lambda a: self._draw_batch(a, jax.random.key(0), d), args)
        return _WithBatch(full, eqx.filter_closure_convert(fn, params0, batch))

    def _draw_batch(self, args, key, d: int):
        if self.batch_fn is not None:
            return self.batch_fn(args, key, self._size(math.inf, d))
        n = _num_examples(args)  # fails at trace time with a message that says what to fix
        m = self.sketch_size
        if m is not None and n < m:
            # Fewer "examples" than the sample asks for: `args` is not the data (e.g. the
            # bilevel pattern, data closed over in `fun` and a hyperparameter vector in
            # `args`), or the data is too small for subsampling to pay. Either way a sampled
            # Hessian would be silently wrong or pointless. (The default size falls back to
            # the exact Hessian instead, which is right whatever `args` holds.)
            raise ValueError(
                f"SketchedNewton subsamples axis 0 of the arrays in `args` as examples, but "
                f"`args` holds only {n} rows, fewer than the sample of m = {m} "
                "(sketch_size). If the data is closed over in `fun` and `args` holds "
                "hyperparameters, the subsample would be of the hyperparameters and every "
                "Hessian would use all the data: pass the data in `args` (hyperparameters "
                "as scalars or in a leaf that `batch_fn` leaves whole), or "
                "`batch_fn=(args, key, m) -> args` to draw a batch yourself. For small data "
                "leave `sketch_size` at its default (the exact Hessian), or make it smaller.")
        m = self._sample_size(n, d)
        if m is None:
            return args
        return subsample_args(args, jax.random.choice(key, n, (m,), replace=False))

    def _size(self, n: int, d: int) -> int:
        m = self.sketch_size if self.sketch_size is not None else max(10 * d, 100)
        return int(min(m, n))

    def _sample_size(self, n: int, d: int) -> int | None:
        """The number m of rows a step samples out of n, or None for the exact Hessian,
        where a sketch would not pay. A sampled Hessian costs m/n of the exact one but turns
        Newton's few quadratically convergent steps into many linear ones: on digits
        (n = 1,797, d = 65) m = 650 rows took 60 steps against Newton's 9, 17x its time,
        and with m = n drawn with replacement (the old default) 46 steps on breast cancer.
        So the default m = max(10d, 100) is used only where it is at most n/10; a
        `sketch_size` the user gave falls back at m ≥ n."""
        if self.sketch_size is None:
            m = max(10 * d, 100)
            return None if 10 * m > n else m
        return None if self.sketch_size >= n else self.sketch_size

    def step(self, fn, iterate: Iterate, args, state: RandomNewtonState):
        key, sub = jax.random.split(state.key)
        x, unravel = ravel(iterate.params)
        g, _ = ravel(iterate.grad)
        if self.sqrt_hessian is None:
            h = self._subsampled_hessian(fn, unravel, x, args, sub)
            counts = Counts.of(hessian=1)
        else:
            h = self._sketched_hessian(unravel, x, args, sub)
            counts = Counts.of(hessian=1, jac=1)
        return damped_newton_step(self, fn, iterate, args, key, h, g, unravel, counts)

    def curvature_probe(self, fn, params, args, state):
        """Subsampled Newton checks curvature on one sampled batch (an unbiased estimate of
        the Hessian, at m/n of a data pass per product) instead of the full data."""
        if self.sqrt_hessian is not None:
            return super().curvature_probe(fn, params, args, state)
        batch = self._draw_batch(args, state.key, ravel(params)[0].size)
        on_batch = fn.batch if isinstance(fn, _WithBatch) else fn
        grad = lambda p: jax.grad(lambda q: on_batch(q, batch)[0])(p)  # noqa: E731
        return lambda v: jax.jvp(grad, (params,), (v,))[1]

    def _subsampled_hessian(self, fn, unravel, x, args, key):
        batch = self._draw_batch(args, key, x.size)
        on_batch = fn.batch if isinstance(fn, _WithBatch) else fn
        return jax.hessian(lambda v: on_batch(unravel(v), batch)[0])(x).astype(x.dtype)

    def _sketched_hessian(self, unravel, x, args, key):
        d = x.size
        b, rest = self.sqrt_hessian(unravel(x), args)
        if explicit_spec(jnp.asarray(b)) is not None:
            # The sketch operators are lineax operators typed without shardings.
            raise ValueError(
                "SketchedNewton: the Newton sketch (`sqrt_hessian`) does not support B sharded "
                "over Explicit mesh axes; use a mesh with AxisType.Auto axes, or subsampled "
                "Newton (no `sqrt_hessian`), which works under both.")
        b = check_b(b, d, x.dtype, "SketchedNewton")
        m = self._sample_size(b.shape[0], d)
        # no smaller sketch to be had: BᵀB itself, cheaper than any sketch of all n rows
        sb = b if m is None else sketch_rows(self.sketch, key, b, m)
        return add_rest(gram(sb), rest, "SketchedNewton")


def sketch_rows(kind: str, key, b, m: int):
    """S B for an m × n sketch S with E[SᵀS] = I (the `jaxopt2.sketch` operators), applied to
    the columns of the n × d matrix B."""
    n = b.shape[0]
    if kind == "sparse_sign":
        # The operator's product, vmapped over d columns, would hold n·s·d values at once; one
        # segment sum per nonzero keeps the memory at one n × d term.
        rows, values = sparse_sign_pattern(key, n, m, _SPARSE_NONZEROS, b.dtype)
        out = jnp.zeros((m, b.shape[1]), b.dtype)
        for j in range(rows.shape[1]):
            out = out + jax.ops.segment_sum(values[:, j, None] * b, rows[:, j], num_segments=m)
        return out
    if kind == "leverage":
        score_key, key = jax.random.split(key)
        sketch = row_sampling_sketch(key, m, n, leverage_scores(b, score_key), dtype=b.dtype)
    else:
        make = {"uniform": row_sampling_sketch, "gaussian": gaussian_sketch,
                "srht": srht_sketch}[kind]
        sketch = make(key, m, n, dtype=b.dtype)
    return jax.vmap(sketch.mv, in_axes=1, out_axes=1)(b)
