"""Entropic OT between point clouds with the cost formed on the fly, block by block.

Sinkhorn needs the cost matrix only inside its two log-sum-exp reductions,
LSEⱼ(vⱼ − Cᵢⱼ/ε) over each row and LSEᵢ(uᵢ − Cᵢⱼ/ε) over each column. Here both are taken
over blocks: a block of `block_size` points of one cloud against the whole other cloud, its
costs formed from the points, reduced, and dropped. Memory is O(block_size·max(n, m)), never
n·m, so 10⁴ × 10⁴ problems (or larger) fit where the dense matrix (800 MB in float64) would not.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._compiled import compiled_at_top_level
from .._front import check_max_steps, guard_derivatives, raise_if_failed
from .._leafwise import is_concrete
from .._loops import while_loop
from .._results import RESULTS
from ._problem import DERIVATIVE_HINT, FAILURE_HINT, default_rtol
from ._problem import _fail as fail

_NAME = "sinkhorn_points"


class PointsOTResult(eqx.Module):
    """The result of [`sinkhorn_points`][jaxopt2.ot.sinkhorn_points] (no plan, no cost matrix).

    - `f`, `g`: the dual potentials (n and m), normalised to Σf = Σg. The plan's rows for a
      block of points `x[i0:i1]` are `exp((f[i0:i1, None] + g[None, :] − C_block)/ε)` with
      `C_block` the costs of that block against all of `y` (e.g.
      `jax.vmap(jax.vmap(c, (None, 0)), (0, None))(x[i0:i1], y)`).
    - `transport_cost`: <C, P>; `regularized_cost`: the dual value <f, a> + <g, b> − ε ΣP,
      equal at the solution to <C, P> + ε Σ P(log P − 1).
    - `marginal_errors`: (‖P1 − a‖₁, ‖Pᵀ1 − b‖₁) at the returned potentials.
    - `status`: `successful` when both errors meet `atol + rtol·Σa`; `max_steps_reached`;
      `nonfinite`. `stats`: `num_steps` (Sinkhorn iterations, int32).

    Only `regularized_cost` carries derivatives (with respect to x, y, a, b and ε, by the
    envelope theorem); `f`, `g` and `transport_cost` are constants to `jax.grad`.
    """

    f: jax.Array
    g: jax.Array
    transport_cost: jax.Array
    regularized_cost: jax.Array
    marginal_errors: jax.Array
    status: RESULTS
    stats: dict

    @property
    def success(self) -> jax.Array:
        return self.status == RESULTS.successful


def _fail(message: str):
    fail(_NAME, message)


def _sqeuclidean(x, y):
    # ‖x‖² + ‖y‖² − 2x·y: one matmul per block; clipped at 0 against cancellation
    d = jnp.sum(x**2, -1)[:, None] + jnp.sum(y**2, -1)[None, :] - 2 * x @ y.T
    return jnp.maximum(d, 0.0)


def _block_cost(cost):
    if isinstance(cost, str):
        if cost != "sqeuclidean":
            _fail(f"`cost` must be \"sqeuclidean\" or a callable c(xi, yj) -> scalar; got "
                  f"{cost!r}.")
        return _sqeuclidean
    if not callable(cost):
        _fail(f"`cost` must be \"sqeuclidean\" or a callable c(xi, yj) -> scalar; got {cost!r}.")
    return jax.vmap(jax.vmap(cost, (None, 0)), (0, None))


def _blocks(z, size):
    """z (k, d) padded (with copies of its first row) to a multiple of `size`, as
    (k_padded/size, size, d)."""
    k = z.shape[0]
    pad = -k % size
    z = jnp.concatenate([z, jnp.broadcast_to(z[:1], (pad,) + z.shape[1:])]) if pad else z
    return z.reshape((-1, size) + z.shape[1:])


def _lse_over_blocks(cost_fn, blocks, others, w, epsilon, k):
    """For each point p of `blocks` (the rows): LSE over q of (w_q − c(p, q)/ε); first k."""
    def one(block):
        return jax.nn.logsumexp(w[None, :] - cost_fn(block, others) / epsilon, axis=1)
    return jax.lax.map(one, blocks).reshape(-1)[:k]


def _check(x, y, a, b, epsilon, rtol, atol, block_size):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] < 1 or y.shape[0] < 1:
        _fail(f"`x` and `y` must be point clouds of shape (n, d) and (m, d), n, m ≥ 1; got "
              f"{x.shape} and {y.shape}. For batches of problems, jax.vmap the solver.")
    n, m = x.shape[0], y.shape[0]
    # default weights in the points' dtype (float32 points stay float32 under x64)
    wdtype = jnp.result_type(float, x.dtype, y.dtype)
    a = jnp.full((n,), 1.0 / n, wdtype) if a is None else jnp.asarray(a)
    b = jnp.full((m,), 1.0 / m, wdtype) if b is None else jnp.asarray(b)
    if a.shape != (n,) or b.shape != (m,):
        _fail(f"`a` and `b` must have shapes ({n},) and ({m},) (one weight per point); got "
              f"{a.shape} and {b.shape}.")
    epsilon = jnp.asarray(epsilon)
    if epsilon.ndim != 0:
        _fail(f"`epsilon` must be a scalar; got shape {epsilon.shape}.")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        _fail(f"`block_size` must be a positive int; got {block_size!r}.")
    for name, z in (("x", x), ("y", y), ("a", a), ("b", b), ("epsilon", epsilon)):
        if jnp.issubdtype(z.dtype, jnp.complexfloating):
            _fail(f"`{name}` must hold real numbers; got dtype {z.dtype}.")
    dtype = jnp.result_type(float, x.dtype, y.dtype, a.dtype, b.dtype)
    x, y, a, b, epsilon = (jnp.asarray(z, dtype) for z in (x, y, a, b, epsilon))
    rtol = default_rtol(dtype) if rtol is None else rtol
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if is_concrete(tol) and not np.all(np.asarray(tol) >= 0):
            _fail(f"`{name}` must be ≥ 0; got {tol!r}.")
    if is_concrete((x, y, a, b, epsilon)):
        with jax.ensure_compile_time_eval():
            x_np, y_np, a_np, b_np, e_np = (np.asarray(z) for z in (x, y, a, b, epsilon))
        if not (np.all(np.isfinite(x_np)) and np.all(np.isfinite(y_np))):
            _fail("`x` and `y` must be finite.")
        for name, w in (("a", a_np), ("b", b_np)):
            if not (np.all(w > 0) and np.all(np.isfinite(w))):
                _fail(f"`{name}` must be strictly positive and finite; drop points of zero mass.")
        if abs(a_np.sum() - b_np.sum()) > 1e-4 * max(a_np.sum(), b_np.sum()):
            _fail(f"`a` and `b` must have the same total mass; got {a_np.sum():.6g} and "
                  f"{b_np.sum():.6g}. Normalise both.")
        if not (np.isfinite(e_np) and e_np > 0):
            _fail(f"`epsilon` must be positive and finite; got {float(e_np)!r}.")
    bad = ~jnp.all(jnp.isfinite(x)) | ~jnp.all(jnp.isfinite(y)) | ~jnp.all(a > 0)
    bad = bad | ~jnp.all(b > 0) | ~jnp.all(jnp.isfinite(a)) | ~jnp.all(jnp.isfinite(b))
    bad = bad | ~(epsilon > 0) | ~jnp.isfinite(epsilon)
    bad = bad | (jnp.abs(a.sum() - b.sum()) > 1e-4 * jnp.maximum(a.sum(), b.sum()))
    return x, y, a, b, epsilon, rtol, bad


def _plan_sums(cost_fn, x, y, f, g, epsilon, block_size, pull: bool = True):
    """Blockwise over rows of x: the plan's total mass, <C, P>, Σ P·(f ⊕ g − C)/ε, the
    pullback of P through the cost to x (Σⱼ Pᵢⱼ ∇ₓc(xᵢ, yⱼ)) and to y."""
    n = x.shape[0]
    xb = _blocks(x, block_size)
    # padded rows get f = −∞, hence P = 0: they add nothing to any sum or gradient
    fb = jnp.concatenate([f, jnp.full((-n % block_size,), -jnp.inf, f.dtype)])
    fb = fb.reshape(xb.shape[0], block_size)

    def step(gy, blk):
        xs, fs = blk
        if pull:
            c, back = jax.vjp(cost_fn, xs, y)
        else:
            c = cost_fn(xs, y)
        logp = (fs[:, None] + g[None, :] - c) / epsilon
        p = jnp.exp(logp)
        dx, dy = back(p) if pull else (jnp.zeros_like(xs), gy)
        plp = jnp.sum(jnp.where(p > 0, p * logp, 0.0))
        return gy + dy if pull else gy, (jnp.sum(p), jnp.sum(p * c), plp, dx)

    gy, (mass, tc, plp, gx) = jax.lax.scan(step, jnp.zeros_like(y), (xb, fb))
    gx = gx.reshape((-1,) + x.shape[1:])[:n]
    return jnp.sum(mass), jnp.sum(tc), jnp.sum(plp), gx, gy


def _value(cost_fn, block_size, x, y, a, b, epsilon, f, g):
    mass, *_ = _plan_sums(cost_fn, x, y, f, g, epsilon, block_size)
    return jnp.dot(f, a) + jnp.dot(g, b) - epsilon * mass


_value = jax.custom_vjp(_value, nondiff_argnums=(0, 1))


def _value_fwd(cost_fn, block_size, x, y, a, b, epsilon, f, g):
    mass, _, plp, gx, gy = _plan_sums(cost_fn, x, y, f, g, epsilon, block_size)
    # ∂φ/∂ε at fixed (f, g): −ΣP + Σ P·(f ⊕ g − C)/ε
    return jnp.dot(f, a) + jnp.dot(g, b) - epsilon * mass, (f, g, gx, gy, plp - mass)


def _value_bwd(cost_fn, block_size, res, ct):
    # envelope theorem: at the optimum the value's derivative is φ's partial derivative at
    # fixed (f, g); ∂φ/∂C = P, pulled back to the points; ∂φ/∂(f, g) = marginal residual ≈ 0
    f, g, gx, gy, deps = res
    return (ct * gx, ct * gy, ct * f, ct * g, ct * deps, jnp.zeros_like(f), jnp.zeros_like(g))


_value.defvjp(_value_fwd, _value_bwd)


def _precheck(arguments) -> None:
    """`_check`'s concrete-value checks, for a top-level call (`jaxopt2._compiled`)."""
    _check(*(arguments[k] for k in ("x", "y", "a", "b", "epsilon", "rtol", "atol",
                                    "block_size")))


