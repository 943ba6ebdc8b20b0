"""Log-domain Sinkhorn for entropic optimal transport."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._compiled import compiled_at_top_level
from .._front import check_max_steps
from .._loops import while_loop
from ._problem import FAILURE_HINT, OTResult, finish, invalid_mask, precheck, prepare


def _lse_rows(v, cost_scaled):
    return jax.nn.logsumexp(v[None, :] - cost_scaled, axis=1)


def _lse_cols(u, cost_scaled):
    return jax.nn.logsumexp(u[:, None] - cost_scaled, axis=0)


def check_relaxation(fname: str, relaxation):
    """None for "adaptive", else the fixed ω as a float in (0, 2)."""
    if isinstance(relaxation, str) and relaxation == "adaptive":
        return None
    if isinstance(relaxation, (int, float)) and not isinstance(relaxation, bool) and (
            0 < relaxation < 2):
        return float(relaxation)
    raise ValueError(f"`jaxopt2.ot.{fname}`: `relaxation` must be \"adaptive\" or a number in "
                     f"(0, 2) (1.0: plain Sinkhorn); got {relaxation!r}.")


def _exp(x):
    # a marginal far off in an over-relaxed transient overflows float32's exp (x > 88): cap
    # it, so the error stays finite (and huge: the loop goes on, ω backs off); NaN stays NaN
    return jnp.exp(jnp.minimum(x, 0.5 * jnp.log(jnp.finfo(x.dtype).max)))


def start_state(cost_scaled, log_b, a, u, omega):
    """`overrelaxed_loop`'s state at potentials u: a plain v-update first (columns exact; not
    counted as a step), ω as given (1 to adapt from scratch)."""
    v = log_b - _lse_cols(u, cost_scaled)
    lse_v = _lse_rows(v, cost_scaled)
    row_err = jnp.sum(jnp.abs(jnp.exp(u + lse_v) - a))
    zero = jnp.zeros((), jnp.int32)
    return dict(u=u, v=v, lse_v=lse_v, worst=row_err, steps=zero,
                omega=jnp.asarray(omega, u.dtype), ref=row_err, low=row_err,
                settle=jnp.array(False), since=zero, peak=jnp.zeros((), u.dtype))


def overrelaxed_loop(cost_scaled, log_a, log_b, a, b, u, tol, max_steps: int, limit=None,
                     relaxation=None, resume=None, window: int = 8,
                     max_relaxation: float = 1.95):
    """Over-relaxed Sinkhorn: u ← (1 − ω)u + ω(log a − LSEⱼ(v − C/ε)), then the same for v
    with the new u (ω = 1: plain Sinkhorn), until the L1 error of both marginals, measured
    at the same (u, v), is at most `tol`.

    Both errors come free: the column sums at (u, v) use the LSE the v-update just took, the
    row sums the LSE the next u-update takes. `relaxation` (a float) fixes ω; None adapts it
    from the observed contraction, by Young's SOR theory for the two-block linearisation
    (Thibault et al. 2021, Lehmann et al. 2021 for over-relaxed Sinkhorn), in windows of
    `window` iterations; r is the per-iteration ratio of successive windows' largest error
    (an envelope, as over-relaxed errors oscillate):
    - the first window runs plain Sinkhorn, whose r estimates λ, the Gauss–Seidel rate, and
      ω = 2/(1 + √(1 − λ)), the optimum for that λ;
    - later, ω − 1 < r < 1 means ω is below the optimum (above it, r = ω − 1); λ is
      re-estimated as (r + ω − 1)²/(rω²) and ω raised, at most halving 2 − ω at once (the
      early, nonlinear iterations overstate λ), and never above `max_relaxation`;
    - after a change one window is skipped (the transient), and a window whose largest error
      exceeds 10× the lowest so far halves ω − 1 (a safeguard: large ω can diverge far from
      the solution).

    Returns (u, v, steps, larger marginal error, state); `resume=state` continues that run
    (its potentials and its adaptation; `u` is then ignored and `steps` counts this call's),
    `resume=start_state(...)` starts afresh from given potentials.
    """
    limit = max_steps if limit is None else limit
    dtype = u.dtype
    one = jnp.ones((), dtype)
    adaptive = relaxation is None
    omega0 = one if adaptive else jnp.asarray(relaxation, dtype)
    cap = jnp.asarray(max_relaxation, dtype)

    def iteration(u, v, lse_v, omega):
        u = (1 - omega) * u + omega * (log_a - lse_v)
        lse_u = _lse_cols(u, cost_scaled)
        v = (1 - omega) * v + omega * (log_b - lse_u)
        col_err = jnp.sum(jnp.abs(_exp(v + lse_u) - b))
        lse_v = _lse_rows(v, cost_scaled)
        row_err = jnp.sum(jnp.abs(_exp(u + lse_v) - a))
        return u, v, lse_v, row_err + col_err, jnp.maximum(row_err, col_err)

    zero = jnp.zeros((), jnp.int32)

    def cond(c):
        return (c["worst"] > tol) & (c["steps"] < limit) & jnp.isfinite(c["worst"])

    def adapt(c, err):
        peak = jnp.maximum(c["peak"], err)  # this window's largest error so far
        since = c["since"] + 1
        omega, ref, low, settle = c["omega"], c["ref"], c["low"], c["settle"]
        due = since >= window
        rate = (peak / ref) ** (1.0 / window)
        plain = omega == 1
        lam = jnp.where(plain, rate, (rate + omega - 1) ** 2 / (rate * omega**2))
        best = 2 / (1 + jnp.sqrt(1 - jnp.clip(lam, 0.0, 1.0)))
        best = jnp.minimum(jnp.minimum(best, cap), 2 - (2 - omega) / 2)
        under = plain | ((rate > omega - 1) & (rate < 1))
        new = jnp.where(under, jnp.maximum(omega, best), omega)
        new = jnp.where(peak > 10 * low, 1 + (omega - 1) / 2, new)
        new = jnp.where(jnp.isfinite(new), new, one)
        new = jnp.where(due & ~settle, new, omega)
        return dict(omega=new, ref=jnp.where(due, peak, ref),
                    low=jnp.where(due & ~settle, jnp.minimum(low, peak), low),
                    settle=jnp.where(due, new != omega, settle),
                    since=jnp.where(due, 0, since), peak=jnp.where(due, 0.0, peak))

    def body(c):
        u, v, lse_v, err, worst = iteration(c["u"], c["v"], c["lse_v"], c["omega"])
        c = dict(c, u=u, v=v, lse_v=lse_v, worst=worst, steps=c["steps"] + 1)
        return dict(c, **adapt(c, err)) if adaptive else c

    if resume is None:
        state = start_state(cost_scaled, log_b, a, u, omega0)
    else:
        state = dict(resume, steps=zero)
    c = while_loop(cond, body, state, max_steps=max_steps)
    return c["u"], c["v"], c["steps"], c["worst"], c


@compiled_at_top_level(precheck("sinkhorn"), FAILURE_HINT)
def sinkhorn(cost, a=None, b=None, epsilon=1e-2, *, rtol: float | None = None,
             atol: float = 0.0, max_steps: int = 10_000, relaxation: float | str = "adaptive",
             init=None, throw: bool = True) -> OTResult:
    r"""Entropic optimal transport by Sinkhorn's algorithm in the log domain.

    Solves min_{P ≥ 0, P1 = a, Pᵀ1 = b} <C, P> + ε Σ P(log P − 1) through its dual
    max_{f,g} <f, a> + <g, b> − ε Σᵢⱼ exp((fᵢ + gⱼ − Cᵢⱼ)/ε) by alternating exact
    maximisation over g and f (block coordinate ascent):

        g ← ε log b − ε LSEᵢ((f − C)/ε),   f ← ε log a − ε LSEⱼ((g − C)/ε),

    every exponential taken through a log-sum-exp, so it is stable for small ε (e.g. 1e-3 on a
    cost normalised to mean 1). One step is one update of each; it stops when the L1 error of
    **both** marginals, ‖P1 − a‖₁ and ‖Pᵀ1 − b‖₁, measured at the same potentials, is at
    most `atol + rtol·Σa` (both come free with the updates' log-sum-exps).

    Plain Sinkhorn converges linearly with a rate λ that degrades like 1 − O(ε) as ε → 0.
    By default (`relaxation="adaptive"`) each update is over-relaxed,
    x ← (1 − ω)x + ω·(Sinkhorn's update), with ω set from the observed contraction: the
    optimum 2/(1 + √(1 − λ)) of successive over-relaxation, which turns the rate λ into about
    1 − 2√(1 − λ) (measured at n = m = 1000: 80 → 24 iterations at ε = 0.1, 834 → 106 at 1e-2,
    8,511 → 344 at 1e-3). It converges to the same solution (a fixed point of the relaxed
    update is one of Sinkhorn's). `relaxation=1.0` is plain Sinkhorn, a float in (0, 2) a
    fixed ω. For small ε prefer
    [`sinkhorn_newton_sparse`][jaxopt2.ot.sinkhorn_newton_sparse].

    Reference: Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport",
    NeurIPS 2013; Peyré & Cuturi, "Computational Optimal Transport", 2019, §4.4 (log domain);
    over-relaxation: Thibault, Chizat, Dossal, Papadakis, "Overrelaxed Sinkhorn–Knopp
    Algorithm for Regularized Optimal Transport", Algorithms 2021; Lehmann, von Renesse,
    Sambale, Uschmajew, "A note on overrelaxation in the Sinkhorn algorithm", Optim. Lett.
    2022.

    Args:
        cost: the cost matrix C, (n, m), finite.
        a, b: the marginals, (n,) and (m,), strictly positive with Σa = Σb; default uniform.
        epsilon: the regularisation ε > 0 (same units as the cost).
        rtol, atol: tolerance on each marginal's L1 error, `atol + rtol·Σa`; `rtol`
            defaults to 1e-6 in float64 and 1e-4 in float32.
        max_steps: the budget of Sinkhorn iterations (a static int).
        relaxation: "adaptive" (default), or a fixed over-relaxation ω in (0, 2) (1.0: plain
            Sinkhorn).
        init: optional starting potentials (f, g) (only f is used: g is updated first).
        throw: raise on failure outside `vmap` (as `jaxopt2.minimize` does); under `vmap`
            each problem reports its own status.

    Returns:
        An [`OTResult`][jaxopt2.ot.OTResult]: potentials, plan, costs, marginal errors,
        status, steps. Differentiable (`jax.grad`, `jax.jvp`, under `vmap`) with respect to
        `cost`, `a`, `b` and `epsilon` by the implicit function theorem on the dual
        optimality conditions, never by unrolling the iterations.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from jaxopt2 import ot
        x = jax.random.uniform(jax.random.key(0), (50, 2))
        y = jax.random.normal(jax.random.key(1), (60, 2))
        C = jnp.sum((x[:, None] - y[None]) ** 2, -1); C = C / C.mean()
        out = ot.sinkhorn(C, epsilon=0.05)
        print(out.status, out.stats["num_steps"], out.transport_cost, out.marginal_errors)
        ```
    """
    check_max_steps(max_steps)
    relaxation = check_relaxation("sinkhorn", relaxation)
    cost, a, b, epsilon, rtol = prepare("sinkhorn", cost, a, b, epsilon, rtol, atol)
    invalid = invalid_mask(cost, a, b, epsilon)
    tol = atol + rtol * jnp.sum(a)
    # an invalid traced problem runs no iteration: NaN potentials, nonfinite status
    cost_scaled = jnp.where(invalid, jnp.nan, cost / epsilon)
    u0 = jnp.zeros_like(a) if init is None else jnp.asarray(init[0], a.dtype) / epsilon
    u, v, steps, *_ = overrelaxed_loop(cost_scaled, jnp.log(a), jnp.log(b), a, b, u0, tol,
                                       max_steps, relaxation=relaxation)
    stats = dict(num_steps=steps, num_sinkhorn_steps=steps, num_newton_steps=0, num_cg_steps=0)
    return finish("sinkhorn", u, v, cost, a, b, epsilon, tol, stats, invalid, throw)
