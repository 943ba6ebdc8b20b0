"""`LBFGSB`: limited-memory BFGS for bound constraints l ≤ x ≤ u (L-BFGS-B).

One step from x with gradient g and the compact limited-memory model
B = θI − W M Wᵀ (Byrd, Nocedal & Schnabel 1994):

1. the generalized Cauchy point x_c: the first local minimizer of the quadratic model
   m(z) = gᵀ(z − x) + ½(z − x)ᵀB(z − x) along the projected steepest-descent path
   x(t) = P(x − t g), walked breakpoint by breakpoint (breakpoints sorted once, then a bounded
   loop of O(m²) updates each, so it jits and vmaps with fixed shapes);
2. subspace minimization: the variables at a bound at x_c stay fixed, the model is minimized
   exactly over the free ones (the direct primal method, a 2m × 2m solve), and the result is
   projected into the box; if the projected point is not a descent direction from x, it is
   backtracked along the segment to the box instead (Morales & Nocedal 2011);
3. Armijo backtracking from the unit step along d = x̄ − x (which stays in the box for
   t ∈ [0, 1]), every trial projected so active bounds are hit exactly;
4. the pair s = x₊ − x, y = g₊ − g enters the memory unless sᵀy ≤ eps·yᵀy.

The bounds come from `constraint` (a `jaxopt2._composite.Composite`, set by `minimize(...,
bounds=...)`); without one the solver is plain L-BFGS on the box ℝⁿ.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._base import AbstractMinimizer, Iterate
from .._composite import box_search, flat_bounds
from .._loops import while_loop
from .._results import RESULTS
from .._tree import ravel, result_dtype
from .._validate import check_budget, check_line_search, check_tolerances


class _LBFGSBState(eqx.Module):
    s: jax.Array  # (m, n), oldest pair first; unused rows are zero
    y: jax.Array
    valid: jax.Array  # (m,) which rows hold a pair
    theta: jax.Array  # the scaling θ = yᵀy / sᵀy of the newest pair
    empty: jax.Array  # no usable memory: B = θI with θ = 1


def compact_form(s, y, valid, theta):
    """W = [Y, θS] (n × 2m) and M = [[−D, Lᵀ], [L, θSᵀS]]⁻¹ with D = diag(sᵢᵀyᵢ) and
    L the strictly lower part of SᵀY, so that B = θI − W M Wᵀ (Byrd, Nocedal & Schnabel 1994,
    Thm 2.3). Unused slots get a unit diagonal instead of zeros, which keeps the middle matrix
    invertible; their columns of W are zero, so they do not change B."""
    m = valid.shape[0]
    sy = s @ y.T  # (sᵢᵀyⱼ)
    ss = theta * (s @ s.T)
    d = jnp.where(valid, jnp.diag(sy), 1.0)
    lower = jnp.tril(sy, -1)
    ss = ss + jnp.diag(jnp.where(valid, 0.0, 1.0))
    middle = jnp.block([[-jnp.diag(d), lower.T], [lower, ss]])
    w = jnp.concatenate([y.T, theta * s.T], axis=1)
    mat = jnp.linalg.solve(middle, jnp.eye(2 * m, dtype=middle.dtype))
    return w, mat


def cauchy_point(x, g, lo, hi, w, mat, theta):
    """The generalized Cauchy point: the first local minimizer of the model along
    x(t) = P(x − t g) (Byrd, Lu, Nocedal & Zhu 1995, Alg. CP). Returns (x_c, c) with
    c = Wᵀ(x_c − x), which the subspace minimization needs."""
    n = x.shape[0]
    dtype = x.dtype
    big = jnp.asarray(jnp.inf, dtype)
    safe_g = jnp.where(g == 0, 1.0, g)
    tb = jnp.where(g < 0, (x - hi) / safe_g, jnp.where(g > 0, (x - lo) / safe_g, big))
    tb = jnp.where(g == 0, big, tb)
    d = jnp.where(tb > 0, -g, 0.0)
    order = jnp.argsort(tb)
    p = w.T @ d
    c = jnp.zeros_like(p)
    fp = -d @ d
    fpp0 = -theta * fp
    fpp = fpp0 - p @ mat @ p
    # B is positive definite; a rounded-down f'' would send the path to the far end
    fpp = jnp.maximum(fpp, jnp.finfo(dtype).eps * fpp0)
    dt_min = jnp.where(fpp > 0, -fp / jnp.where(fpp > 0, fpp, 1.0), 0.0)

    def cond(carry):
        i, done, *_ = carry
        return (i < n) & ~done

    def body(carry):
        i, done, t_old, fp, fpp, dt_min, p, c, d, xc = carry
        b = order[i]
        t_b = tb[b]
        skip = t_b <= 0  # at a bound already, fixed from the start
        dt = t_b - t_old
        stop = ~skip & ~(dt_min >= dt) | jnp.isinf(t_b)
        move = ~skip & ~stop
        g_b, w_b = g[b], w[b]
        z_b = jnp.where(d[b] > 0, hi[b], lo[b]) - x[b]
        c_new = c + dt * p
        m_wb = mat @ w_b
        fp_new = fp + dt * fpp + g_b * g_b + theta * g_b * z_b - g_b * (m_wb @ c_new)
        fpp_new = fpp - theta * g_b * g_b - 2 * g_b * (m_wb @ p) - g_b * g_b * (m_wb @ w_b)
        fpp_new = jnp.maximum(fpp_new, jnp.finfo(dtype).eps * fpp0)
        dt_new = jnp.where(fpp_new > 0, -fp_new / jnp.where(fpp_new > 0, fpp_new, 1.0), 0.0)
        sel = lambda new, old: jnp.where(move, new, old)  # noqa: E731
        return (i + 1, stop, sel(t_b, t_old), sel(fp_new, fp), sel(fpp_new, fpp),
                sel(dt_new, dt_min), sel(p + g_b * w_b, p), sel(c_new, c),
                d.at[b].set(sel(0.0, d[b])), xc.at[b].set(sel(x[b] + z_b, xc[b])))

    init = (jnp.zeros((), jnp.int32), jnp.array(False), jnp.zeros((), dtype), fp, fpp, dt_min,
            p, c, d, x)
    _, _, t_old, _, _, dt_min, p, c, d, xc = while_loop(cond, body, init, max_steps=n)
    dt_min = jnp.maximum(dt_min, 0.0)
    t = t_old + dt_min
    xc = jnp.where(d != 0, jnp.clip(x + t * d, lo, hi), xc)
    return xc, c + dt_min * p


def subspace_point(x, g, lo, hi, xc, c, w, mat, theta):
    """Minimize the model over the variables free at x_c (direct primal method, Byrd et al.
    1995 §5.1), then project into the box; if the projected point is no descent direction
    from x, backtrack along x_c + α d_u to the box instead (Morales & Nocedal 2011)."""
    free = (xc > lo) & (xc < hi)
    r = jnp.where(free, g + theta * (xc - x) - w @ (mat @ c), 0.0)
    wz = jnp.where(free[:, None], w, 0.0)
    n_mat = jnp.eye(mat.shape[0], dtype=x.dtype) - (mat @ (wz.T @ wz)) / theta
    v = jnp.linalg.solve(n_mat, mat @ (wz.T @ r))
    du = -(r + (wz @ v) / theta) / theta
    projected = jnp.clip(xc + du, lo, hi)
    # largest α ≤ 1 keeping x_c + α d_u in the box
    room = jnp.where(du > 0, (hi - xc) / jnp.where(du > 0, du, 1.0),
                     jnp.where(du < 0, (lo - xc) / jnp.where(du < 0, du, 1.0), jnp.inf))
    alpha = jnp.clip(jnp.min(jnp.where(free, room, jnp.inf)), 0.0, 1.0)
    backtracked = jnp.clip(xc + alpha * du, lo, hi)
    use_projected = g @ (projected - x) < 0
    return jnp.where(use_projected, projected, backtracked)


class LBFGSB(AbstractMinimizer):
    """L-BFGS-B: limited-memory BFGS for bound-constrained minimization,

        minimize f(x)  subject to  l ≤ x ≤ u  (elementwise; ±inf allowed),

    with the bounds given to `jaxopt2.minimize(..., bounds=(lower, upper))`.

    Each step finds the generalized Cauchy point of the compact L-BFGS model
    B = θI − W M Wᵀ along the projected steepest-descent path P(x − t g), minimizes the
    model over the variables it leaves free, projects the result into the box (Morales–Nocedal
    refinement, falling back to backtracking along the segment), and takes an Armijo
    backtracking step along d = x̄ − x (at most the unit step, so every trial is feasible).
    Pairs with sᵀy ≤ eps·yᵀy are skipped; a step whose search fails discards the memory and
    is retried from the projected gradient, and only a failure from there ends the solve with
    `RESULTS.line_search_failed`. The solve stops on the projected gradient
    x − P(x − ∇f(x)), which is zero exactly at the KKT points.

    Use it for smooth bound-constrained problems when Hessian-vector products are too costly;
    on ill-conditioned ones prefer `ProjectedNewtonCG`. Params of any pytree are flattened
    (the memory is 2·history·n numbers); a start outside the bounds is projected onto them.

    - `history`: number of (s, y) pairs kept (m).
    - `c1`: Armijo constant; `max_backtracks`: trials per line search.

    References: Byrd, Lu, Nocedal & Zhu, "A limited memory algorithm for bound constrained
    optimization", SIAM J. Sci. Comput. 16 (1995); Morales & Nocedal, "Remark on Algorithm
    778", ACM TOMS 38 (2011).

    ```python
    import jax.numpy as jnp, jaxopt2
    fun = lambda x, a: jnp.sum((x - a) ** 2)
    sol = jaxopt2.minimize(fun, jnp.zeros(3), jnp.array([-1.0, 0.5, 2.0]),
                           solver=jaxopt2.LBFGSB(), bounds=(0.0, 1.0))
    # sol.params ≈ [0.0, 0.5, 1.0]: the clipped target
    ```
    """

    rtol: float | None = None
    atol: float = 0.0
    history: int = 10  # m: W is n × 2m and the middle matrix M is 2m × 2m
    c1: float = 1e-4
    max_backtracks: int = 30
    constraint: Any = None  # a `jaxopt2._composite.Composite` with the bounds, set by minimize

    supports_bounds: ClassVar[bool] = True
    # Armijo backtracking alone can accept a tiny first step anywhere (`_base.py`).
    first_step_scale_free: ClassVar[bool] = False
    default_max_steps: ClassVar[int] = 1000  # quasi-Newton, as LBFGS

    def __check_init__(self):
        check_tolerances(self)
        check_line_search(self)
        check_budget("history", self.history)

    def stationarity_scale(self, state: _LBFGSBState):
        """1/θ, the model's curvature scale, so that the projected gradient
        (x − P(x − g/θ))·θ is measured in the gradient's units (`_composite.py`)."""
        return 1.0 / state.theta

    def init(self, fn, iterate: Iterate, args) -> _LBFGSBState:
        x, _ = ravel(iterate.params)
        dtype = result_dtype(iterate.params)
        zeros = jnp.zeros((self.history, x.shape[0]), x.dtype)
        return _LBFGSBState(zeros, zeros, jnp.zeros(self.history, bool), jnp.ones((), dtype),
                            jnp.array(True))

    def step(self, fn, iterate: Iterate, args, state: _LBFGSBState):
        x, _ = ravel(iterate.params)
        g = ravel(iterate.grad)[0].astype(x.dtype)
        lo, hi = flat_bounds(self.constraint, x)
        x = jnp.clip(x, lo, hi)
        theta = jnp.where(state.empty, 1.0, state.theta).astype(x.dtype)
        valid = state.valid & ~state.empty
        s = jnp.where(valid[:, None], state.s, 0.0)
        y = jnp.where(valid[:, None], state.y, 0.0)
        w, mat = compact_form(s, y, valid, theta)
        xc, c = cauchy_point(x, g, lo, hi, w, mat, theta)
        x_bar = subspace_point(x, g, lo, hi, xc, c, w, mat, theta)
        d = x_bar - x
        # The model's unit step is meaningless before any curvature is known: a first step
        # of unit length, as in L-BFGS-B.
        d_norm = jnp.linalg.norm(d)
        init_step = jnp.where(state.empty, jnp.minimum(1.0, 1.0 / jnp.where(d_norm > 0, d_norm,
                                                                              1.0)), 1.0)
        ls, s_new, y_new = box_search(self, fn, iterate, args, x, g, lo, hi, d, init_step)
        sy, yy = s_new @ y_new, y_new @ y_new
        accept = ls.ok & jnp.isfinite(sy) & jnp.isfinite(yy) & (sy > jnp.finfo(x.dtype).eps * yy)

        def push(buf, row):
            return jnp.concatenate([buf[1:], row[None]], axis=0)

        s_mem = jnp.where(accept, push(s, s_new), s)
        y_mem = jnp.where(accept, push(y, y_new), y)
        valid = jnp.where(accept, push(valid, jnp.array(True)), valid)
        theta = jnp.where(accept, yy / jnp.where(accept, sy, 1.0), theta).astype(state.theta.dtype)
        # A failed search from a model direction discards the memory: the next step starts
        # from the projected gradient with B = I at the same point.
        empty = ~ls.ok | (state.empty & ~accept)
        result = RESULTS.where(ls.ok | ~state.empty, RESULTS.successful,
                               RESULTS.line_search_failed)
        return ls.iterate, _LBFGSBState(s_mem, y_mem, valid, theta, empty), ls.counts, result
