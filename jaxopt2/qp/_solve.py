"""`solve_qp`: the front door, its result, and the derivatives of the solution.

Derivatives (OptNet; Amos & Kolter, ICML 2017). At a solution w = (x, y, z, z_l, z_u) the
KKT map

    F(w, θ) = (Qx + c + Aᵀy + Gᵀz − z_l + z_u,  Ax − b,  z∘(Gx − h),  z_l∘(l − x),  z_u∘(x − u))

vanishes, θ = (Q, c, A, b, G, h, l, u). By the implicit function theorem dw = −(∂_wF)⁻¹ ∂_θF·dθ.
∂_θF·dθ is `jax.jvp` of F in θ (so every data block, bounds included, is differentiable with
no hand-written formula), and ∂_wF, after eliminating its diagonal complementarity rows, is
the `ReducedKKT` matrix of the interior point at the final iterate (z/s with the solver's own
strictly positive slacks s, i.e. the KKT system relaxed by the final μ ≈ 0): one more Cholesky
factorization, used for both the tangent solve and its transpose. The rule is a `custom_jvp`
whose linear solve is a `lax.custom_linear_solve`, so forward mode (`jax.jvp`, `jacfwd`) and
reverse mode (`grad`, `vjp`, by transposition) both work, under `vmap` too. Derivatives of a
problem whose status is not `successful` are NaN (that problem only).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._compiled import compiled_at_top_level
from .._front import raise_if_failed
from .._results import RESULTS, Status
from ._admm import ADMM, admm, ruiz
from ._interior_point import Iterate, interior_point
from ._problem import QPData, make_qp
from ._stacked import is_operator, stack_dense, stack_operators


class QPSolution(eqx.Module):
    """The result of `solve_qp`.

    - `x`: the solution; `y`: multipliers of Ax = b; `z` (≥ 0): of Gx ≤ h; `z_lower`,
      `z_upper` (≥ 0): of the bounds (0 where a bound is absent). They satisfy
      Qx + c + Aᵀy + Gᵀz − z_lower + z_upper = 0. All differentiable with respect to the data.
    - `value`: the objective ½xᵀQx + cᵀx at `x`.
    - `status`: a `jaxopt2.RESULTS` item, one per problem under `vmap`: `successful`,
      `primal_infeasible`, `dual_infeasible` (unbounded), `max_steps_reached`, `nonfinite`,
      or `linear_solve_failed` (Q not positive semidefinite, detected under a trace).
    - `stats`: `num_steps` and the absolute KKT residuals (∞-norms) at `x`:
      `primal_residual` (of Ax = b, Gx + s = h and the bounds, with the slacks s ≥ 0),
      `dual_residual` (of the stationarity condition above) and `gap` (sᵀz + ..., the
      complementarity, = the duality gap).
    """

    x: jax.Array
    y: jax.Array
    z: jax.Array
    z_lower: jax.Array
    z_upper: jax.Array
    value: jax.Array
    status: RESULTS
    stats: dict[str, jax.Array]
    state: Any = None

    @property
    def success(self) -> jax.Array:
        return self.status == RESULTS.successful

    @property
    def status_code(self) -> jax.Array:
        return self.status.code


def _kkt_map(qp: QPData, x, y, z, zl, zu):
    """F(w, θ) above, with absent bounds masked (their rows read 0·(…) and z = 0)."""
    ml, mu = qp.has_lower, qp.has_upper
    r_d = qp.Q @ x + qp.c + qp.A.T @ y + qp.G.T @ z - ml * zl + mu * zu
    return (r_d, qp.A @ x - qp.b, z * (qp.G @ x - qp.h), ml * zl * (qp.lower - x),
            mu * zu * (x - qp.upper))


def _jacobian_solves(qp: QPData, it: Iterate):
    """(matvec, solve, transpose_solve, split) of J = ∂_wF at the final iterate, on w
    flattened to one vector (`lax.custom_linear_solve` transposes only right-hand sides that
    are wholly linear in the tangents, and one concatenated vector always is).

    J is solved whole, by one LU factorization, with each complementarity row
    z_i·G_i dx − s_i·dz_i = r_i divided by max(z_i, s_i): eliminating dz (the reduced
    system of the interior point) would recover an active multiplier's derivative as
    (z_i G_i dx − r_i)/s_i with s_i ≈ 0, a cancellation that loses every digit, while the
    scaled rows keep all entries in [0, 1] and J well conditioned wherever the solution is
    strictly complementary. Bound blocks are dropped when no bound of that side was given."""
    ml, mu = qp.has_lower, qp.has_upper
    n, p, m = qp.n, qp.b.shape[0], qp.h.shape[0]
    dtype = qp.c.dtype
    s, z = it.s, it.z
    sl, zl, su, zu = it.sl, ml * it.zl, it.su, mu * it.zu
    eye = jnp.eye(n, dtype=dtype)
    blocks = [qp.Q, qp.A.T, qp.G.T]
    sizes = [n, p, m]
    if qp.any_lower:
        blocks.append(-ml[:, None] * eye)
        sizes.append(n)
    if qp.any_upper:
        blocks.append(mu[:, None] * eye)
        sizes.append(n)
    N = sum(sizes)
    rows = [jnp.concatenate(blocks, axis=1), jnp.pad(qp.A, ((0, 0), (0, N - n)))]
    scales = [jnp.ones((n + p,), dtype)]

    def row(coef_x, diag, offset, size):
        # [coef_x, 0, ..., −diag at columns offset.., 0 ...], already divided by its scale
        idx = jnp.arange(size)
        right = jnp.zeros((size, N - n), dtype).at[idx, offset - n + idx].set(-diag)
        return jnp.concatenate([coef_x, right], axis=1)

    m3 = jnp.maximum(z, s)
    rows.append(row((z / m3)[:, None] * qp.G, s / m3, n + p, m))
    scales.append(1 / m3)
    offset = n + p + m
    if qp.any_lower:
        m4 = jnp.maximum(zl, sl)
        rows.append(row(-(zl / m4)[:, None] * eye, sl / m4, offset, n))
        scales.append(1 / m4)
        offset += n
    if qp.any_upper:
        m5 = jnp.maximum(zu, su)
        rows.append(row((zu / m5)[:, None] * eye, su / m5, offset, n))
        scales.append(1 / m5)
    K = jnp.concatenate(rows, axis=0)
    scale = jnp.concatenate(scales)
    lu = jax.scipy.linalg.lu_factor(K)
    cuts = list(np.cumsum(sizes)[:-1])
    zeros = jnp.zeros((n,), dtype)

    def split(v):
        parts = jnp.split(v, cuts)
        dx, dy, dz = parts[:3]
        rest = parts[3:]
        dzl = rest.pop(0) if qp.any_lower else zeros
        dzu = rest.pop(0) if qp.any_upper else zeros
        return dx, dy, dz, dzl, dzu

    def join(parts):
        dx, dy, dz, dzl, dzu = parts
        keep = [dx, dy, dz] + ([dzl] if qp.any_lower else []) + ([dzu] if qp.any_upper else [])
        return jnp.concatenate(keep)

    def matvec(dw):
        dx, dy, dz, dzl, dzu = split(dw)
        return join((qp.Q @ dx + qp.A.T @ dy + qp.G.T @ dz - ml * dzl + mu * dzu,
                     qp.A @ dx, z * (qp.G @ dx) - s * dz, -zl * dx - sl * dzl,
                     zu * dx - su * dzu))

    def solve(_, r):
        return jax.scipy.linalg.lu_solve(lu, scale * r)

    def transpose_solve(_, g):
        return scale * jax.scipy.linalg.lu_solve(lu, g, trans=1)

    return matvec, solve, transpose_solve, split, join


@jax.custom_jvp
def _differentiable(qp: QPData, it: Iterate, ok):
    return it.x, it.y, it.z, qp.has_lower * it.zl, qp.has_upper * it.zu


@_differentiable.defjvp
def _differentiable_jvp(primals, tangents):
    qp, it, ok = primals
    dqp, _, _ = tangents
    out = _differentiable(qp, it, ok)
    _, rhs = jax.jvp(lambda q: _kkt_map(q, *out), (qp,), (dqp,))
    matvec, solve, transpose_solve, split, join = _jacobian_solves(qp, it)
    dw = lax.custom_linear_solve(matvec, join(rhs), solve, transpose_solve)
    nan_if_failed = jnp.where(ok, 1.0, jnp.nan).astype(qp.c.dtype)
    return out, tuple(split(-nan_if_failed * dw))


def _default_rtol(dtype):
    return 1e-9 if jnp.finfo(dtype).eps < 1e-10 else 1e-5


def _check_rtol(rtol) -> None:
    if rtol is not None and not isinstance(rtol, jax.core.Tracer) and not 0 < float(rtol) < 1:
        raise ValueError(f"rtol must be in (0, 1); got {rtol!r}.")


def _precheck(arguments) -> None:
    """The checks of concrete values (NaN, lower > upper, a Q with a negative eigenvalue,
    rtol), for a top-level call (`jaxopt2._compiled`)."""
    _check_rtol(arguments["rtol"])
    data = [arguments[k] for k in ("Q", "c", "A", "b", "G", "h", "lower", "upper")]
    if any(is_operator(M) for M in (data[0], data[2], data[4])):
        stack_operators(*data)
    else:
        make_qp(*data)


@compiled_at_top_level(_precheck)
def solve_qp(Q, c, A=None, b=None, G=None, h=None, lower=None, upper=None, *,
             method: str | ADMM = "ipm", rtol: float | None = None,
             max_steps: int | None = None, infeasibility_tol: float | None = None,
             init: QPSolution | None = None, throw: bool = True) -> QPSolution:
    r"""Solve the convex quadratic program

        minimize ½xᵀQx + cᵀx   subject to   Ax = b,   Gx ≤ h,   lower ≤ x ≤ upper

    by a dense primal-dual interior-point method (Mehrotra's predictor-corrector), to a
    relative KKT residual `rtol`, and make the solution differentiable with respect to every
    input (OptNet-style implicit differentiation of the KKT conditions; forward and reverse
    mode). Pure and traceable: `jax.jit`, `jax.vmap` over a batch of QPs (each with its own
    status; an infeasible one never spoils the others), `jax.grad`.

    **Arguments.** `Q` (n × n, positive semidefinite; only (Q + Qᵀ)/2 is used), `c` (n,);
    `A` (p × n) and `b` (p,) together or neither; `G` (m × n) and `h` (m,) together or
    neither; `lower`/`upper`: scalars or (n,) arrays, ±inf where a bound is absent. All in
    one floating dtype (float32 or float64; float16 is computed in float32).
    `method`: `"ipm"` (default: the interior point, 10–30 factorizations of an n × n
    matrix, accurate to `rtol`), or `"admm"` / a `jaxopt2.qp.ADMM(...)` with options: OSQP's
    operator splitting (Stellato et al. 2020) with one cached Cholesky factor per step-size
    change, many cheap iterations, active-set polishing, and matrix-free data: with
    `method="admm"`, `Q`, `A` and `G` may be functions x ↦ Qx, x ↦ Ax, x ↦ Gx or lineax
    operators (solved by conjugate gradients; not differentiable). `init`: a previous
    `QPSolution` of a problem with the same constraint sizes, to warm-start ADMM (x, the
    multipliers and the adapted step size). `rtol`: the relative KKT tolerance (default 1e-9
    in float64, 1e-5 in float32); `max_steps`: iterations (default 100 for the interior
    point, 10,000 for ADMM); `infeasibility_tol`: the tolerance of the infeasibility
    certificates; `throw`: raise on a failed status outside `vmap` (`throw=False` returns it).
    Derivatives with `method="admm"` (dense data) are those of the interior point: the same
    implicit differentiation of the KKT conditions at the (polished) ADMM solution.

    **Errors.** Wrong shapes, non-floating dtypes, NaN/inf in the data, lower > upper and (for
    concrete data) a Q with a negative eigenvalue raise `ValueError` / `TypeError` saying what
    to fix. Under `jit`/`vmap` a non-convex Q is reported as `linear_solve_failed`.

    Reference: S. Mehrotra, "On the implementation of a primal-dual interior point method",
    SIAM J. Optim. 2 (1992); B. Amos & J. Z. Kolter, "OptNet: differentiable optimization as a
    layer in neural networks", ICML 2017; B. Stellato et al., "OSQP: an operator splitting
    solver for quadratic programs", Math. Prog. Comp. 12 (2020).

    ```python
    import jax, jax.numpy as jnp
    from jaxopt2.qp import solve_qp

    Q = jnp.array([[2.0, 0.5], [0.5, 1.0]]); c = jnp.array([1.0, 1.0])
    G = jnp.array([[-1.0, 0.0]]); h = jnp.array([0.0])         # x₀ ≥ 0
    A = jnp.array([[1.0, 1.0]]); b = jnp.array([1.0])           # x₀ + x₁ = 1
    sol = solve_qp(Q, c, A, b, G, h)
    print(sol.x, sol.y, sol.z, sol.status)                      # x = (0.25, 0.75)
    dx_dc = jax.jacobian(lambda c: solve_qp(Q, c, A, b, G, h).x)(c)
    ```
    """
    if method == "admm":
        method = ADMM()
    if not (method == "ipm" or isinstance(method, ADMM)):
        raise ValueError(f"method must be 'ipm', 'admm' or a jaxopt2.qp.ADMM; got {method!r}.")
    if max_steps is None:
        max_steps = 100 if method == "ipm" else 10_000
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int; got {max_steps!r}.")
    _check_rtol(rtol)
    if isinstance(method, ADMM):
        return _solve_admm(method, Q, c, A, b, G, h, lower, upper, rtol, max_steps,
                           infeasibility_tol, init, throw)
    if init is not None:
        raise ValueError("`init` (a warm start) is used by method='admm' only; the interior "
                         "point starts from its own centred point.")
    if any(is_operator(M) for M in (Q, A, G)):
        raise ValueError("Q, A, G given as functions/operators need method='admm' (matrix-free); "
                         "the interior point needs dense arrays.")
    qp = make_qp(Q, c, A, b, G, h, lower, upper)
    dtype = qp.c.dtype
    rtol = _default_rtol(dtype) if rtol is None else rtol
    if infeasibility_tol is None:
        infeasibility_tol = 1e-7 if jnp.finfo(dtype).eps < 1e-10 else 1e-4
    rtol = jnp.asarray(rtol, dtype)
    it, res, steps, code = interior_point(qp, rtol, max_steps, jnp.asarray(infeasibility_tol,
                                                                           dtype))
    it = lax.stop_gradient(it)
    status = Status(code, RESULTS)
    ok = code == RESULTS.successful._value
    x, y, z, zl, zu = _differentiable(qp, it, ok)
    if throw:
        x = raise_if_failed(x, status, problem=qp.c)
    stats = dict(num_steps=steps, primal_residual=res.primal, dual_residual=res.dual,
                 gap=res.gap)
    value = 0.5 * x @ (qp.Q @ x) + qp.c @ x
    return QPSolution(x, y, z, zl, zu, value, status, stats)


@jax.custom_jvp
def _not_differentiable(x, *data):
    return x


@_not_differentiable.defjvp
def _not_differentiable_jvp(primals, tangents):
    raise NotImplementedError(
        "solve_qp with matrix-free data (Q, A or G given as functions or lineax operators) is "
        "not differentiable; pass dense arrays (method='admm' or 'ipm') to differentiate.")


def _slack(v, floor):
    # Strictly positive slacks for the derivative's complementarity rows: an active
    # constraint (slack ≈ 0) keeps a rounding-level one, so max(z, s) never vanishes.
    return jnp.maximum(v, floor)


def _solve_admm(opts: ADMM, Q, c, A, b, G, h, lower, upper, rtol, max_steps,
                infeasibility_tol, init, throw):
    matrix_free = any(is_operator(M) for M in (Q, A, G))
    if matrix_free:
        st, n, p, m, has_lo, has_up, bounds = stack_operators(Q, c, A, b, G, h, lower, upper)
        qp = None
    else:
        qp = make_qp(Q, c, A, b, G, h, lower, upper)
        st, bounds = stack_dense(qp)
        n, p, m = qp.n, qp.b.shape[0], qp.h.shape[0]
        has_lo, has_up = qp.has_lower, qp.has_upper
    dtype = st.q.dtype
    rtol = jnp.asarray(_default_rtol(dtype) if rtol is None else rtol, dtype)
    if infeasibility_tol is None:
        infeasibility_tol = 1e-6 if jnp.finfo(dtype).eps < 1e-10 else 1e-4
    rows = p + m + (n if bounds else 0)
    rho0 = None
    if init is None:
        x0, y0 = jnp.zeros((n,), dtype), jnp.zeros((rows,), dtype)
    else:
        parts = [init.y, init.z] + ([init.z_upper - init.z_lower] if bounds else [])
        x0 = jnp.asarray(init.x, dtype)
        y0 = jnp.concatenate([jnp.asarray(v, dtype).reshape(-1) for v in parts])
        if x0.shape != (n,) or y0.shape != (rows,):
            raise ValueError("`init` does not match this QP's sizes (x, y, z, z_lower, z_upper "
                             "of a solution of a QP with the same constraints are needed).")
        if isinstance(init.stats, dict) and "rho" in init.stats:
            rho0 = lax.stop_gradient(jnp.asarray(init.stats["rho"], dtype))
    scaled, scaling = st, None
    if opts.scaling:
        if matrix_free:
            raise ValueError("ADMM(scaling=...) (Ruiz equilibration) needs dense Q, A, G; "
                             "with functions/operators pass scaling=0.")
        scaled, scaling = ruiz(st, opts.scaling)
    out = admm(scaled, lax.stop_gradient(x0), lax.stop_gradient(y0), opts, rtol=rtol,
               max_steps=max_steps, infeasibility_tol=jnp.asarray(infeasibility_tol, dtype),
               rho0=rho0, original=st, scaling=scaling)
    status = Status(out.code, RESULTS)
    ok = out.code == RESULTS.successful._value
    yv = lax.stop_gradient(out.y)
    y, z = yv[:p], jnp.maximum(yv[p:p + m], 0.0)
    yb = yv[p + m:] if bounds else jnp.zeros((n,), dtype)
    zl, zu = has_lo * jnp.maximum(-yb, 0.0), has_up * jnp.maximum(yb, 0.0)
    x = lax.stop_gradient(out.x)
    if matrix_free:
        # Every input the solution depends on, the operators' closed-over arrays included,
        # so that differentiating with respect to any of them raises.
        consts = [v for f in (st.P_mv, st.C_mv)
                  for v in jax.closure_convert(lambda v, f=f: f(v), st.q)[1]
                  if jnp.issubdtype(jnp.asarray(v).dtype, jnp.inexact)]
        x = _not_differentiable(x, st.q, st.l, st.u, *consts)
        value = 0.5 * x @ st.P_mv(x) + st.q @ x
    else:
        floor = jnp.finfo(dtype).eps * qp.scale()
        ones = jnp.ones((n,), dtype)
        it = Iterate(x, y, z, _slack(qp.h - qp.G @ x, floor), zl,
                     jnp.where(has_lo > 0, _slack(x - qp.lower, floor), ones), zu,
                     jnp.where(has_up > 0, _slack(qp.upper - x, floor), ones))
        x, y, z, zl, zu = _differentiable(qp, it, ok)
        value = 0.5 * x @ (qp.Q @ x) + qp.c @ x
    if throw:
        x = raise_if_failed(x, status, problem=st.q)
    stats = dict(num_steps=out.steps, primal_residual=out.primal, dual_residual=out.dual,
                 gap=out.gap, polished=out.polished, rho=out.rho)
    return QPSolution(x, y, z, zl, zu, value, status, stats)
