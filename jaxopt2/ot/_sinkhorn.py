"""Log-domain Sinkhorn for entropic optimal transport."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._front import check_max_steps
from .._loops import while_loop
from ._problem import OTResult, finish, invalid_mask, prepare


def _lse_rows(v, cost_scaled):
    return jax.nn.logsumexp(v[None, :] - cost_scaled, axis=1)


def _lse_cols(u, cost_scaled):
    return jax.nn.logsumexp(u[:, None] - cost_scaled, axis=0)


def sinkhorn_loop(cost_scaled, log_a, log_b, a, u, tol, max_steps: int, limit=None):
    """Alternating exact maximisation of the dual in the scaled potentials (u, v) = (f, g)/ε:
    v ← log b − LSEᵢ(u − C/ε) then u ← log a − LSEⱼ(v − C/ε), until ‖P1 − a‖₁ ≤ tol.

    After a v-update the columns of P sum to b exactly, so the row error (free: it needs the
    LSE the next u-update uses anyway) is the whole marginal error. Returns
    (u, v, steps, row error); the first v-update is part of the start, not counted.
    `limit` (traced, ≤ `max_steps`) lowers the budget.
    """
    limit = max_steps if limit is None else limit
    v = log_b - _lse_cols(u, cost_scaled)
    lse = _lse_rows(v, cost_scaled)
    err = jnp.sum(jnp.abs(jnp.exp(u + lse) - a))

    def cond(c):
        *_, steps, err = c
        return (err > tol) & (steps < limit) & jnp.isfinite(err)

    def body(c):
        _, _, lse, steps, _ = c
        u = log_a - lse
        v = log_b - _lse_cols(u, cost_scaled)
        lse = _lse_rows(v, cost_scaled)
        err = jnp.sum(jnp.abs(jnp.exp(u + lse) - a))
        return u, v, lse, steps + 1, err

    u, v, _, steps, err = while_loop(cond, body, (u, v, lse, jnp.zeros((), jnp.int32), err),
                                     max_steps=max_steps)
    return u, v, steps, err


def sinkhorn(cost, a=None, b=None, epsilon=1e-2, *, rtol: float | None = None,
             atol: float = 0.0, max_steps: int = 10_000, init=None,
             throw: bool = True) -> OTResult:
    r"""Entropic optimal transport by Sinkhorn's algorithm in the log domain.

    Solves min_{P ≥ 0, P1 = a, Pᵀ1 = b} <C, P> + ε Σ P(log P − 1) through its dual
    max_{f,g} <f, a> + <g, b> − ε Σᵢⱼ exp((fᵢ + gⱼ − Cᵢⱼ)/ε) by alternating exact
    maximisation over g and f (block coordinate ascent):

        g ← ε log b − ε LSEᵢ((f − C)/ε),   f ← ε log a − ε LSEⱼ((g − C)/ε),

    every exponential taken through a log-sum-exp, so it is stable for small ε (e.g. 1e-3 on a
    cost normalised to mean 1). One step is one update of each; it stops when the L1 error of
    **both** marginals, ‖P1 − a‖₁ and ‖Pᵀ1 − b‖₁, is at most `atol + rtol·Σa` (after a
    g-update the second is zero up to rounding; both are measured on the result).
    Convergence is linear with a rate that degrades like 1 − O(ε) as ε → 0: for small ε
    prefer [`sinkhorn_newton_sparse`][jaxopt2.ot.sinkhorn_newton_sparse].

    Reference: Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport",
    NeurIPS 2013; Peyré & Cuturi, "Computational Optimal Transport", 2019, §4.4 (log domain).

    Args:
        cost: the cost matrix C, (n, m), finite.
        a, b: the marginals, (n,) and (m,), strictly positive with Σa = Σb; default uniform.
        epsilon: the regularisation ε > 0 (same units as the cost).
        rtol, atol: tolerance on each marginal's L1 error, `atol + rtol·Σa`; `rtol`
            defaults to 1e-6 in float64 and 1e-4 in float32.
        max_steps: the budget of Sinkhorn iterations (a static int).
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
    cost, a, b, epsilon, rtol = prepare("sinkhorn", cost, a, b, epsilon, rtol, atol)
    invalid = invalid_mask(cost, a, b, epsilon)
    tol = atol + rtol * jnp.sum(a)
    # an invalid traced problem runs no iteration: NaN potentials, nonfinite status
    cost_scaled = jnp.where(invalid, jnp.nan, cost / epsilon)
    u0 = jnp.zeros_like(a) if init is None else jnp.asarray(init[0], a.dtype) / epsilon
    u, v, steps, _ = sinkhorn_loop(cost_scaled, jnp.log(a), jnp.log(b), a, u0, tol, max_steps)
    stats = dict(num_steps=steps, num_sinkhorn_steps=steps, num_newton_steps=0, num_cg_steps=0)
    return finish("sinkhorn", u, v, cost, a, b, epsilon, tol, stats, invalid, throw)
