"""Quasi-Newton minimizers with a strong-Wolfe line search: `LBFGS` (limited memory, any
pytree) and `BFGS` (dense inverse-Hessian approximation on the flattened parameters).

Both share one step: take d = −Hₖ gₖ from the current inverse-Hessian approximation, search
along it with `zoom_wolfe`, then update Hₖ with the pair sₖ = xₖ₊₁ − xₖ, yₖ = gₖ₊₁ − gₖ unless
the curvature sₖᵀyₖ is too small to keep Hₖ positive definite. When d is not a descent
direction, or the search along it fails, the memory is discarded and the step is retried from
steepest descent; only a failure from steepest descent ends the solve with
`RESULTS.line_search_failed`.

Success needs, besides the shared tests of `jaxopt2/_stopping.py`, the distance to x* that the
gradient implies, ‖gₖ‖₂/μ̂ ≤ rtol·max(‖xₖ‖∞, 1), with μ̂ the least curvature sᵀy/sᵀs of the last
`CURVATURE_WINDOW` accepted pairs (‖x − x*‖₂ ≤ ‖g‖₂/μ for μ-strongly convex f, and μ̂ ≥ μ
estimates μ from the directions the steps explored). The secant estimate of the shared rule
reads only the last step's curvature, which the model's own steps keep large: on curvatures
1 … 1e-10 in float32 LBFGS reported `successful` a unit from x*.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax import lax

from .._base import AbstractMinimizer, Counts, Iterate
from .._linesearch import cauchy_curvature, zoom_wolfe
from .._results import RESULTS
from .._stopping import (
    CURVATURE_WINDOW,
    hessian_products_available,
    secant_distance,
    secant_window,
)
from .._tree import (
    ravel,
    result_dtype,
    tree_axpy,
    tree_dot,
    tree_inf_norm,
    tree_neg,
    tree_norm,
    tree_scale,
    tree_sub,
    tree_where,
)
from .._validate import (
    check_budget,
    check_line_search,
    check_tolerances,
    check_unit_interval,
    renamed_fields,
)


class _QNState(eqx.Module):
    memory: Any
    # True when the memory holds no usable curvature: the next step is steepest descent.
    empty: jax.Array
    # The curvatures sᵀy/sᵀs of the last CURVATURE_WINDOW accepted pairs (inf: no pair yet),
    # a ring buffer, and ‖g‖₂ over their least: the distance to x* the gradient implies.
    curvatures: jax.Array
    error: jax.Array
    # The trial length of the next steepest-descent step: the Cauchy step 1/q along −g at x₀,
    # then sᵀs/sᵀy of the newest accepted pair. A trial of 1/‖g‖∞ has the units of x·f/g: on
    # 1e8·f at its minimizer in float32 (‖g‖ of round-off) it flew 10⁶ times too far, and
    # the search accepted a point f's round-off hid, 3e-4 away (then 1,000 steps back).
    sd_trial: jax.Array
    pending: Counts  # the evaluations of `init`, reported with the first step


def _row(a, i):
    """a[i] for an index known to be in range (no normalisation of negative indices)."""
    return lax.dynamic_index_in_dim(a, i, 0, keepdims=False)


def _safe_div(a, b):
    return a / jnp.where(b == 0, jnp.ones_like(b), b)


class _AbstractQuasiNewton(AbstractMinimizer):
    """The step shared by LBFGS and BFGS; subclasses say how the inverse-Hessian approximation
    is stored, applied and updated."""

    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float]
    c1: eqx.AbstractVar[float]
    c2: eqx.AbstractVar[float]
    max_backtracks: eqx.AbstractVar[int]

    # superlinear only once the model has learnt the curvature: hundreds of steps on
    # ill-conditioned problems (`_base.py`)
    default_max_steps: ClassVar[int] = 1000
    # ‖g‖₂/μ̂ (`error_estimate`) must pass as well as the shared estimates, not instead
    error_estimate_confirms: ClassVar[bool] = True

    def __check_init__(self):
        # run for LBFGS and BFGS alike (equinox calls every __check_init__ in the MRO)
        check_tolerances(self)
        check_line_search(self)
        # c2 < c1 is allowed: a tiny c2 emulates an exact line search
        check_unit_interval("c2", self.c2)

    @abc.abstractmethod
    def _init_memory(self, params, dtype) -> Any:
        """The empty memory (fixed shapes, so later steps never recompile)."""

    @abc.abstractmethod
    def _apply(self, memory, grad) -> Any:
        """The direction −H·grad (only used when the memory is not empty)."""

    @abc.abstractmethod
    def _update(self, memory, s, y, sy, yy, accept, empty) -> Any:
        """Add the pair (s, y) when `accept`; when `empty`, start from a fresh memory."""

    def init(self, fn, iterate: Iterate, args) -> _QNState:
        dtype = result_dtype(iterate.params)
        memory = self._init_memory(iterate.params, dtype)
        inf = jnp.asarray(jnp.inf, dtype)
        q, pending = cauchy_curvature(fn, iterate, args,
                                      hessian_products_available(fn, iterate.params, args))
        # no curvature measured (q ≤ 0): the unit-length trial of `step`, for the search to cut
        trial = jnp.where((q > 0) & jnp.isfinite(q), 1 / jnp.where(q > 0, q, 1), jnp.inf)
        return _QNState(memory, jnp.array(True), jnp.full(CURVATURE_WINDOW, inf), inf,
                        trial.astype(dtype), pending)

    def step(self, fn, iterate: Iterate, args, state: _QNState):
        g = iterate.grad
        dtype = result_dtype(iterate.params)
        qn_dir = self._apply(state.memory, g)
        slope = tree_dot(g, qn_dir)
        use_qn = ~state.empty & (slope < 0) & jnp.isfinite(slope)
        direction = tree_where(use_qn, qn_dir, tree_neg(g))
        # Steepest descent has no scale: a step measured along it (`_QNState.sd_trial`), or
        # else a trial step about unit length.
        sd_step = jnp.where(jnp.isfinite(state.sd_trial), state.sd_trial,
                            jnp.minimum(1.0, _safe_div(1.0, tree_inf_norm(g))))
        init_step = jnp.where(use_qn, 1.0, sd_step).astype(dtype)
        ls = zoom_wolfe(fn, iterate, direction, args, init_step, c1=self.c1, c2=self.c2,
                        max_trials=self.max_backtracks)
        new = ls.iterate

        s = tree_sub(new.params, iterate.params)
        y = tree_sub(new.grad, g)
        sy = tree_dot(s, y).astype(dtype)
        yy = tree_dot(y, y).astype(dtype)
        # Positive curvature keeps H positive definite; Wolfe guarantees it in exact
        # arithmetic, rounding does not, so skip pairs with relatively tiny sᵀy.
        threshold = jnp.finfo(dtype).eps * tree_norm(s) * tree_norm(y)
        accept = ls.ok & jnp.isfinite(sy) & jnp.isfinite(yy) & (sy > threshold)
        # Steepest descent (chosen, or forced by a bad direction) starts a fresh memory.
        empty = ~use_qn
        memory = self._update(state.memory, s, y, sy, yy, accept, empty)
        # A failed search from a quasi-Newton direction only discards the memory: the next
        # step retries from steepest descent at the same point.
        new_empty = jnp.where(ls.ok, empty & ~accept, True)
        result = RESULTS.where(ls.ok | use_qn, RESULTS.successful, RESULTS.line_search_failed)
        # The newest accepted pair's curvature replaces the oldest in the window.
        ss = tree_dot(s, s).astype(dtype)
        curvatures = secant_window(state.curvatures, sy, ss, accept)
        error = secant_distance(curvatures, tree_norm(new.grad).astype(dtype))
        sd_trial = jnp.where(accept, _safe_div(ss, sy), state.sd_trial).astype(dtype)
        return (new, _QNState(memory, new_empty, curvatures, error, sd_trial, Counts()),
                ls.counts + state.pending, result)

    def error_estimate(self, state: _QNState):
        return state.error


class _LBFGSMemory(eqx.Module):
    s: Any  # pytree like params, each leaf with a leading `history` axis
    y: Any
    rho: jax.Array  # 1 / sᵢᵀyᵢ
    head: jax.Array  # slot the next pair goes into
    count: jax.Array  # number of valid pairs
    gamma: jax.Array  # initial scaling sᵀy / yᵀy from the newest pair


@renamed_fields(max_linesearch_steps="max_backtracks")
class LBFGS(_AbstractQuasiNewton):
    """Limited-memory BFGS with a strong-Wolfe line search.

    The direction is d = −Hₖ gₖ, with Hₖ the BFGS inverse-Hessian approximation built from
    the last `history` pairs sᵢ = xᵢ₊₁ − xᵢ, yᵢ = gᵢ₊₁ − gᵢ over H⁰ = γI, γ = sᵀy / yᵀy of the
    newest pair, applied by the two-loop recursion in O(history · n) (Nocedal & Wright,
    Numerical Optimization, 2nd ed., Alg. 7.4; Liu & Nocedal 1989). The step length comes from
    `zoom_wolfe`, trying t = 1 first; the first step (and any restart) is steepest descent,
    first with the Cauchy step 1/q along −g (q = uᵀ∇²f(x₀)u, u = g/‖g‖₂: one Hessian-vector
    product, or a gradient difference where f has none), after a restart with sᵀs/sᵀy of the
    newest accepted pair. Pairs with sᵀy ≤ eps·‖s‖‖y‖ are skipped.

    Use it for smooth unconstrained problems of any size when Hessian-vector products are
    unavailable or too costly; it is the default most users of the old jaxopt expect. The
    (s, y) pairs are stored leaf by leaf as pytrees with a leading `history` axis, so params
    are never flattened and every leaf keeps its dtype.

    - `history`: number of (s, y) pairs kept (memory cost 2·history·n).
    - `c1`, `c2`: sufficient-decrease and curvature constants of the strong Wolfe conditions.
    - `max_backtracks`: trials per line search (each one value and gradient).

    ```python
    import jax.numpy as jnp, jaxopt2
    fun = lambda p, a: jnp.sum((p["w"] - a) ** 2) + jnp.sum(p["w"] ** 4) + p["b"] ** 2
    params0 = {"w": jnp.zeros(3), "b": jnp.ones(())}
    sol = jaxopt2.minimize(fun, params0, jnp.arange(3.0), solver=jaxopt2.LBFGS())
    ```
    """

    rtol: float | None = None
    atol: float = 0.0
    history: int = 10
    c1: float = 1e-4
    c2: float = 0.9
    max_backtracks: int = 30

    def __check_init__(self):
        check_budget("history", self.history)

    def _init_memory(self, params, dtype):
        buf = jtu.tree_map(lambda p: jnp.zeros((self.history,) + p.shape, p.dtype), params)
        return _LBFGSMemory(s=buf, y=buf, rho=jnp.zeros(self.history, dtype),
                            head=jnp.zeros((), jnp.int32), count=jnp.zeros((), jnp.int32),
                            gamma=jnp.ones((), dtype))

    def _apply(self, memory: _LBFGSMemory, grad):
        m = self.history
        dtype = memory.rho.dtype

        def pair(i, valid):
            # `i` is in [0, m) by construction: read with `lax` directly, without the index
            # normalisation and bounds handling of `a[i]` (issue 20: a smaller program).
            s_i = jtu.tree_map(lambda a: _row(a, i), memory.s)
            y_i = jtu.tree_map(lambda a: _row(a, i), memory.y)
            return s_i, y_i, _row(memory.rho, i), valid

        def newest_first(q, ij):
            s_i, y_i, rho_i, valid = pair(*ij)
            alpha = jnp.where(valid, rho_i * tree_dot(s_i, q).astype(dtype), 0.0)
            return tree_axpy(-alpha, y_i, q), alpha

        def oldest_first(r, ij_alpha):
            i, ok, alpha = ij_alpha
            s_i, y_i, rho_i, valid = pair(i, ok)
            beta = rho_i * tree_dot(y_i, r).astype(dtype)
            return tree_axpy(jnp.where(valid, alpha - beta, 0.0), s_i, r), None

        # The pairs newest first: their rows of the ring buffer, computed once for both loops,
        # and whether each is filled (the j-th newest exists when j < count).
        js = jnp.arange(m)
        rows = (memory.head - 1 - js) % m
        filled = js < memory.count
        q, alphas = lax.scan(newest_first, grad, (rows, filled))
        r = tree_scale(memory.gamma, q)
        r, _ = lax.scan(oldest_first, r, (rows, filled, alphas), reverse=True)
        return tree_neg(r)

    def _update(self, memory: _LBFGSMemory, s, y, sy, yy, accept, empty):
        head = jnp.where(empty, 0, memory.head)
        count = jnp.where(empty, 0, memory.count)

        def put(buf, v):
            return lax.dynamic_update_index_in_dim(
                buf, jnp.where(accept, v, _row(buf, head)).astype(buf.dtype), head, 0)

        rho = put(memory.rho, _safe_div(1.0, sy))
        return _LBFGSMemory(
            s=jtu.tree_map(put, memory.s, s),
            y=jtu.tree_map(put, memory.y, y),
            rho=rho,
            head=jnp.where(accept, (head + 1) % self.history, head),
            count=jnp.where(accept, jnp.minimum(count + 1, self.history), count),
            gamma=jnp.where(accept, _safe_div(sy, yy), memory.gamma),
        )


@renamed_fields(max_linesearch_steps="max_backtracks")
class BFGS(_AbstractQuasiNewton):
    """BFGS with a dense inverse-Hessian approximation and a strong-Wolfe line search.

    Keeps Hₖ ≈ ∇²f(xₖ)⁻¹ as an n × n matrix over the flattened parameters
    (`jax.flatten_util.ravel_pytree`; mixed-dtype leaves are promoted for the matrix and cast
    back for the step) and updates it by the rank-two inverse update, with ρ = 1/yᵀs,

        Hₖ₊₁ = (I − ρ s yᵀ) Hₖ (I − ρ y sᵀ) + ρ s sᵀ,

    expanded so it costs O(n²) per step (no solves, no inversions). Before the first update
    H₀ = (yᵀs / yᵀy) I (Nocedal & Wright, Numerical Optimization, 2nd ed., Alg. 6.1 and
    eq. 6.20). With exact line searches it finds the minimizer of an n-dimensional quadratic in
    n steps, and Hₙ is then the exact inverse Hessian.

    Use it for small and medium problems (n up to a few thousand) where n² memory is cheap and
    the full curvature model pays off; use `LBFGS` beyond that. Fields as for `LBFGS`.

    ```python
    import jax.numpy as jnp, jaxopt2
    fun = lambda x, a: jnp.sum((x - a) ** 2) + jnp.sum(x ** 4)
    sol = jaxopt2.minimize(fun, jnp.zeros(3), jnp.arange(3.0), solver=jaxopt2.BFGS())
    ```
    """

    forms_dense_matrix: ClassVar[bool] = True  # the n×n inverse Hessian

    rtol: float | None = None
    atol: float = 0.0
    c1: float = 1e-4
    c2: float = 0.9
    max_backtracks: int = 30

    def _init_memory(self, params, dtype):
        flat, _ = ravel(params)
        return jnp.eye(flat.size, dtype=flat.dtype)

    def _apply(self, memory, grad):
        flat, unravel = ravel(grad)
        return unravel(-(memory @ flat.astype(memory.dtype)))

    def _update(self, memory, s, y, sy, yy, accept, empty):
        dtype = memory.dtype
        s = ravel(s)[0].astype(dtype)
        y = ravel(y)[0].astype(dtype)
        sy, yy = sy.astype(dtype), yy.astype(dtype)
        eye = jnp.eye(s.size, dtype=dtype)
        h = jnp.where(empty, _safe_div(sy, yy) * eye, memory)
        rho = _safe_div(1.0, sy)
        hy = h @ y
        # (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ multiplied out, so no n × n products.
        new = (h - rho * (jnp.outer(hy, s) + jnp.outer(s, hy))
               + (rho * rho * jnp.dot(y, hy) + rho) * jnp.outer(s, s))
        return jnp.where(accept, new, memory)
