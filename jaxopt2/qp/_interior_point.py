"""Mehrotra's primal-dual interior point for dense convex QPs.

With slacks s = h − Gx ≥ 0, s_l = x − l ≥ 0, s_u = u − x ≥ 0 and multipliers y, z, z_l, z_u,
the KKT conditions of  min ½xᵀQx + cᵀx  s.t.  Ax = b, Gx ≤ h, l ≤ x ≤ u  are

    r_d = Qx + c + Aᵀy + Gᵀz − z_l + z_u = 0,     r_eq = Ax − b = 0,
    r_in = Gx + s − h = 0,   r_l = x − s_l − l = 0,   r_u = x + s_u − u = 0,
    s∘z = s_l∘z_l = s_u∘z_u = 0,   (s, z, s_l, z_l, s_u, z_u) ≥ 0.

Each step linearises them with the complementarity products aimed at σμ (μ their mean):
an affine (σ = 0) predictor gives the step length it could take, σ = (μ_aff/μ)³, and a
corrector with the second-order term Δs_aff∘Δz_aff reuses the same factorization (Mehrotra,
SIAM J. Optim. 2, 1992; Nocedal & Wright, Numerical Optimization, §16.6). Both solves are
`ReducedKKT` solves. The start is CVXOPT's (Vandenberghe, "The CVXOPT linear and quadratic
cone program solvers", 2010, §5.3): the least-squares point of the constraints, its slacks
and multipliers shifted into the positive orthant.

Stopping (relative, ∞-norms, "KKT residual"): primal ≤ rtol·(1 + data and Ax, Gx sizes),
dual ≤ rtol·(1 + sizes of Qx, c, Aᵀy, Gᵀz, z_l, z_u), gap sᵀz + s_lᵀz_l + s_uᵀz_u ≤
rtol·max(1, |objective|). Infeasibility is read off the iterates as OSQP reads it off its
ADMM differences (Banjac et al., J. Optim. Theory Appl. 183, 2019): multipliers with
‖Aᵀy + Gᵀz − z_l + z_u‖ small but bᵀy + hᵀz − lᵀz_l + uᵀz_u < 0 prove the constraints
infeasible (Farkas); a step d with Qd, Ad small, cᵀd < 0 and Gd ≤ 0 (d ≥ 0 on lower, ≤ 0 on
upper bounds) proves the objective unbounded.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._results import RESULTS
from ._kkt import ReducedKKT
from ._problem import QPData

# Internal status codes; _RUNNING is not a RESULTS code (it becomes max_steps_reached).
_RUNNING = -1
_OK = RESULTS.successful._value
_MAX = RESULTS.max_steps_reached._value
_NONFINITE = RESULTS.nonfinite._value
_LINSOLVE = RESULTS.linear_solve_failed._value
_PINF = RESULTS.primal_infeasible._value
_DINF = RESULTS.dual_infeasible._value

_ETA = 0.99  # fraction of the step to the boundary of the positive orthant (least)
_ETA_MAX = 0.9999  # (most)


class Iterate(eqx.Module):
    x: jax.Array
    y: jax.Array
    z: jax.Array
    s: jax.Array
    zl: jax.Array
    sl: jax.Array
    zu: jax.Array
    su: jax.Array


class Residuals(eqx.Module):
    """Absolute residuals (∞-norms) and whether they meet the relative test."""

    primal: jax.Array
    dual: jax.Array
    gap: jax.Array
    objective: jax.Array
    converged: jax.Array


def _inf(v):
    return jnp.max(jnp.abs(v), initial=0.0)


class Products(eqx.Module):
    """The matrix-vector products of an iterate that every residual and test reads: computed
    once per step (the Newton systems, the convergence and infeasibility tests share them)."""

    Qx: jax.Array
    Ax: jax.Array
    Gx: jax.Array
    ATy: jax.Array
    GTz: jax.Array


def products(qp: QPData, it: Iterate) -> Products:
    return Products(qp.Q @ it.x, qp.A @ it.x, qp.G @ it.x, qp.A.T @ it.y, qp.G.T @ it.z)


def _residual_vectors(qp: QPData, it: Iterate, P: Products):
    """(r_d, r_eq, r_in, r_l, r_u) of the module docstring, absent bounds masked to 0."""
    zl, zu = qp.has_lower * it.zl, qp.has_upper * it.zu
    r_d = P.Qx + qp.c + P.ATy + P.GTz - zl + zu
    r_l = qp.has_lower * (it.x - it.sl - qp.lower)
    r_u = qp.has_upper * (it.x + it.su - qp.upper)
    return r_d, P.Ax - qp.b, P.Gx + it.s - qp.h, r_l, r_u


def kkt_residuals(qp: QPData, it: Iterate, rtol, P: Products | None = None) -> Residuals:
    P = products(qp, it) if P is None else P
    x = it.x
    zl, zu = qp.has_lower * it.zl, qp.has_upper * it.zu
    r_d, r_eq, r_in, r_l, r_u = _residual_vectors(qp, it, P)
    primal = jnp.max(jnp.stack([_inf(r_eq), _inf(r_in), _inf(r_l), _inf(r_u)]))
    dual = _inf(r_d)
    gap = it.s @ it.z + it.sl @ zl + it.su @ zu
    objective = 0.5 * x @ P.Qx + qp.c @ x
    xb = jnp.maximum(qp.has_lower, qp.has_upper) * x
    p_scale = 1.0 + jnp.max(jnp.stack([_inf(P.Ax), _inf(qp.b), _inf(P.Gx), _inf(qp.h), _inf(xb),
                                       _inf(qp.lower), _inf(qp.upper)]))
    d_scale = 1.0 + jnp.max(jnp.stack([_inf(P.Qx), _inf(qp.c), _inf(P.ATy), _inf(P.GTz),
                                       _inf(zl), _inf(zu)]))
    converged = ((primal <= rtol * p_scale) & (dual <= rtol * d_scale)
                 & (gap <= rtol * jnp.maximum(1.0, jnp.abs(objective))))
    return Residuals(primal, dual, gap, objective, converged)


def _reduced_terms(qp: QPData, it: Iterate):
    w = it.z / it.s
    dl = qp.has_lower * it.zl / it.sl
    du = qp.has_upper * it.zu / it.su
    return w, dl + du


def _newton_rhs(qp: QPData, it: Iterate, r, r_c, r_cl, r_cu):
    """The right-hand side rx of the reduced system for the Newton step of the KKT conditions
    with complementarity residuals r_c, r_cl, r_cu and the primal and dual residuals
    r = (r_d, r_eq, r_in, r_l, r_u) of `it` (the other one is −r_eq)."""
    ml, mu_ = qp.has_lower, qp.has_upper
    r_d, _, r_in, r_l, r_u = r
    return (-r_d - qp.G.T @ ((-r_c + it.z * r_in) / it.s)
            - ml * (r_cl + it.zl * r_l) / it.sl - mu_ * (-r_cu + it.zu * r_u) / it.su)


def _newton_step(qp: QPData, it: Iterate, r, r_c, r_cl, r_cu, dx, dy):
    """The whole step from the reduced system's (dx, dy): slacks and multipliers recovered
    from the eliminated diagonal blocks. Also returns G·dx (the infeasibility test reads it)."""
    ml, mu_ = qp.has_lower, qp.has_upper
    _, _, r_in, r_l, r_u = r
    Gdx = qp.G @ dx
    ds = -r_in - Gdx
    dz = (-r_c - it.z * ds) / it.s
    dsl = ml * (dx + r_l)
    dzl = ml * (-r_cl - it.zl * dsl) / it.sl
    dsu = mu_ * (-r_u - dx)
    dzu = mu_ * (-r_cu - it.zu * dsu) / it.su
    return Iterate(dx, dy, dz, ds, dzl, dsl, dzu, dsu), Gdx


def _max_step(it: Iterate, d: Iterate):
    """Largest α ≤ 1/η with every slack and multiplier nonnegative at it + α·d."""
    def ratio(v, dv):
        return jnp.min(jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf),
                       initial=jnp.inf)
    a = jnp.min(jnp.stack([ratio(it.s, d.s), ratio(it.z, d.z), ratio(it.sl, d.sl),
                           ratio(it.zl, d.zl), ratio(it.su, d.su), ratio(it.zu, d.zu)]))
    return jnp.minimum(a, 1.0 / _ETA)  # ≥ 1/η: η·α reaches 1 for every η ≥ _ETA


def _axpy(it: Iterate, a, d: Iterate) -> Iterate:
    return jax.tree.map(lambda v, dv: v + a * dv, it, d)


def _count(qp: QPData):
    return qp.h.shape[0] + jnp.sum(qp.has_lower) + jnp.sum(qp.has_upper)


def _mean_comp(qp, it, count):
    total = it.s @ it.z + it.sl @ (qp.has_lower * it.zl) + it.su @ (qp.has_upper * it.zu)
    return total / jnp.maximum(count, 1.0)


def _regularisation(qp: QPData):
    # Relative to the size of Q (the matrix it perturbs), not of c: with |c| ≫ |Q| (a solution
    # far from the origin) a c-sized shift swamps Q and the refinement cannot undo it.
    eps = jnp.finfo(qp.c.dtype).eps
    size = jnp.maximum(1.0, jnp.max(jnp.abs(qp.Q), initial=0.0))
    return jnp.sqrt(eps) * 1e-2 * size if eps < 1e-10 else jnp.sqrt(eps) * size


def _initial(qp: QPData, reg) -> Iterate:
    n, m = qp.n, qp.h.shape[0]
    ml, mu_ = qp.has_lower, qp.has_upper
    kkt = ReducedKKT.factor(qp.Q, qp.G, jnp.ones((m,), qp.c.dtype), ml + mu_, qp.A, reg)
    rx = -qp.c + qp.G.T @ qp.h + ml * qp.lower + mu_ * qp.upper
    x, y = kkt.solve(rx, qp.b)
    s = qp.h - qp.G @ x
    sl = ml * (x - qp.lower)
    su = mu_ * (qp.upper - x)
    # One shift for all the slacks, one for all the multipliers (CVXOPT's rule, on the
    # entries that are constraints; absent bounds keep s = 1, z = 0).
    valid = jnp.concatenate([jnp.ones((m,), bool), ml > 0, mu_ > 0])
    v = jnp.concatenate([s, sl, su])
    vmin = jnp.min(jnp.where(valid, v, jnp.inf), initial=jnp.inf)
    vmax = jnp.max(jnp.where(valid, v, -jnp.inf), initial=-jnp.inf)
    s_shift = jnp.where(vmin > 0, 0.0, 1.0 - vmin)
    z_shift = jnp.where(-vmax > 0, 0.0, 1.0 + vmax)
    slack = v + s_shift
    mult = -v + z_shift
    slack = jnp.where(valid, slack, 1.0)
    mult = jnp.where(valid, mult, 0.0)
    del n
    z, zl, zu = jnp.split(mult, [m, m + qp.n])
    s, sl, su = jnp.split(slack, [m, m + qp.n])
    return Iterate(x, y, z, s, zl, sl, zu, su)


class _State(eqx.Module):
    it: Iterate
    prod: Products
    res: Residuals
    step: jax.Array
    code: jax.Array


def _primal_infeasible(qp: QPData, it: Iterate, P: Products, tol):
    zl, zu = qp.has_lower * it.zl, qp.has_upper * it.zu
    size = jnp.max(jnp.stack([_inf(it.y), _inf(it.z), _inf(zl), _inf(zu)]))
    r = P.ATy + P.GTz - zl + zu
    dual_obj = qp.b @ it.y + qp.h @ it.z - qp.lower @ zl + qp.upper @ zu
    a_scale = jnp.maximum(1.0, jnp.maximum(_inf(qp.A), _inf(qp.G)))
    h_scale = 1.0 + jnp.max(jnp.stack([_inf(qp.b), _inf(qp.h), _inf(qp.has_lower * qp.lower),
                                       _inf(qp.has_upper * qp.upper)]))
    return (size > 0) & (_inf(r) <= tol * a_scale * size) & (dual_obj < -tol * h_scale * size)


def _dual_infeasible(qp: QPData, d, Qd, Ad, Gd, tol):
    size = _inf(d)
    a_scale = jnp.maximum(1.0, jnp.maximum(_inf(qp.A), _inf(qp.G)))
    eps = tol * size
    return ((size > 0) & (_inf(Qd) <= eps * qp.scale())
            & (qp.c @ d < -eps * jnp.maximum(1.0, _inf(qp.c)))
            & (_inf(Ad) <= eps * a_scale)
            & (jnp.max(Gd, initial=-jnp.inf) <= eps * a_scale)
            & (jnp.max(-qp.has_lower * d, initial=-jnp.inf) <= eps)
            & (jnp.max(qp.has_upper * d, initial=-jnp.inf) <= eps))


def interior_point(qp: QPData, rtol, max_steps: int, infeasibility_tol):
    """Run Mehrotra's method. Returns (final Iterate, Residuals, num_steps, int32 code).

    A step costs one Cholesky factorization of the reduced matrix (and one of its p × p
    Schur complement), two reduced solves (predictor and corrector share the factors) and
    about ten products with Q, A, G or their transposes: the residuals of the new iterate
    are computed once (`Products`) and read by the next step's Newton systems and by the
    convergence and infeasibility tests."""
    reg = _regularisation(qp)
    # Refinement removes the bias of the regularisation ρ from the directions. In float64
    # ρ ≈ 1e-10·|Q| and the bias is below what the next step's residuals correct anyway
    # (no refinement changed no iteration count in the benchmarks); in float32 ρ ≈ 3e-4·|Q|
    # and two refinement steps keep the directions Newton's.
    refine = 0 if jnp.finfo(qp.c.dtype).eps < 1e-10 else 2
    count = _count(qp)
    it0 = _initial(qp, reg)
    prod0 = products(qp, it0)
    res0 = kkt_residuals(qp, it0, rtol, prod0)
    dtype = qp.c.dtype
    # Convexity under a trace: Q + τI must factor (τ a rounding-level shift of its scale).
    tau = 100 * jnp.finfo(dtype).eps * qp.scale() * qp.n
    convex = jnp.all(jnp.isfinite(jnp.linalg.cholesky(qp.Q + tau * jnp.eye(qp.n, dtype=dtype))))
    finite0 = jnp.all(jnp.isfinite(jnp.concatenate([qp.c, qp.Q.ravel(), qp.h, qp.b])))
    code0 = jnp.where(res0.converged, _OK, _RUNNING)
    code0 = jnp.where(convex, code0, _LINSOLVE)
    code0 = jnp.where(finite0, code0, _NONFINITE)

    def cond(state: _State):
        return (state.code == _RUNNING) & (state.step < max_steps)

    def body(state: _State):
        it = state.it
        r = _residual_vectors(qp, it, state.prod)
        ml, mu_ = qp.has_lower, qp.has_upper
        mu = _mean_comp(qp, it, count)
        # Predictor (affine scaling, σ = 0): its right-hand side is solved with the factors.
        comp = (it.s * it.z, ml * it.sl * it.zl, mu_ * it.su * it.zu)
        w, d = _reduced_terms(qp, it)
        kkt, (dx, dy) = ReducedKKT.factor_solve(qp.Q, qp.G, w, d, qp.A, reg,
                                                _newton_rhs(qp, it, r, *comp), -r[1], refine)
        aff, _ = _newton_step(qp, it, r, *comp, dx, dy)
        a_aff = jnp.minimum(1.0, _max_step(it, aff))
        mu_aff = _mean_comp(qp, _axpy(it, a_aff, aff), count)
        sigma = jnp.where(mu > 0, jnp.clip(mu_aff / jnp.where(mu > 0, mu, 1.0), 0.0, 1.0) ** 3,
                          0.0)
        # Complementarity is not pushed below a tenth of what the gap test needs: beyond it
        # z/s only grows, and with it the rounding error of the reduced system's steps
        # (in float32 the dual residual then rises again instead of falling).
        floor = 0.1 * rtol * jnp.maximum(1.0, jnp.abs(state.res.objective)) / jnp.maximum(
            count, 1.0)
        target = jnp.maximum(sigma * mu, jnp.minimum(floor, mu))
        comp = (it.s * it.z + aff.s * aff.z - target,
                ml * (it.sl * it.zl + aff.sl * aff.zl - target),
                mu_ * (it.su * it.zu + aff.su * aff.zu - target))
        dx, dy = kkt.solve(_newton_rhs(qp, it, r, *comp), -r[1])
        d, Gdx = _newton_step(qp, it, r, *comp, dx, dy)
        # The fraction of the step to the boundary tends to 1 as the relative complementarity
        # falls (IPOPT's τ = max(τ_min, 1 − μ)): a fixed 0.99 caps every step's reduction of μ
        # at 100×, and the last iterations then converge linearly (one more step in four of
        # the benchmark's problems). Capped so that no slack comes closer than 1e-4 of the way.
        eta = jnp.clip(1.0 - mu / jnp.maximum(1.0, jnp.abs(state.res.objective)), _ETA, _ETA_MAX)
        alpha = jnp.minimum(1.0, eta * _max_step(it, d))
        new = _axpy(it, alpha, d)
        prod = products(qp, new)
        res = kkt_residuals(qp, new, rtol, prod)
        # NaN/inf anywhere in the new iterate reaches one of these sums (a scalar test: the
        # elementwise test over every field cost as much as a triangular solve under vmap).
        finite = jnp.isfinite(res.primal + res.dual + res.gap + res.objective
                              + jnp.sum(new.x) + jnp.sum(new.y))
        code = jnp.where(res.converged, _OK, _RUNNING)
        code = jnp.where(_primal_infeasible(qp, new, prod, infeasibility_tol), _PINF, code)
        step = alpha * d.x
        dual_inf = _dual_infeasible(qp, step, alpha * (qp.Q @ d.x), alpha * (qp.A @ d.x),
                                    alpha * Gdx, infeasibility_tol)
        code = jnp.where(dual_inf, _DINF, code)
        code = jnp.where(kkt.ok(), code, _LINSOLVE)
        code = jnp.where(finite, code, _NONFINITE)
        # A failed step is not taken: the last finite iterate is returned.
        keep = (code == _NONFINITE) | (code == _LINSOLVE)
        new, prod, res = jax.tree.map(lambda a, b: jnp.where(keep, a, b),
                                      (it, state.prod, state.res), (new, prod, res))
        return _State(new, prod, res, state.step + 1, code.astype(jnp.int32))

    state = _State(it0, prod0, res0, jnp.zeros((), jnp.int32), code0.astype(jnp.int32))
    state = lax.while_loop(cond, body, state)
    code = jnp.where(state.code == _RUNNING, _MAX, state.code).astype(jnp.int32)
    return state.it, state.res, state.step, code
