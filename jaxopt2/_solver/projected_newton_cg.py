"""`ProjectedNewtonCG`: truncated Newton for bound constraints l ≤ x ≤ u (Bertsekas'
projected Newton with an ε-active set, the Hessian matrix-free, preconditioned CG on the free
variables).

One step from x with gradient g:

1. the ε-active set A = {i : xᵢ − lᵢ ≤ ε and gᵢ > 0, or uᵢ − xᵢ ≤ ε and gᵢ < 0} with
   ε = min(ε₀, ‖x − P(x − g)‖∞): the variables at (or within ε of) a bound that the gradient
   pushes outward. Taking ε > 0 rather than only the exactly active set is what lets whole
   groups of bounds become active in one step (Bertsekas 1982);
2. the free variables F get a truncated Newton direction: preconditioned CG on
   ∇²f_FF p_F = −g_F with Hessian-vector products, stopped at relative residual
   η = min(½, √(‖G(x)‖/‖G(x₀)‖)) (superlinear; Dembo & Steihaug 1983) or on negative
   curvature (then the last CG iterate, or the preconditioned −g_F at the first). The
   preconditioner (`_free_block.py`) is
   - while |F| > `dense_max`: Jacobi, diag(∇²f)_F estimated from `jacobi_probes` products
     with signed, coloured probes on F (one batched product);
   - once |F| ≤ `dense_max`: the block ∇²f_FF itself, formed by one batched product with the
     unit vectors of F and factored by Cholesky, so that CG ends after one or two products.
     The block is kept while F only shrinks and CG keeps converging in a few products, and
     formed anew otherwise;
3. the active variables get d_A = −g_A, which the projection sends to their bounds;
4. Armijo backtracking along the projection arc x(t) = P(x + t d) from t = 1.

Near a nondegenerate solution the active set is identified in finitely many steps and the
iteration becomes Newton's method on the free variables: quadratic convergence, whatever the
conditioning, where L-BFGS-B's curvature pairs need many steps to learn an ill-conditioned
Hessian.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._base import AbstractMinimizer, Counts, Iterate
from .._composite import box_search, flat_bounds
from .._free_block import (
    FreeBlock,
    block_preconditioner,
    coloured_diagonal,
    extend_block,
    extendable,
    form_block,
    user_block,
)
from .._linalg import truncated_cg
from .._results import RESULTS
from .._tree import ravel, result_dtype
from .._validate import (
    check_budget,
    check_hessian_block,
    check_line_search,
    check_positive,
    check_tolerances,
)

# free indices a kept block may gain per step by one batched product with this many unit
# vectors (instead of a new block: on the NNLS benchmark F gains a few indices per step)
_EXTEND = 16
# the unit vectors of a block form a (size × n) batch: keep it under this many entries
_BLOCK_ENTRIES = 2**22


class _PNCGState(eqx.Module):
    pg_norm0: jax.Array  # ‖x₀ − P(x₀ − g₀)‖∞, for the forcing term
    theta: jax.Array  # curvature scale yᵀy / sᵀy of the last step, for the stopping rule
    cg_steps: jax.Array  # CG iterations of the last step (diagnostic)
    block: FreeBlock  # the last dense block ∇²f_FF (kept while it still preconditions well)


def active_set(x, g, lo, hi, eps):
    """The ε-active set: within ε of a bound with the gradient pointing out of the box."""
    return ((x - lo <= eps) & (g > 0)) | ((hi - x <= eps) & (g < 0))


class ProjectedNewtonCG(AbstractMinimizer):
    """Projected truncated Newton for bound-constrained minimization,

        minimize f(x)  subject to  l ≤ x ≤ u  (elementwise; ±inf allowed),

    with the bounds given to `jaxopt2.minimize(..., bounds=(lower, upper))`.

    Each step splits the variables into an ε-active set A (within ε = min(ε₀, ‖x − P(x − g)‖∞)
    of a bound, gradient pointing out) and the free rest F; solves ∇²f_FF p = −g_F by
    preconditioned CG with Hessian-vector products (truncated at relative residual
    min(½, √(‖G‖/‖G₀‖)) with G the projected gradient, or at negative curvature), sets
    d_A = −g_A, and backtracks along the projection arc P(x + t d) with the Armijo rule
    f(x(t)) ≤ f(x) + c₁gᵀ(x(t) − x). It stops on the projected gradient x − P(x − ∇f(x)),
    zero exactly at the KKT points.

    The preconditioner: Jacobi while many variables are free (the diagonal of ∇²f_FF from
    `jacobi_probes` signed, coloured probe products, one batched product), and once at most
    `dense_max` are free, the block ∇²f_FF itself from one batched product with the unit
    vectors of F (or from `hessian_block`, the problem's own formula for it), factored by
    Cholesky and kept while F only shrinks. A batched product of
    k vectors costs far less than k sequential ones (a matrix–matrix product), so for
    |F| ≤ 128 a block costs about as much as 20 sequential products on a dense data matrix,
    and CG then ends in one or two. All products count in `stats["num_hvp"]`.

    Use it for smooth bound-constrained problems where Hessian-vector products are affordable,
    above all ill-conditioned ones (e.g. NNLS with correlated or badly scaled columns,
    logistic regression on badly scaled features): once the active set settles it is
    Newton's method on the free variables. `LBFGSB` needs only gradients. Params of any
    pytree are flattened; a start outside the bounds is projected onto them.

    - `active_eps`: ε₀, the widest margin within which a bound counts as active.
    - `cg_max_steps`: Hessian-vector products per CG solve (None: the number of variables).
    - `jacobi_probes`: probe products for the Jacobi preconditioner (0: plain CG while
      |F| > `dense_max`).
    - `dense_max`: the largest free set given the dense block (a static size: the block is
      `dense_max` × `dense_max`, padded; 0: never).
    - `hessian_block`: optional `(params, args, index) -> ∇²f[index][:, index]` (`index`: a
      sorted int vector of positions in `ravel_pytree(params)`, of static length
      `dense_max`), the dense block from the problem's structure instead of `dense_max`
      Hessian-vector products: for f = ½‖Ax − b‖² it is `AT[index] @ AT[index].T` with
      `AT = A.T` stored once (n·|F|² work against n·d·|F| for the products; measured 3× less
      on the 5,000 × 1,000 NNLS benchmark). It is only CG's preconditioner, and CG still
      uses the true products: a wrong block slows the solve, it cannot change the answer.
    - `c1`: Armijo constant; `max_backtracks`: trials per line search.

    References: Bertsekas, "Projected Newton methods for optimization problems with simple
    constraints", SIAM J. Control Optim. 20 (1982); Lin & Moré, "Newton's method for large
    bound-constrained optimization problems", SIAM J. Optim. 9 (1999).

    ```python
    import jax.numpy as jnp, jaxopt2
    A = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]); b = jnp.array([1.0, -1.0, 1.0])
    nnls = lambda x, a: 0.5 * jnp.sum((a[0] @ x - a[1]) ** 2)
    sol = jaxopt2.minimize(nnls, jnp.ones(2), (A, b), solver=jaxopt2.ProjectedNewtonCG(),
                           bounds=(0.0, None))
    ```
    """

    rtol: float | None = None
    atol: float = 0.0
    active_eps: float = 1e-3
    cg_max_steps: int | None = None
    jacobi_probes: int = 8
    dense_max: int = 256
    hessian_block: Callable | None = eqx.field(static=True, default=None)
    c1: float = 1e-4
    max_backtracks: int = 30
    constraint: Any = None  # a `jaxopt2._composite.Composite` with the bounds, set by minimize

    supports_bounds: ClassVar[bool] = True

    def __check_init__(self):
        check_tolerances(self)
        check_line_search(self)
        check_positive("active_eps", self.active_eps)
        check_budget("cg_max_steps", self.cg_max_steps, allow_none=True)
        check_hessian_block("ProjectedNewtonCG", self.hessian_block)
        for name in ("jacobi_probes", "dense_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int; got {value!r}.")

    def stationarity_scale(self, state: _PNCGState):
        """1/θ with θ the secant curvature of the last step, so that the projected gradient
        (x − P(x − g/θ))·θ is measured in the gradient's units (`_composite.py`)."""
        return 1.0 / state.theta

    def _projected_gradient(self, x, g, lo, hi):
        return x - jnp.clip(x - g, lo, hi)

    def _block_size(self, n: int) -> int:
        return min(self.dense_max, n, _BLOCK_ENTRIES // n)

    def init(self, fn, iterate: Iterate, args) -> _PNCGState:
        x, _ = ravel(iterate.params)
        g = ravel(iterate.grad)[0].astype(x.dtype)
        lo, hi = flat_bounds(self.constraint, x)
        pg0 = jnp.max(jnp.abs(self._projected_gradient(x, g, lo, hi)), initial=0.0)
        dtype = result_dtype(iterate.params)
        return _PNCGState(pg0.astype(dtype), jnp.ones((), dtype), jnp.zeros((), jnp.int32),
                          FreeBlock.empty(self._block_size(x.shape[0]), x.shape[0], x.dtype))

    def step(self, fn, iterate: Iterate, args, state: _PNCGState):
        x, unravel = ravel(iterate.params)
        n = x.shape[0]
        g = ravel(iterate.grad)[0].astype(x.dtype)
        lo, hi = flat_bounds(self.constraint, x)
        pg = jnp.max(jnp.abs(self._projected_gradient(x, g, lo, hi)), initial=0.0)
        eps = jnp.minimum(self.active_eps, pg)
        free = ~active_set(x, g, lo, hi, eps)

        grad_fn = jax.grad(lambda p: fn(p, args)[0])

        def hvp(v):
            out = jax.jvp(grad_fn, (iterate.params,), (unravel(v),))[1]
            return ravel(out)[0].astype(x.dtype)

        def reduced(v):
            return jnp.where(free, hvp(jnp.where(free, v, 0.0)), 0.0)

        ratio = pg / jnp.where(state.pg_norm0 > 0, state.pg_norm0, 1.0)
        eta = jnp.minimum(0.5, jnp.sqrt(ratio)).astype(x.dtype)
        max_cg = n if self.cg_max_steps is None else self.cg_max_steps
        rhs = jnp.where(free, -g, 0.0)

        def cg(precond):
            return truncated_cg(reduced, rhs, rtol=eta, max_iters=max_cg, precond=precond)

        def jacobi_solve():
            if self.jacobi_probes == 0:
                return cg(None), state.block, jnp.int32(0)
            diag = coloured_diagonal(hvp, free, self.jacobi_probes, x.dtype)
            top = jnp.max(jnp.abs(diag))
            ok = jnp.isfinite(top) & (top > 0)
            inverse = jnp.where(free & ok, 1 / jnp.maximum(jnp.abs(diag), 1e-6 * top), 1.0)
            return (cg(lambda r: inverse * r), state.block.invalidated(),
                    jnp.int32(self.jacobi_probes))

        size = self._block_size(n)
        block_fn = None if self.hessian_block is None else (
            lambda index: user_block(self.hessian_block, iterate.params, args, index, x.dtype,
                                     "ProjectedNewtonCG"))

        def block_solve():
            add = min(_EXTEND, size)
            which = jnp.where(state.block.covers(free), 0,
                              jnp.where(extendable(state.block, free, add), 1, 2))
            block, formed = jax.lax.switch(which, [
                lambda: (state.block, jnp.int32(0)),
                lambda: (extend_block(state.block, hvp, free, add, x.dtype), jnp.int32(add)),
                lambda: (form_block(hvp, free, size, x.dtype, block_fn),
                         jnp.int32(size if block_fn is None else 0))])
            precond, factored = block_preconditioner(block, free)
            res = cg(precond)
            # keep the block while it preconditions well: CG done in a few products
            keep = factored & (res.num_iters <= 4)
            return res, eqx.tree_at(lambda b: b.ok, block, keep), formed

        if size == 0:
            res, block, extra = jacobi_solve()
        else:
            res, block, extra = jax.lax.cond(jnp.sum(free) <= size, block_solve, jacobi_solve)

        d = jnp.where(free, res.x, -g)
        ls, s, y = box_search(self, fn, iterate, args, x, g, lo, hi, d, 1.0)

        def gradient_step():
            # CG on a singular Hessian with the gradient outside its range (HS 9's
            # penalty subproblem at x = 0: a rank-one penalty Hessian) returns a huge step
            # that no backtracking rescues: take a projected-gradient step of length 1/θ
            # instead, θ the secant curvature (1 before the first pair).
            ls2, s2, y2 = box_search(self, fn, iterate, args, x, g, lo, hi, -g / state.theta,
                                     1.0)
            return eqx.tree_at(lambda r: r.counts, ls2, ls2.counts + ls.counts), s2, y2

        ls, s, y = jax.lax.cond(ls.ok, lambda: (ls, s, y), gradient_step)
        sy, yy = s @ y, y @ y
        good = ls.ok & (sy > 0) & jnp.isfinite(yy)
        theta = jnp.where(good, yy / jnp.where(good, sy, 1.0), state.theta)
        result = RESULTS.where(ls.ok, RESULTS.successful, RESULTS.line_search_failed)
        counts = ls.counts + Counts.of(hvp=res.num_iters + extra)
        return ls.iterate, _PNCGState(state.pg_norm0, theta.astype(state.theta.dtype),
                                      res.num_iters, block), counts, result
