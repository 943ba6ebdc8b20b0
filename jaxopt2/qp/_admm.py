"""OSQP's operator-splitting (ADMM) iteration for convex QPs, dense or matrix-free.

All constraints are stacked into one block l ≤ Cx ≤ u, C = [A; G; I], l = [b; −∞; lower],
u = [b; h; upper] (the identity rows only when bounds are given), and the QP
min ½xᵀPx + qᵀx s.t. Cx = z, z ∈ [l, u] is split as in Stellato et al., "OSQP: an operator
splitting solver for quadratic programs", Math. Prog. Comp. 12 (2020), Algorithm 1:

    x̃ = (P + σI + CᵀRC)⁻¹ (σx − q + Cᵀ(Rz − y)),     z̃ = Cx̃,
    x ← αx̃ + (1 − α)x,   ẑ = αz̃ + (1 − α)z,   z ← Π_[l,u](ẑ + R⁻¹y),   y ← y + R(ẑ − z),

with R = ρ·diag(10³ on equality rows, 1 elsewhere, 10⁻⁶/ρ on rows with no finite side) and
over-relaxation α. The linear system is solved by a Cholesky factor cached until ρ changes
(dense data) or by conjugate gradients warm-started at the current x (matrix-free data: only
x ↦ Px, x ↦ Ax, x ↦ Gx are needed; the transposes come from `jax.linear_transpose`).

Every `check_every` iterations: the residuals ‖Cx − z‖∞, ‖Px + q + Cᵀy‖∞ are tested; ρ is
rescaled by √((r_p/‖Cx, z‖) / (r_d/‖Px, Cᵀy, q‖)) when that moves it by more than 5×
(OSQP's adaptive rule); the last differences δy, δx are tested as infeasibility certificates
(Banjac et al., JOTA 183, 2019): Cᵀδy ≈ 0 with uᵀδy₊ + lᵀδy₋ < 0 proves the constraints
infeasible, Pδx ≈ 0, qᵀδx < 0 with Cδx in the recession cone of [l, u] proves the objective
unbounded. With dense data the iterate is also polished (OSQP §5.2): the active set is read
off the multipliers, the equality-constrained QP on it is solved directly (a regularised KKT
solve with iterative refinement), and the result is kept when it meets the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._linalg.cg import truncated_cg
from .._results import RESULTS

_RUNNING = -1
_OK = RESULTS.successful._value
_MAX = RESULTS.max_steps_reached._value
_NONFINITE = RESULTS.nonfinite._value
_PINF = RESULTS.primal_infeasible._value
_DINF = RESULTS.dual_infeasible._value

_RHO_MIN, _RHO_MAX = 1e-6, 1e6
_EQ_SCALE = 1e3
_POLISH_DELTA = 1e-7


class ADMM(eqx.Module):
    """Options of `solve_qp(..., method=ADMM(...))` (`method="admm"` takes these defaults).

    `rho`: the initial step size ρ (adapted every `check_every` iterations when
    `adaptive_rho`); `sigma`: the proximal term σ on x; `alpha` ∈ (0, 2): over-relaxation;
    `polish`: solve the equality QP on the detected active set (dense data only) to reach
    interior-point accuracy; `cg_rtol`, `cg_max_steps`: the inner conjugate-gradient solve of
    matrix-free problems (relative to the change of x it computes, warm-started);
    `scaling`: passes of Ruiz equilibration of the data (dense data only; 0 = off, OSQP uses
    10): ADMM then runs on D P D·γ, D q·γ, E C D, E l, E u with diagonal D, E making the rows
    and columns of the KKT matrix of similar size, and its tests read the unscaled residuals.
    """

    rho: float = 0.1
    sigma: float = 1e-6
    alpha: float = 1.6
    check_every: int = eqx.field(static=True, default=25)
    adaptive_rho: bool = eqx.field(static=True, default=True)
    polish: bool = eqx.field(static=True, default=True)
    cg_rtol: float = 1e-4
    cg_max_steps: int = eqx.field(static=True, default=100)
    scaling: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(f"check_every must be a positive int; got {self.check_every!r}.")
        if not isinstance(self.scaling, int) or self.scaling < 0:
            raise ValueError(f"scaling must be an int ≥ 0 (Ruiz passes); got {self.scaling!r}.")
        if not isinstance(self.cg_max_steps, int) or self.cg_max_steps < 1:
            raise ValueError(f"cg_max_steps must be a positive int; got {self.cg_max_steps!r}.")
        for name in ("rho", "sigma", "alpha", "cg_rtol"):
            v = getattr(self, name)
            if not isinstance(v, jax.core.Tracer) and not float(v) > 0:
                raise ValueError(f"ADMM {name} must be positive; got {v!r}.")
        if not isinstance(self.alpha, jax.core.Tracer) and not float(self.alpha) < 2:
            raise ValueError(f"ADMM alpha (over-relaxation) must be in (0, 2); got {self.alpha!r}.")


class StackedQP:
    """min ½xᵀPx + qᵀx s.t. l ≤ Cx ≤ u. `P`, `C` dense (None when matrix-free); the
    callables apply P, C and Cᵀ. `l`/`u` hold ±inf where a side is absent. A plain holder,
    never a pytree: it is only closed over, not passed through transformations."""

    def __init__(self, q, l, u, P, C, P_mv: Callable, C_mv: Callable, CT_mv: Callable):
        self.q, self.l, self.u, self.P, self.C = q, l, u, P, C
        self.P_mv, self.C_mv, self.CT_mv = P_mv, C_mv, CT_mv


class ADMMResult(eqx.Module):
    x: jax.Array
    y: jax.Array  # one multiplier per row of C (> 0: upper side active, < 0: lower side)
    code: jax.Array
    steps: jax.Array
    primal: jax.Array
    dual: jax.Array
    gap: jax.Array
    polished: jax.Array
    rho: jax.Array


def _inf(v):
    return jnp.max(jnp.abs(v), initial=0.0)


def _kkt(qp: StackedQP, x, y, rtol):
    """(primal violation, dual residual, complementarity, converged) of (x, y) for the QP:
    the true violation of l ≤ Cx ≤ u, ‖Px + q + Cᵀy‖∞ plus any multiplier of the wrong sign
    (y > 0 needs a finite u, y < 0 a finite l), and Σ|y|·distance to the side it presses."""
    Cx, Px, CTy = qp.C_mv(x), qp.P_mv(x), qp.CT_mv(y)
    primal = _inf(Cx - jnp.clip(Cx, qp.l, qp.u))
    sign = jnp.maximum(jnp.where(jnp.isfinite(qp.u), 0.0, jnp.maximum(y, 0.0)),
                       jnp.where(jnp.isfinite(qp.l), 0.0, jnp.maximum(-y, 0.0)))
    dual = jnp.maximum(_inf(Px + qp.q + CTy), _inf(sign))
    u_f = jnp.where(jnp.isfinite(qp.u), qp.u, Cx)
    l_f = jnp.where(jnp.isfinite(qp.l), qp.l, Cx)
    gap = (jnp.maximum(y, 0.0) @ jnp.abs(u_f - Cx) + jnp.maximum(-y, 0.0) @ jnp.abs(Cx - l_f))
    bounds = jnp.concatenate([jnp.where(jnp.isfinite(qp.l), qp.l, 0.0),
                              jnp.where(jnp.isfinite(qp.u), qp.u, 0.0)])
    p_scale = 1.0 + jnp.maximum(_inf(Cx), _inf(bounds))
    d_scale = 1.0 + jnp.max(jnp.stack([_inf(Px), _inf(qp.q), _inf(CTy)]))
    objective = 0.5 * x @ Px + qp.q @ x
    converged = ((primal <= rtol * p_scale) & (dual <= rtol * d_scale)
                 & (gap <= rtol * jnp.maximum(1.0, jnp.abs(objective))))
    return primal, dual, gap, converged


def _primal_infeasible(qp: StackedQP, dy, tol):
    size = _inf(dy)
    pos, neg = jnp.maximum(dy, 0.0), jnp.minimum(dy, 0.0)
    fu, fl = jnp.isfinite(qp.u), jnp.isfinite(qp.l)
    support = jnp.where(fu, qp.u, 0.0) @ pos + jnp.where(fl, qp.l, 0.0) @ neg
    # δy₊ may only press finite upper sides, δy₋ finite lower sides
    cone = jnp.maximum(_inf(jnp.where(fu, 0.0, pos)), _inf(jnp.where(fl, 0.0, neg)))
    return ((size > 0) & (_inf(qp.CT_mv(dy)) <= tol * size) & (support < -tol * size)
            & (cone <= tol * size))


def _dual_infeasible(qp: StackedQP, dx, tol):
    size = _inf(dx)
    eps = tol * size
    Cd = qp.C_mv(dx)
    fu, fl = jnp.isfinite(qp.u), jnp.isfinite(qp.l)
    in_cone = (jnp.all(jnp.where(fu, Cd <= eps, True))
               & jnp.all(jnp.where(fl, Cd >= -eps, True)))
    return ((size > 0) & (_inf(qp.P_mv(dx)) <= eps) & (qp.q @ dx < -eps) & in_cone)


def _rho_vector(qp: StackedQP, rho):
    fu, fl = jnp.isfinite(qp.u), jnp.isfinite(qp.l)
    eq = fu & fl & (qp.u - jnp.where(fl, qp.l, 0.0) <= 1e-4 * (1 + jnp.abs(jnp.where(fu, qp.u,
                                                                                       0.0))))
    free = ~fu & ~fl
    return jnp.where(eq, _EQ_SCALE * rho, jnp.where(free, _RHO_MIN, rho))


def _polish(qp: StackedQP, x, z, y):
    """The solution of the QP with the active set of (z, y) held as equalities (dense)."""
    P, C = qp.P, qp.C
    n, M = P.shape[0], C.shape[0]
    dtype = x.dtype
    lower = (z - qp.l < -y) & jnp.isfinite(qp.l)
    upper = (qp.u - z < y) & jnp.isfinite(qp.u)
    active = lower | upper
    target = jnp.where(lower, jnp.where(jnp.isfinite(qp.l), qp.l, 0.0),
                       jnp.where(jnp.isfinite(qp.u), qp.u, 0.0))
    D = active.astype(dtype)
    delta = _POLISH_DELTA * jnp.maximum(1.0, _inf(P))
    eye_m = jnp.eye(M, dtype=dtype)
    top = jnp.concatenate([P, C.T * D[None, :]], axis=1)
    exact = jnp.concatenate([top, jnp.concatenate([D[:, None] * C, -(1 - D) * eye_m], axis=1)])
    shift = jnp.concatenate([jnp.full((n,), delta, dtype), delta * D])
    K = exact + jnp.diag(jnp.concatenate([shift[:n], -shift[n:]]))
    lu = jax.scipy.linalg.lu_factor(K)
    rhs = jnp.concatenate([-qp.q, D * target])

    def refine(_, w):
        return w + jax.scipy.linalg.lu_solve(lu, rhs - exact @ w)

    w = lax.fori_loop(0, 4, refine, jnp.concatenate([x, D * y]))
    return w[:n], D * w[n:]


class Scaling(eqx.Module):
    """x = D·x̄, y = E·ȳ/γ for the solution (x̄, ȳ) of the scaled QP."""

    D: jax.Array
    E: jax.Array
    cost: jax.Array


def ruiz(qp: StackedQP, passes: int) -> tuple[StackedQP, Scaling]:
    """Ruiz equilibration (OSQP §5.1): each pass divides every column j of the KKT matrix
    [P Cᵀ; C 0] by √‖column j‖∞ (both sides, so it stays symmetric), then scales the
    objective by γ = 1/max(mean column norm of P̄, ‖q̄‖∞). Factors are kept in [1e-4, 1e4]."""
    P, C = qp.P, qp.C
    dtype = qp.q.dtype

    def norm_factor(v):
        v = jnp.where(v < 1e-4, 1.0, v)
        return 1.0 / jnp.sqrt(jnp.clip(v, 1e-4, 1e4))

    def one(_, de):
        D, E = de
        Ps = D[:, None] * P * D[None, :]
        Cs = E[:, None] * C * D[None, :]
        col = jnp.maximum(jnp.max(jnp.abs(Ps), axis=0, initial=0.0),
                          jnp.max(jnp.abs(Cs), axis=0, initial=0.0))
        row = jnp.max(jnp.abs(Cs), axis=1, initial=0.0)
        return (jnp.clip(D * norm_factor(col), 1e-4, 1e4),
                jnp.clip(E * norm_factor(row), 1e-4, 1e4))

    D, E = lax.fori_loop(0, passes, one, (jnp.ones(P.shape[0], dtype),
                                          jnp.ones(C.shape[0], dtype)))
    Ps, Cs, qs = D[:, None] * P * D[None, :], E[:, None] * C * D[None, :], D * qp.q
    size = jnp.maximum(jnp.mean(jnp.max(jnp.abs(Ps), axis=0, initial=0.0)),
                       jnp.max(jnp.abs(qs), initial=0.0))
    cost = 1.0 / jnp.clip(jnp.where(size < 1e-4, 1.0, size), 1e-4, 1e4)
    Ps, qs = cost * Ps, cost * qs
    scaled = StackedQP(qs, E * qp.l, E * qp.u, Ps, Cs, lambda x: Ps @ x, lambda x: Cs @ x,
                       lambda y: Cs.T @ y)
    return scaled, Scaling(D, E, cost)


class _State(eqx.Module):
    x: jax.Array
    z: jax.Array
    y: jax.Array
    dx: jax.Array
    dy: jax.Array
    rho: jax.Array
    factor: tuple | None  # (Cholesky factor, σ) of dense data
    step: jax.Array
    code: jax.Array
    polish_tol: jax.Array
    polished: jax.Array


def admm(qp: StackedQP, x0, y0, opts: ADMM, *, rtol, max_steps: int,
         infeasibility_tol, rho0=None, original: StackedQP | None = None,
         scaling: Scaling | None = None) -> ADMMResult:
    """Run the iteration from (x0, y0) (and step size `rho0`, default `opts.rho`). With
    `scaling`, `qp` is the scaled form of `original` (`ruiz`): x0, y0 and the result are
    unscaled, and the convergence tests read unscaled residuals."""
    if scaling is None:
        one = jnp.ones((), qp.q.dtype)
        sc_D, sc_E, sc_cost, original = one, one, one, qp
    else:
        sc_D, sc_E, sc_cost = scaling.D, scaling.E, scaling.cost
        x0, y0 = x0 / sc_D, y0 * sc_cost / sc_E

    def unscaled(x, y):
        return sc_D * x, sc_E * y / sc_cost

    dtype = qp.q.dtype
    sigma, alpha, check_every = opts.sigma, opts.alpha, opts.check_every
    cg_rtol, cg_max_steps, adaptive_rho = opts.cg_rtol, opts.cg_max_steps, opts.adaptive_rho
    polish, rho = opts.polish, opts.rho
    n = qp.q.shape[0]
    dense = qp.P is not None
    polish = polish and dense
    eye = jnp.eye(n, dtype=dtype) if dense else None

    def factor(rho_s):
        if not dense:
            return None
        K = qp.P + (qp.C.T * _rho_vector(qp, rho_s)[None, :]) @ qp.C
        # σ at least a few ulps of K's diagonal: with P singular (an LP) and 10³ρ on the
        # equality rows, σ = 1e-6 alone leaves K numerically singular in float32. σ only
        # damps the x-update; the fixed point does not depend on it.
        sig = jnp.maximum(sigma, 30 * jnp.finfo(dtype).eps * jnp.max(jnp.diagonal(K)))
        return jnp.linalg.cholesky(K + sig * eye), sig

    def kmv(v, r):
        return qp.P_mv(v) + sigma * v + qp.CT_mv(r * qp.C_mv(v))

    def solve(L, rhs, x_prev, r):
        if dense:
            return jax.scipy.linalg.cho_solve((L, True), rhs)
        cg = truncated_cg(lambda v: kmv(v, r), rhs - kmv(x_prev, r), rtol=cg_rtol,
                          max_iters=cg_max_steps)
        return x_prev + cg.x

    def iterate(L, r, carry):
        x, z, y, _, _ = carry
        L, sig = L if dense else (None, sigma)
        xt = solve(L, sig * x - qp.q + qp.CT_mv(r * z - y), x, r)
        zt = qp.C_mv(xt)
        xn = alpha * xt + (1 - alpha) * x
        zh = alpha * zt + (1 - alpha) * z
        zn = jnp.clip(zh + y / r, qp.l, qp.u)
        yn = y + r * (zh - zn)
        return xn, zn, yn, xn - x, yn - y

    def cond(st: _State):
        return (st.code == _RUNNING) & (st.step < max_steps)

    def body(st: _State):
        r = _rho_vector(qp, st.rho)
        carry = (st.x, st.z, st.y, st.dx, st.dy)
        x, z, y, dx, dy = lax.fori_loop(0, check_every, lambda _, c: iterate(st.factor, r, c),
                                        carry)
        Cx, Px, CTy = qp.C_mv(x), qp.P_mv(x), qp.CT_mv(y)
        # In the units of the original QP (identities without scaling).
        Cx, z_u = Cx / sc_E, z / sc_E
        Px, CTy, q_u = (Px / sc_D / sc_cost, CTy / sc_D / sc_cost, qp.q / sc_D / sc_cost)
        rp, rd = _inf(Cx - z_u), _inf(Px + q_u + CTy)
        p_norm = jnp.maximum(_inf(Cx), _inf(z_u))
        d_norm = jnp.max(jnp.stack([_inf(Px), _inf(CTy), _inf(q_u)]))
        # OSQP's test on the splitting residuals, not the KKT test on (x, y): ADMM's y is
        # complementary to z, not to Cx, and the KKT test's gap ∑|y|·dist would accept a
        # weakly active constraint whose x is off by √gap.
        admm_conv = (rp <= rtol * (1 + p_norm)) & (rd <= rtol * (1 + d_norm))
        code = jnp.where(admm_conv, _OK, _RUNNING)
        polished = st.polished
        if polish:
            # Try a polish each time the ADMM residuals fall another decade (from 1e-3), and
            # once more when ADMM itself has converged (OSQP's final polish).
            want = (((code == _RUNNING) & (rp <= st.polish_tol * (1 + p_norm))
                     & (rd <= st.polish_tol * (1 + d_norm))) | (code == _OK))
            xp, yp = lax.cond(want, lambda: _polish(qp, x, z, y), lambda: (x, y))
            good = want & _kkt(original, *unscaled(xp, yp), rtol)[3] & jnp.all(jnp.isfinite(xp))
            x = jnp.where(good, xp, x)
            y = jnp.where(good, yp, y)
            code = jnp.where(good, _OK, code)
            polished = polished | good
            polish_tol = jnp.where(want, st.polish_tol * 0.1, st.polish_tol)
        else:
            polish_tol = st.polish_tol
        code = jnp.where((code == _RUNNING) & _primal_infeasible(qp, dy, infeasibility_tol),
                         _PINF, code)
        code = jnp.where((code == _RUNNING) & _dual_infeasible(qp, dx, infeasibility_tol),
                         _DINF, code)
        finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
        code = jnp.where(finite, code, _NONFINITE)
        rho_s, L = st.rho, st.factor
        if adaptive_rho:
            tiny = jnp.finfo(dtype).tiny ** 0.5
            ratio = (rp / jnp.maximum(p_norm, tiny)) / jnp.maximum(rd / jnp.maximum(d_norm, tiny),
                                                                   tiny)
            proposal = jnp.clip(st.rho * jnp.sqrt(ratio), _RHO_MIN, _RHO_MAX)
            change = ((proposal > 5 * st.rho) | (proposal < st.rho / 5)) & (code == _RUNNING)
            change = change & jnp.isfinite(proposal)
            rho_s = jnp.where(change, proposal, st.rho)
            if dense:
                L = lax.cond(change, lambda: factor(rho_s), lambda: st.factor)
        return _State(x, z, y, dx, dy, rho_s, L, st.step + check_every, code.astype(jnp.int32),
                      polish_tol, polished)

    rho0 = jnp.asarray(rho if rho0 is None else rho0, dtype)
    z0 = jnp.clip(qp.C_mv(x0), qp.l, qp.u)
    finite0 = jnp.all(jnp.isfinite(qp.q))
    if dense:
        finite0 = finite0 & jnp.all(jnp.isfinite(qp.P)) & jnp.all(jnp.isfinite(qp.C))
    code0 = jnp.where(finite0, _RUNNING, _NONFINITE).astype(jnp.int32)
    st = _State(x0, z0, y0, jnp.zeros_like(x0), jnp.zeros_like(y0), rho0, factor(rho0),
                jnp.zeros((), jnp.int32), code0, jnp.asarray(1e-3, dtype),
                jnp.zeros((), bool))
    st = lax.while_loop(cond, body, st)
    code = jnp.where(st.code == _RUNNING, _MAX, st.code).astype(jnp.int32)
    x, y = unscaled(st.x, st.y)
    primal, dual, gap, _ = _kkt(original, x, y, rtol)
    return ADMMResult(x, y, code, st.step, primal, dual, gap, st.polished, st.rho)