@compiled_at_top_level(_precheck, FAILURE_HINT)
def sinkhorn_points(x, y, a=None, b=None, epsilon=1e-2, *,
                    cost: str | Callable = "sqeuclidean", block_size: int = 256,
                    rtol: float | None = None, atol: float = 0.0, max_steps: int = 10_000,
                    relaxation: float = 1.0, throw: bool = True) -> PointsOTResult:
    r"""Entropic optimal transport between two point clouds, never forming the cost matrix.

    Solves the same problem as [`sinkhorn`][jaxopt2.ot.sinkhorn] for Cᵢⱼ = c(xᵢ, yⱼ), by
    log-domain Sinkhorn (plain by default),

        u ← log a − LSEⱼ(v − C/ε),   v ← log b − LSEᵢ(u − C/ε)   (f = εu, g = εv),

    with each log-sum-exp taken over blocks of `block_size` points against the whole other
    cloud: costs are formed from the points inside `lax.map`, reduced and dropped, so memory is
    O(block_size·max(n, m) + (n + m)·d), never n·m, at the price of recomputing the costs every
    half-step (n·m cost evaluations per iteration). It stops, like `sinkhorn`, when the L1
    errors of both marginals, at the same potentials, are at most `atol + rtol·Σa`.

    Use it when n·m entries do not fit (e.g. 10⁴ × 10⁴ and up); for smaller problems build the
    matrix and call `sinkhorn` (over-relaxed, far fewer iterations at small ε) or
    [`sinkhorn_newton_sparse`][jaxopt2.ot.sinkhorn_newton_sparse]. SNS is not offered on point
    clouds: its sparse Hessian keeps the plan's largest entries, which takes a pass over all
    n·m entries per Newton step and O(nnz) memory for the kept entries, and its CG solve
    needs them stored.

    Derivatives: `regularized_cost`, the optimal dual value, is differentiable with respect to
    `x`, `y`, `a`, `b` and `epsilon` by the envelope theorem (a custom VJP, one blockwise pass):
    ∂/∂xᵢ = Σⱼ Pᵢⱼ ∇ₓc(xᵢ, yⱼ), ∂/∂yⱼ = Σᵢ Pᵢⱼ ∇_y c(xᵢ, yⱼ), ∂/∂a = f, ∂/∂b = g,
    ∂/∂ε = Σ P(log P − 1). Reverse mode only; exact at the solution, so the error is of the
    order of the marginal tolerance. Of a failed solve, the derivatives are NaN (and raise with
    `throw`).

    Args:
        x, y: the point clouds, (n, d) and (m, d') (d = d' for "sqeuclidean").
        a, b: the weights, (n,) and (m,), strictly positive with Σa = Σb; default uniform.
        epsilon: the regularisation ε > 0, in the units of the cost.
        cost: "sqeuclidean" (‖xᵢ − yⱼ‖², by one matmul per block) or a callable
            `c(xi, yj) -> scalar` (vmapped over each block; must be differentiable for
            derivatives with respect to the points).
        block_size: points per block (a static int); memory grows like block_size·max(n, m).
        rtol, atol: tolerance on each marginal's L1 error, `atol + rtol·Σa`; `rtol` defaults
            to 1e-6 in float64 and 1e-4 in float32.
        max_steps: the budget of Sinkhorn iterations (a static int).
        relaxation: a fixed over-relaxation ω in (0, 2), each update becoming
            x ← (1 − ω)x + ω·(Sinkhorn's update); 1.0 (default) is plain Sinkhorn. Values
            such as 1.5–1.9 cut the iterations severalfold at small ε (same solution); there
            is no adaptive ω here (`sinkhorn`'s adapts it).
        throw: raise on failure outside `vmap`; under `vmap` each problem has its own status.

    Returns:
        A [`PointsOTResult`][jaxopt2.ot.PointsOTResult]: potentials, transport and regularised
        costs, marginal errors, status and `stats["num_steps"]`; no plan (see the result's
        docstring for a block of its rows).

    Example:
        ```python
        import jax
        from jaxopt2 import ot
        x = jax.random.uniform(jax.random.key(0), (5000, 2))
        y = jax.random.normal(jax.random.key(1), (4000, 2))
        out = ot.sinkhorn_points(x, y, epsilon=0.1, block_size=512)
        print(out.status, out.stats["num_steps"], out.regularized_cost)
        dx = jax.grad(lambda x: ot.sinkhorn_points(x, y, epsilon=0.1).regularized_cost)(x)
        ```
    """
    check_max_steps(max_steps)
    if not (isinstance(relaxation, (int, float)) and not isinstance(relaxation, bool)
            and 0 < relaxation < 2):
        _fail(f"`relaxation` must be a number in (0, 2) (1.0: plain Sinkhorn); got "
              f"{relaxation!r}.")
    omega = float(relaxation)
    cost_fn = _block_cost(cost)
    x, y, a, b, epsilon, rtol, invalid = _check(x, y, a, b, epsilon, rtol, atol, block_size)
    n, m = x.shape[0], y.shape[0]
    tol = atol + rtol * jnp.sum(a)
    xs, ys = jax.lax.stop_gradient((x, y))
    eps = jax.lax.stop_gradient(epsilon)
    # an invalid traced problem runs no iteration: NaN potentials, nonfinite status
    eps = jnp.where(invalid, jnp.nan, eps)
    la, lb = jax.lax.stop_gradient((jnp.log(a), jnp.log(b)))
    aa, bb = jax.lax.stop_gradient((a, b))
    xb, yb = _blocks(xs, min(block_size, n)), _blocks(ys, min(block_size, m))

    def rows(v):  # LSEⱼ(vⱼ − Cᵢⱼ/ε) for every i
        return _lse_over_blocks(cost_fn, xb, ys, v, eps, n)

    def cols(u):  # LSEᵢ(uᵢ − Cᵢⱼ/ε) for every j
        return _lse_over_blocks(lambda q, p: cost_fn(p, q).T, yb, xs, u, eps, m)

    def errors(u, v, lse_v, lse_u):
        return jnp.stack([jnp.sum(jnp.abs(jnp.exp(u + lse_v) - aa)),
                          jnp.sum(jnp.abs(jnp.exp(v + lse_u) - bb))])

    def body(c):
        u = (1 - omega) * c["u"] + omega * (la - c["lse_v"])
        lse_u = cols(u)
        v = (1 - omega) * c["v"] + omega * (lb - lse_u)
        lse_v = rows(v)
        err = errors(u, v, lse_v, lse_u)
        return dict(u=u, v=v, lse_v=lse_v, err=err, steps=c["steps"] + 1)

    def cond(c):
        worst = jnp.max(c["err"])
        return (worst > tol) & (c["steps"] < max_steps) & jnp.isfinite(worst)

    v0 = jnp.zeros_like(bb) + jnp.where(invalid, jnp.nan, 0.0)
    # a finite "error" to start: the loop's condition stops on a non-finite one
    big = jnp.full((2,), jnp.finfo(aa.dtype).max, aa.dtype)
    init = dict(u=jnp.zeros_like(aa), v=v0, lse_v=rows(v0), err=big,
                steps=jnp.zeros((), jnp.int32))
    c = while_loop(cond, body, init, max_steps=max_steps)
    u, v = c["u"], c["v"]
    # final errors at the returned potentials (the loop's, recomputed: one more column pass)
    err = errors(u, v, c["lse_v"], cols(u))
    f, g = u * eps, v * eps
    shift = (jnp.sum(f) - jnp.sum(g)) / (n + m)
    f, g = f - shift, g + shift
    finite = jnp.all(jnp.isfinite(err)) & jnp.all(jnp.isfinite(f)) & jnp.all(jnp.isfinite(g))
    status = RESULTS.where(~finite, RESULTS.nonfinite,
                           RESULTS.where(jnp.all(err <= tol), RESULTS.successful,
                                         RESULTS.max_steps_reached))
    if throw:
        f = raise_if_failed(f, status, FAILURE_HINT)
    _, transport, *_ = _plan_sums(cost_fn, xs, ys, f, g, eps, min(block_size, n), pull=False)
    value = _value(cost_fn, min(block_size, n), x, y, a, b, epsilon, f, g)
    value = guard_derivatives(value, status, throw=throw, unconverged=False,
                              hint=DERIVATIVE_HINT)
    return PointsOTResult(f=f, g=g, transport_cost=transport, regularized_cost=value,
                          marginal_errors=err, status=status, stats={"num_steps": c["steps"]})
