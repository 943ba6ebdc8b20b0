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

_ETA = 0.99  # fraction of the step to the boundary of the positive orthant


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


def kkt_residuals(qp: QPData, it: Iterate, rtol) -> Residuals:
    x = it.x
    Qx, Ax, Gx = qp.Q @ x, qp.A @ x, qp.G @ x
    ATy, GTz = qp.A.T @ it.y, qp.G.T @ it.z
    zl, zu = qp.has_lower * it.zl, qp.has_upper * it.zu
    r_d = Qx + qp.c + ATy + GTz - zl + zu
    r_eq = Ax - qp.b
    r_in = Gx + it.s - qp.h
    r_l = qp.has_lower * (x - it.sl - qp.lower)
    r_u = qp.has_upper * (x + it.su - qp.upper)
    primal = jnp.max(jnp.stack([_inf(r_eq), _inf(r_in), _inf(r_l), _inf(r_u)]))
    dual = _inf(r_d)
    gap = it.s @ it.z + it.sl @ zl + it.su @ zu
    objective = 0.5 * x @ Qx + qp.c @ x
    xb = jnp.maximum(qp.has_lower, qp.has_upper) * x
    p_scale = 1.0 + jnp.max(jnp.stack([_inf(Ax), _inf(qp.b), _inf(Gx), _inf(qp.h), _inf(xb),
                                       _inf(qp.lower), _inf(qp.upper)]))
    d_scale = 1.0 + jnp.max(jnp.stack([_inf(Qx), _inf(qp.c), _inf(ATy), _inf(GTz), _inf(zl),
                                       _inf(zu)]))
    converged = ((primal <= rtol * p_scale) & (dual <= rtol * d_scale)
                 & (gap <= rtol * jnp.maximum(1.0, jnp.abs(objective))))
    return Residuals(primal, dual, gap, objective, converged)


def _reduced_terms(qp: QPData, it: Iterate):
    w = it.z / it.s
    dl = qp.has_lower * it.zl / it.sl
    du = qp.has_upper * it.zu / it.su
    return w, dl + du


def _direction(qp: QPData, it: Iterate, kkt: ReducedKKT, r_c, r_cl, r_cu):
    """The Newton step for the KKT conditions with complementarity residuals r_c, r_cl, r_cu
    (the primal and dual residuals are those of `it`)."""
    x, ml, mu_ = it.x, qp.has_lower, qp.has_upper
    r_d = (qp.Q @ x + qp.c + qp.A.T @ it.y + qp.G.T @ it.z - ml * it.zl + mu_ * it.zu)
    r_eq = qp.A @ x - qp.b
    r_in = qp.G @ x + it.s - qp.h
    r_l = ml * (x - it.sl - qp.lower)
    r_u = mu_ * (x + it.su - qp.upper)
    rx = (-r_d - qp.G.T @ ((-r_c + it.z * r_in) / it.s)
          - ml * (r_cl + it.zl * r_l) / it.sl - mu_ * (-r_cu + it.zu * r_u) / it.su)
    dx, dy = kkt.solve(rx, -r_eq)
    ds = -r_in - qp.G @ dx
    dz = (-r_c - it.z * ds) / it.s
    dsl = ml * (dx + r_l)
    dzl = ml * (-r_cl - it.zl * dsl) / it.sl
    dsu = mu_ * (-r_u - dx)
    dzu = mu_ * (-r_cu - it.zu * dsu) / it.su
    return Iterate(dx, dy, dz, ds, dzl, dsl, dzu, dsu)


def _max_step(it: Iterate, d: Iterate):
    """Largest α ≤ 1/η with every slack and multiplier nonnegative at it + α·d."""
    def ratio(v, dv):
        return jnp.min(jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf),
                       initial=jnp.inf)
    a = jnp.min(jnp.stack([ratio(it.s, d.s), ratio(it.z, d.z), ratio(it.sl, d.sl),
                           ratio(it.zl, d.zl), ratio(it.su, d.su), ratio(it.zu, d.zu)]))
    return jnp.minimum(a, 1.0 / _ETA)


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
    res: Residuals
    step: jax.Array
    code: jax.Array


