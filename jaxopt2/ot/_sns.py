"""Sinkhorn-Newton-Sparse (Tang et al., 2024) for entropic optimal transport."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .._compiled import compiled_at_top_level
from .._front import check_max_steps
from .._linalg.cg import truncated_cg
from .._loops import while_loop
from ._problem import FAILURE_HINT, OTResult, finish, invalid_mask, precheck, prepare
from ._sinkhorn import _lse_cols, _lse_rows, check_relaxation, overrelaxed_loop, start_state


def sparsify(P, size: int, bisections: int = 24):
    """The `size` largest entries of P, as fixed-size coordinates: (rows, cols, keep), each
    of length `size`; `keep` is False on padding (fewer entries above the threshold).

    The threshold τ is found by bisection on log τ over [log max P − 60, log max P] (entries
    below e⁻⁶⁰·max P carry nothing a Newton step can see), each step one count of P ≥ τ;
    the kept set is {P ≥ τ} with at most `size` members, gathered by a fixed-size
    `nonzero`. Cost: `bisections` + 1 passes of compare-and-count over P, about 10 Sinkhorn
    iterations' worth (a `top_k` over P, per line or global, sorts: ~100).
    """
    top = jnp.log(jnp.max(P))

    def count(log_tau):
        return jnp.sum(P >= jnp.exp(log_tau))

    # invariant: count(hi) ≤ size < count(lo), unless the floor already keeps ≤ size
    floor = top - 60.0
    few = count(floor) <= size

    def body(_, c):
        lo, hi = c
        mid = (lo + hi) / 2
        over = count(mid) > size
        return jnp.where(over, mid, lo), jnp.where(over, hi, mid)

    _, hi = jax.lax.fori_loop(0, bisections, body, (floor, top))
    mask = P >= jnp.exp(jnp.where(few, floor, hi))
    rows, cols = jnp.nonzero(mask, size=size, fill_value=0)
    keep = jnp.arange(size) < jnp.sum(mask)
    return rows.astype(jnp.int32), cols.astype(jnp.int32), keep


@compiled_at_top_level(precheck("sinkhorn_newton_sparse"), FAILURE_HINT)
def sinkhorn_newton_sparse(cost, a=None, b=None, epsilon=1e-2, *, rtol: float | None = None,
                           atol: float = 0.0, max_steps: int = 2_000,
                           switch_rtol: float | None = None, max_warmup_steps: int | None = None,
                           sparsity: int | None = None, cg_max_steps: int = 300,
                           max_backtracks: int = 20, refresh_every: int = 10,
                           min_peak_mass: float = 0.12, relaxation: float | str = "adaptive",
                           init=None, throw: bool = True) -> OTResult:
    r"""Entropic optimal transport by Sinkhorn-Newton-Sparse (SNS).

    The same problem and result as [`sinkhorn`][jaxopt2.ot.sinkhorn]. Two stages on the
    concave dual φ(u, v) = <u, a> + <v, b> − Σᵢⱼ exp(uᵢ + vⱼ − Cᵢⱼ/ε) (u = f/ε, v = g/ε):

    1. Sinkhorn iterations, over-relaxed as in `sinkhorn` (`relaxation`), until both
       marginals' L1 error is at most `switch_rtol·Σa` (or `max_warmup_steps`), which brings
       the potentials into Newton's region of fast convergence (measured at n = m = 1000,
       ε = 1e-3: after 30 iterations Newton needs ~43 mostly damped steps, after 100 it
       needs 5). Newton then takes over only if the plan is nearly sparse: if the largest
       entry of each row together carry at least `min_peak_mass` of the plan's mass (true
       for small ε); otherwise the sparse Hessian is little better than its diagonal, and
       (over-relaxed) Sinkhorn runs to the end, continuing the warm-up's ω (SNS then costs
       what `sinkhorn` does, plus one max pass).
    2. Newton steps. The Hessian −∇²φ = [[diag(P1), P], [Pᵀ, diag(Pᵀ1)]] is replaced by
       [[diag(P1), S], [Sᵀ, diag(Pᵀ1)]], S the plan's r(n + m) largest entries
       (r = `sparsity`; a fixed size, so it jits; see `sparsify`), a positive semidefinite,
       diagonally dominant approximation that is near exact once the plan concentrates, as
       it does for small ε. The step d solves that system by
       Jacobi-preconditioned CG with matrix-free sparse products (gathers and
       `segment_sum`), O(r(n + m)) per CG iteration; the null direction (1, −1) of the dual
       (φ is invariant under (u + c, v − c)) is removed by adding (1, −1)(1, −1)ᵀ times the
       mean diagonal, which leaves the step orthogonal to it. A backtracking line search
       accepts the largest t ∈ {1, ½, ¼, ...} with Armijo's increase of φ (the change in φ
       computed as a sum of differences, so float32 resolves it) or a smaller marginal
       error. When no t is accepted, the step is a Sinkhorn iteration instead.

    Each Newton step costs O(nm) like a Sinkhorn iteration (one exponential of the plan per
    trial point and its row and column sums), plus, every `refresh_every` steps and after a
    failed step, about 25 compare-and-count passes over the plan for a new sparsity pattern
    (between refreshes the pattern's values are recomputed from the current potentials,
    O(r(n + m))); far fewer are needed: convergence is superlinear near the solution.
    `num_steps` counts Sinkhorn iterations plus Newton steps. Memory: the plan is formed
    (n × m), so SNS needs the dense cost matrix, as `sinkhorn` does.

    Differences from the paper: the warm-up is over-relaxed Sinkhorn; the largest entries are
    found by a bisection on the threshold, not a sort (a `top_k` over n·m entries costs
    XLA:CPU about a hundred Sinkhorn iterations); the line search also accepts a decrease of
    the marginal error; the switch point is an error level, not only a step count.

    Reference: X. Tang, M. Shavlovsky, H. Rahmanian, E. Tardini, K. K. Thekumparampil,
    T. Xiao, L. Ying, "Accelerating Sinkhorn Algorithm with Sparse Newton Iterations",
    ICLR 2024.

    Args:
        cost, a, b, epsilon, rtol, atol, init, throw: as for `sinkhorn`.
        max_steps: the budget of Sinkhorn iterations plus Newton steps (static int).
        switch_rtol: the marginal error (relative to Σa) at which Newton takes over
            (default 0.1).
        max_warmup_steps: the most Sinkhorn iterations before switching (default 100).
        sparsity: r, the entries kept per row or column on average (static int, default
            20: the plan's r(n + m) largest entries, at most n·m).
        cg_max_steps: CG iterations per Newton step (default 300; each costs O(r(n + m))).
        max_backtracks: halvings of the Newton step before falling back to Sinkhorn.
        refresh_every: Newton steps between recomputations of the sparsity pattern.
        min_peak_mass: the switch's sparsity test (above); 0 always switches, 1 never.
        relaxation: the Sinkhorn stages' over-relaxation, as for `sinkhorn` ("adaptive"
            or a fixed ω in (0, 2); 1.0: plain Sinkhorn).

    Returns:
        An [`OTResult`][jaxopt2.ot.OTResult]; `stats` also has `num_newton_steps` and
        `num_cg_steps`. Differentiable with respect to `cost`, `a`, `b`, `epsilon` by the
        implicit function theorem, as for `sinkhorn`.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from jaxopt2 import ot
        x = jax.random.uniform(jax.random.key(0), (200, 2))
        y = jax.random.normal(jax.random.key(1), (150, 2))
        C = jnp.sum((x[:, None] - y[None]) ** 2, -1); C = C / C.mean()
        out = ot.sinkhorn_newton_sparse(C, epsilon=1e-3, rtol=1e-4)
        print(out.status, out.stats["num_steps"], out.stats["num_newton_steps"])
        ```
    """
    check_max_steps(max_steps)
    for name, value, low in (("sparsity", sparsity, 1), ("cg_max_steps", cg_max_steps, 1),
                             ("max_backtracks", max_backtracks, 0),
                             ("max_warmup_steps", max_warmup_steps, 0),
                             ("refresh_every", refresh_every, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < low):
            raise ValueError(f"`jaxopt2.ot.sinkhorn_newton_sparse`: `{name}` must be a Python "
                             f"int ≥ {low}; got {value!r}.")
    relaxation = check_relaxation("sinkhorn_newton_sparse", relaxation)
    cost, a, b, epsilon, rtol = prepare("sinkhorn_newton_sparse", cost, a, b, epsilon, rtol,
                                        atol)
    n, m = cost.shape
    size = min((20 if sparsity is None else sparsity) * (n + m), n * m)
    warmup = min(100 if max_warmup_steps is None else max_warmup_steps, max_steps)
    invalid = invalid_mask(cost, a, b, epsilon)
    mass = jnp.sum(a)
    tol = atol + rtol * mass
    switch_tol = jnp.maximum((1e-1 if switch_rtol is None else switch_rtol) * mass, tol)
    cost_scaled = jnp.where(invalid, jnp.nan, cost / epsilon)
    log_a, log_b = jnp.log(a), jnp.log(b)

    u0 = jnp.zeros_like(a) if init is None else jnp.asarray(init[0], a.dtype) / epsilon
    u, v, warm_steps, _, warm = overrelaxed_loop(cost_scaled, log_a, log_b, a, b, u0,
                                                 switch_tol, warmup, relaxation=relaxation)

    def evaluate(u, v):
        P = jnp.exp(u[:, None] + v[None, :] - cost_scaled)
        rows, cols = jnp.sum(P, axis=1), jnp.sum(P, axis=0)
        err = jnp.sum(jnp.abs(rows - a)) + jnp.sum(jnp.abs(cols - b))
        return P, rows, cols, err

    def pattern(P):
        return sparsify(P, size)

    def newton_direction(u, v, rows, cols, err, sparse):
        ri, ci, keep = sparse
        # the pattern may be a few steps old; its values are always current
        vals = jnp.where(keep, jnp.exp(u[ri] + v[ci] - cost_scaled[ri, ci]), 0.0)
        shift = jnp.mean(jnp.concatenate([rows, cols])) / (n + m)

        def matvec(x):
            du, dv = x
            along = jnp.sum(du) - jnp.sum(dv)
            hu = rows * du + jax.ops.segment_sum(vals * dv[ci], ri, n) + shift * along
            hv = cols * dv + jax.ops.segment_sum(vals * du[ri], ci, m) - shift * along
            return hu, hv

        diag_u, diag_v = rows + shift, cols + shift
        grad = (a - rows, b - cols)
        # forcing term: loose far away, tight (superlinear steps) near the solution
        forcing = jnp.clip(err / mass, 1e-10, 0.1)
        result = truncated_cg(matvec, grad, rtol=forcing, max_iters=cg_max_steps,
                              precond=lambda x: (x[0] / diag_u, x[1] / diag_v))
        return result.x, grad, result.num_iters

    def line_search(u, v, P, err, d, grad):
        du, dv = d
        slope = jnp.vdot(grad[0], du) + jnp.vdot(grad[1], dv)
        linear = jnp.vdot(a, du) + jnp.vdot(b, dv)

        def trial(t):
            ut, vt = u + t * du, v + t * dv
            Pt, rows_t, cols_t, err_t = evaluate(ut, vt)
            gain = t * linear - jnp.sum(Pt - P)  # φ(x + td) − φ(x), as a sum of differences
            ok = jnp.isfinite(err_t) & jnp.isfinite(gain) & (
                (gain >= 1e-4 * t * slope) | (err_t < err))
            return ok, (ut, vt, Pt, rows_t, cols_t, err_t)

        def cond(c):
            k, ok, _, _ = c
            return ~ok & (k <= max_backtracks)

        def body(c):
            k, _, t, _ = c
            ok, point = trial(t)
            return k + 1, ok, t * 0.5, point

        zero = jnp.zeros((), jnp.int32)
        start = (u, v, P, jnp.zeros_like(a), jnp.zeros_like(b), err)
        _, ok, _, point = while_loop(cond, body, (zero, slope <= 0, jnp.ones((), a.dtype),
                                                  start), max_steps=max_backtracks + 1)
        return ok & (slope > 0), point

    def sinkhorn_step(u, v):
        u = log_a - _lse_rows(v, cost_scaled)
        v = log_b - _lse_cols(u, cost_scaled)
        return (u, v, *evaluate(u, v))

    def cond(c):
        return (c["err"] > tol) & (c["steps"] < max_steps) & jnp.isfinite(c["err"]) & use_newton

    def body(c):
        # a new sparsity pattern every `refresh_every` steps and after a failed Newton step
        stale = (c["age"] >= refresh_every) | ~c["last_ok"]
        sparse = jax.lax.cond(stale, lambda: pattern(c["P"]), lambda: c["sparse"])
        u, v = c["u"], c["v"]
        d, grad, cg_iters = newton_direction(u, v, c["rows"], c["cols"], c["err"], sparse)
        ok, point = line_search(u, v, c["P"], c["err"], d, grad)
        point = jax.lax.cond(ok, lambda: point, lambda: sinkhorn_step(u, v))
        return dict(zip(("u", "v", "P", "rows", "cols", "err"), point, strict=True),
                    steps=c["steps"] + 1, newton=c["newton"] + ok.astype(jnp.int32),
                    cg=c["cg"] + cg_iters, sparse=sparse, last_ok=ok,
                    age=jnp.where(stale, 1, c["age"] + 1))

    zero = jnp.zeros((), jnp.int32)
    P, rows, cols, err = evaluate(u, v)
    # Newton only pays when the plan is nearly sparse (small ε): otherwise the sparse Hessian
    # is little better than its diagonal and Sinkhorn goes on alone
    # (measured on the benchmark's problem, after 0 to 30 Sinkhorn iterations: the rows'
    # largest entries carry 1% of the mass at ε = 1e-1, 8% at 1e-2, 16-19% at 3e-3 and
    # 28-34% at 1e-3; the 20 largest per row 18%, 62-75%, 90-97%, 99%)
    use_newton = jnp.sum(jnp.max(P, axis=1)) >= min_peak_mass * jnp.sum(P)
    first = jax.lax.cond(use_newton, lambda: pattern(P), lambda: jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(pattern, P)))
    state = dict(u=u, v=v, P=P, rows=rows, cols=cols, err=err, steps=warm_steps, newton=zero,
                 cg=zero, sparse=first, last_ok=jnp.array(True), age=jnp.ones((), jnp.int32))
    c = while_loop(cond, body, state, max_steps=max_steps)
    u, v, steps, newton, cg = c["u"], c["v"], c["steps"], c["newton"], c["cg"]
    # without Newton (or past a Newton stage that ran out of steps) Sinkhorn finishes: the
    # warm-up's run continued, or after Newton a fresh one (a new adaptation of ω)
    loop = partial(overrelaxed_loop, cost_scaled, log_a, log_b, a, b, relaxation=relaxation)
    omega = 1.0 if relaxation is None else relaxation
    resume = jax.lax.cond(use_newton, lambda: start_state(cost_scaled, log_b, a, u, omega),
                          lambda: warm)
    u, v, more, *_ = loop(u, tol, max_steps, max_steps - steps, resume=resume)
    steps = steps + more
    stats = dict(num_steps=steps, num_sinkhorn_steps=steps - newton, num_newton_steps=newton,
                 num_cg_steps=cg)
    return finish("sinkhorn_newton_sparse", u, v, cost, a, b, epsilon, tol, stats, invalid,
                  throw)