def _primal_infeasible(qp: QPData, it: Iterate, tol):
    zl, zu = qp.has_lower * it.zl, qp.has_upper * it.zu
    size = jnp.max(jnp.stack([_inf(it.y), _inf(it.z), _inf(zl), _inf(zu)]))
    r = qp.A.T @ it.y + qp.G.T @ it.z - zl + zu
    dual_obj = qp.b @ it.y + qp.h @ it.z - qp.lower @ zl + qp.upper @ zu
    a_scale = jnp.maximum(1.0, jnp.maximum(_inf(qp.A), _inf(qp.G)))
    h_scale = 1.0 + jnp.max(jnp.stack([_inf(qp.b), _inf(qp.h), _inf(qp.has_lower * qp.lower),
                                       _inf(qp.has_upper * qp.upper)]))
    return (size > 0) & (_inf(r) <= tol * a_scale * size) & (dual_obj < -tol * h_scale * size)


def _dual_infeasible(qp: QPData, d, tol):
    size = _inf(d)
    a_scale = jnp.maximum(1.0, jnp.maximum(_inf(qp.A), _inf(qp.G)))
    eps = tol * size
    return ((size > 0) & (_inf(qp.Q @ d) <= eps * qp.scale())
            & (qp.c @ d < -eps * jnp.maximum(1.0, _inf(qp.c)))
            & (_inf(qp.A @ d) <= eps * a_scale)
            & (jnp.max(qp.G @ d, initial=-jnp.inf) <= eps * a_scale)
            & (jnp.max(-qp.has_lower * d, initial=-jnp.inf) <= eps)
            & (jnp.max(qp.has_upper * d, initial=-jnp.inf) <= eps))


def interior_point(qp: QPData, rtol, max_steps: int, infeasibility_tol):
    """Run Mehrotra's method. Returns (final Iterate, Residuals, num_steps, int32 code)."""
    reg = _regularisation(qp)
    count = _count(qp)
    it0 = _initial(qp, reg)
    res0 = kkt_residuals(qp, it0, rtol)
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
        w, d = _reduced_terms(qp, it)
        kkt = ReducedKKT.factor(qp.Q, qp.G, w, d, qp.A, reg)
        ml, mu_ = qp.has_lower, qp.has_upper
        mu = _mean_comp(qp, it, count)
        aff = _direction(qp, it, kkt, it.s * it.z, ml * it.sl * it.zl, mu_ * it.su * it.zu)
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
        d = _direction(qp, it, kkt,
                       it.s * it.z + aff.s * aff.z - target,
                       ml * (it.sl * it.zl + aff.sl * aff.zl - target),
                       mu_ * (it.su * it.zu + aff.su * aff.zu - target))
        alpha = jnp.minimum(1.0, _ETA * _max_step(it, d))
        new = _axpy(it, alpha, d)
        res = kkt_residuals(qp, new, rtol)
        finite = jnp.all(jnp.isfinite(jnp.concatenate(jax.tree.leaves(new))))
        code = jnp.where(res.converged, _OK, _RUNNING)
        code = jnp.where(_primal_infeasible(qp, new, infeasibility_tol), _PINF, code)
        step_taken = jax.tree.map(lambda a: alpha * a, d.x)
        code = jnp.where(_dual_infeasible(qp, step_taken, infeasibility_tol), _DINF, code)
        code = jnp.where(kkt.ok(), code, _LINSOLVE)
        code = jnp.where(finite, code, _NONFINITE)
        # A failed step is not taken: the last finite iterate is returned.
        keep = (code == _NONFINITE) | (code == _LINSOLVE)
        new = jax.tree.map(lambda a, b: jnp.where(keep, a, b), it, new)
        res = jax.tree.map(lambda a, b: jnp.where(keep, a, b), state.res, res)
        return _State(new, res, state.step + 1, code.astype(jnp.int32))

    state = _State(it0, res0, jnp.zeros((), jnp.int32), code0.astype(jnp.int32))
    state = lax.while_loop(cond, body, state)
    code = jnp.where(state.code == _RUNNING, _MAX, state.code).astype(jnp.int32)
    return state.it, state.res, state.step, code
