"""Coordinate descent on a quadratic model plus a separable h, inside a working set: the inner
solver of `ProximalNewton(inner="cd")`, the method of glmnet (Friedman, Hastie & Tibshirani,
"Regularization paths for generalized linear models via coordinate descent", J. Stat. Softw.
33, 2010) with the working sets of celer (Massias, Gramfort & Salmon, "Celer: a fast solver
for the lasso with dual extrapolation", ICML 2018) and blitz.

The model at x, with g = ∇f(x) and H = ∇²f(x), is

    φ(z) = gᵀ(z − x) + ½(z − x)ᵀH(z − x) + h(z),

on the flat parameter vector, for h separable of the form (`Separable`)

    h(y) = Σⱼ aⱼ|yⱼ| + bⱼyⱼ + cⱼyⱼ²/2 + ι(loⱼ ≤ yⱼ ≤ hiⱼ),

which covers `prox.l1`, `prox.non_negative_l1`, `prox.ridge`, `prox.elastic_net` and bounds.
Each coordinate step minimizes φ exactly along one coordinate,

    zⱼ ← clip(soft(Hⱼⱼzⱼ − qⱼ − bⱼ, aⱼ) / (Hⱼⱼ + cⱼ), loⱼ, hiⱼ),   q = g + H(z − x),

and updates q by the column H[:, j] (the "covariance update", O(|W|) per coordinate). Only the
coordinates of a working set W move (the others stay at x): W holds the support of x (the
coordinates off h's kinks) and the largest KKT violations |G(x)ⱼ| outside it, its size
chosen by the caller (`ProximalNewton`: 2–4·|support|, never shrinking), rounded up to a
static capacity (`ws_start` times a power of four, or d), so that the block H[W, W] has a
static shape: one `lax.switch` branch per capacity. The block comes from a user function
(`hessian_block`), or from |W| Hessian-vector products on unit vectors, one batched product.

Inside the block, glmnet's active cycling (sweeps over the support alone, then a full sweep to
confirm), with the support sweeps stopped at a tenth of the last full sweep's change while the
support still moves, and Anderson extrapolation of the iterates every third sweep over an
unchanged support, where coordinate descent is a linear iteration (Bertrand & Massias,
"Anderson acceleration of coordinate descent", AISTATS 2021; `_anderson`). On the benchmark
lasso (d = 2,000, 1,201 nonzeros) the two cut the epochs of the last outer steps from 23 + 5 + 1
to about 15.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ._composite import Composite, flat_bounds
from ._loops import while_loop
from ._tree import ravel


def _known_proxes():
    from . import prox as P

    return {P.l1: "l1", P.non_negative_l1: "non_negative_l1", P.ridge: "ridge",
            P.elastic_net: "elastic_net"}


def separable_supported(constraint: Composite | None) -> bool:
    """Whether `Separable.of` knows the constraint's h."""
    return constraint is None or constraint.prox is None or constraint.prox in _known_proxes()


class Separable(eqx.Module):
    """h(y) = Σⱼ aⱼ|yⱼ| + bⱼyⱼ + cⱼyⱼ²/2 + ι(loⱼ ≤ yⱼ ≤ hiⱼ) on the flat parameters."""

    a: jax.Array
    b: jax.Array
    c: jax.Array
    lo: jax.Array
    hi: jax.Array

    @staticmethod
    def of(constraint: Composite | None, params) -> Separable:
        """The coefficients of a known prox, read off the prox itself: for these operators,
        D(v) = ∂ₛprox_{s·h}(v)|ₛ₌₀ = −(aⱼ sign vⱼ + bⱼ + cⱼvⱼ) entrywise, so D(1) and D(2) give
        a + b + c and c (`prox_args` in any of the forms the operator accepts: scalars,
        pytrees, None leaves)."""
        x, unravel = ravel(params)
        zero = jnp.zeros_like(x)
        lo, hi = flat_bounds(constraint, x)
        if constraint is None or constraint.prox is None:
            return Separable(zero, zero, zero, lo, hi)
        name = _known_proxes()[constraint.prox]
        args = jax.lax.stop_gradient(constraint.prox_args)

        def slope(v):
            def at(s):
                return ravel(constraint.prox(unravel(v), args, s))[0]
            return jax.jvp(at, (jnp.zeros((), x.dtype),), (jnp.ones((), x.dtype),))[1]

        one = jnp.ones_like(x)
        d1 = -slope(one)
        if name == "l1":
            return Separable(d1, zero, zero, lo, hi)
        if name == "non_negative_l1":
            return Separable(zero, d1, zero, jnp.maximum(lo, 0), hi)
        if name == "ridge":
            return Separable(zero, zero, d1, lo, hi)
        c = -slope(2 * one) - d1
        return Separable(d1 - c, zero, c, lo, hi)

    def at_kink(self, x):
        """Where x sits on a kink of h (0 for |·|, or a bound): off the support."""
        return ((self.a > 0) & (x == 0)) | (x <= self.lo) | (x >= self.hi)

    def subgradient(self, z, q):
        """The point of ∂h(z) nearest to −q: a certified v ∈ ∂h(z), equal to −q at an exact
        minimizer of the model (where 0 ∈ q + ∂h(z))."""
        smooth = self.b + self.c * z
        low = smooth + jnp.where(z > 0, self.a, -self.a)
        high = smooth + jnp.where(z < 0, -self.a, self.a)
        low = jnp.where(z <= self.lo, -jnp.inf, low)
        high = jnp.where(z >= self.hi, jnp.inf, high)
        return jnp.clip(-q, low, high)

    def take(self, index) -> Separable:
        return jax.tree_util.tree_map(lambda t: t[index], self)


def capacities(d: int, start: int) -> tuple[int, ...]:
    """The static working-set sizes: start, 4·start, 16·start, …, below d, then d (a
    factor of 4: each size is one `lax.switch` branch to compile, and a working set larger
    than needed costs only cheap epochs on a small block)."""
    sizes, c = [], max(1, min(start, d))
    while c < d:
        sizes.append(c)
        c *= 4
    return (*sizes, d)


def capacity_index(size, caps: tuple[int, ...]):
    """The index in `caps` (`capacities`) of the smallest capacity that holds `size`
    coordinates (the largest, d, for any larger size)."""
    which = jnp.searchsorted(jnp.asarray(caps), size, side="left")
    return jnp.clip(which, 0, len(caps) - 1)


class CDResult(eqx.Module):
    z: jax.Array  # flat, = x outside W
    subgrad: jax.Array  # v ∈ ∂h(z) on W (0 outside, where z = x)
    epochs: jax.Array
    converged: jax.Array  # the last full sweep met the tolerance
    hvps: jax.Array
    size: jax.Array  # the capacity used
    # The quadratic part's change gᵀδ + ½δᵀHδ (δ = z − x), and the model's whole change
    # φ(z) − φ(x) = that + h(z) − h(x): what a step to z predicts for f and for f + h.
    model_f: jax.Array
    model_decrease: jax.Array
    residual: jax.Array  # max |q + v| on W: the model's stationarity residual at z


def _anderson(z0, z1, q1, z2, q2, x, g, h: Separable):
    """Anderson extrapolation of the last three epoch iterates z₀, z₁, z₂ (Bertrand
    & Massias, "Anderson acceleration of coordinate descent", AISTATS 2021, with K = 2): the
    affine combination z = c₁z₁ + c₂z₂ (c₁ + c₂ = 1) whose combination of the successive
    differences uᵢ = zᵢ − zᵢ₋₁ is smallest, c ∝ (UUᵀ)⁻¹1 = (u₂ᵀu₂ − u₁ᵀu₂, u₁ᵀu₁ − u₁ᵀu₂),
    written z₂ + c₁(z₁ − z₂) so that a coordinate that did not move (at a bound, or held)
    stays exactly where it is. q = g + H(z − x) is affine in z, so it is the same combination
    of q₁, q₂: no product with H. Kept (`ok`) only inside the bounds, where it lowers the
    model below the last iterate, and where |c₁| + |c₂| ≤ `ANDERSON_MAX_WEIGHT` (q's
    round-off grows with it).
    (K = 3 measured no faster on the lasso benchmark; one reduction per test keeps the
    program small, as it is compiled once per working-set capacity.)"""
    u1, u2 = z1 - z0, z2 - z1
    a, b, d = jnp.sum(jnp.stack([u1 * u1, u1 * u2, u2 * u2]), axis=1)
    c1 = (d - b) / (a + d - 2 * b)
    z, q = z2, q2
    ze, qe = z + c1 * (z1 - z), q + c1 * (q1 - q)
    # φ(ze) − φ(z), from φ(y) = ½(y − x)ᵀ(q(y) + g) + h(y) up to a constant (h's indicator
    # left out: ze is tested inside the bounds).
    change = jnp.sum(0.5 * ((ze - x) * (qe + g) - (z - x) * (q + g))
                     + h.a * (jnp.abs(ze) - jnp.abs(z)) + h.b * (ze - z)
                     + 0.5 * h.c * (ze * ze - z * z))
    inside = jnp.all((ze >= h.lo) & (ze <= h.hi) & jnp.isfinite(qe))
    ok = inside & (change < 0) & (jnp.abs(c1) + jnp.abs(1 - c1) <= ANDERSON_MAX_WEIGHT)
    return jnp.where(ok, ze, z), jnp.where(ok, qe, q), ok


# The largest |c₁| + |c₂| of an Anderson extrapolation that is kept.
ANDERSON_MAX_WEIGHT = 1e3
# Sweeps over the support stop at this fraction of the last full sweep's largest change.
ACTIVE_FRACTION = 0.1


def _cd_block(H, x, g, h: Separable, tol, max_epochs, dtype, residual_tol=0.0):
    """Cyclic coordinate descent on the block model from z = x (flat vectors of the block):
    epochs until the largest Hⱼⱼ|Δzⱼ| of a full sweep is ≤ tol, or the model's stationarity
    residual max|q + v| (v ∈ ∂h(z) nearest −q) is ≤ `residual_tol`, or `max_epochs`, Anderson-
    accelerated (`_anderson`) once three successive sweeps over the same support are in hand:
    there coordinate descent is a linear (Gauss–Seidel) iteration, which extrapolation
    accelerates; any sweep that changes the support or sweeps every coordinate starts the
    window again."""
    diag = jnp.diagonal(H)
    denom = diag + h.c
    # A coordinate with no curvature (Hⱼⱼ + cⱼ ≤ 0) stays where it is: lo = hi = xⱼ.
    ok = denom > 0
    table = jnp.stack([diag, h.a, h.b, jnp.where(ok, denom, 1), jnp.where(ok, h.lo, x),
                       jnp.where(ok, h.hi, x)], axis=1)

    def coordinate(rows, j, s):
        # One row of a table per coordinate: separate scalar gathers measured 1.5× slower
        # per epoch under XLA on CPU. The row holds zⱼ as the sweep found it, which is its
        # value when j is visited (a sweep visits each coordinate once): reading it from z,
        # which the sweep updates in place, made XLA copy z twice per coordinate (0.73
        # against 1.17 µs per coordinate of a 2,000-column block).
        z, q = s
        hjj, a, b, den, lo, hi, zj = (rows[j, i] for i in range(7))
        u = hjj * zj - q[j] - b
        new = jnp.clip(jnp.sign(u) * jnp.maximum(jnp.abs(u) - a, 0) / den, lo, hi)
        delta = new - zj
        # The row update only where the coordinate moved, as scikit-learn does: a coordinate
        # that stays at its kink (most of a full sweep's) then costs no pass over H[j]
        # (0.36 against 0.75 µs per coordinate on a 2,000-column block with a third of the
        # coordinates moving, and no slower with all of them). Under vmap both branches run.
        q = jax.lax.cond(delta != 0, lambda q: q + delta * H[j], lambda q: q, q)
        return z.at[j].set(new), q

    def stationarity(z, q):
        # max|q + v|, v ∈ ∂h(z) nearest −q: the model's optimality residual at z, which the
        # inexact Newton condition bounds (the sweep change is only a proxy for it)
        return jnp.max(jnp.abs(q + h.subgradient(z, q)), initial=0.0)

    def cond(s):
        k, met = s[4], s[12]
        return (k < max_epochs) & ~met & ~jnp.isnan(tol)

    def sweep_all_next(change, last_full, settled):
        # Sweeps over the support end at a fraction of the last full sweep's change (or at
        # tol): converging them further is wasted while a full sweep still moves the support.
        # Once a full sweep left the support as it was, they go on to tol (glmnet): the next
        # full sweep is then the confirming one (on the benchmark lasso, one full sweep of
        # 2,000 coordinates fewer per tight solve).
        return change <= jnp.where(settled, tol, jnp.maximum(tol, ACTIVE_FRACTION * last_full))

    def epoch(s):
        # glmnet's active cycling: after a sweep over every coordinate, sweeps over the
        # support alone until they converge, then a full sweep again to confirm.
        z, q, change, _, k, z0, z1, q1, n, last_full, settled, fulls, _ = s
        sweep_all = sweep_all_next(change, last_full, settled)
        kink = h.at_kink(z)
        on = ~kink | sweep_all
        order = jnp.nonzero(on, size=x.size, fill_value=0)[0]
        rows = jnp.concatenate([table, z[:, None]], axis=1)
        start = z
        z, q = jax.lax.fori_loop(0, jnp.sum(on), lambda i, c: coordinate(rows, order[i], c),
                                 (z, q))
        # The sweep's largest Hⱼⱼ|Δzⱼ|, after it (one vector operation instead of one per
        # coordinate): a coordinate moves only where it is visited.
        change = jnp.max(diag * jnp.abs(z - start))
        # A full sweep that changed no coordinate's kink is the same linear map as a sweep
        # over the support (the others stay exactly at their kinks), so it stays in the
        # extrapolation window.
        same = jnp.all(h.at_kink(z) == kink)
        settled = jnp.where(sweep_all, same, settled)
        n = jnp.where(same, n + 1, 1)
        # Done where a full sweep moved every coordinate by at most tol, or where the
        # model's stationarity residual |q + v| on W is at most residual_tol (every
        # coordinate then meets its optimality condition to it).
        done = (sweep_all & (change <= tol)) | (stationarity(z, q) <= residual_tol)

        # (Computed at every epoch and selected: O(|W|) work against the epoch's
        # O(|W|·|support|), and no conditional in the program.)
        ze, qe, accepted = _anderson(z0, z1, q1, z, q, x, g, h)
        accepted = accepted & (n >= 3) & ~done
        z, q = jnp.where(accepted, ze, z), jnp.where(accepted, qe, q)
        # An accepted point is confirmed by sweeps like any other: its change is unknown.
        change = jnp.where(accepted, jnp.asarray(jnp.inf, dtype), change)
        n = jnp.where(accepted, 1, n)
        last_full = jnp.where(sweep_all, change, last_full)
        # The window moves on: (z₀, z₁, q₁) ← (z₁, z, q) (after a restart only the newest
        # counts, `n`).
        return (z, q, change, sweep_all, k + 1, z1, z, q, n, last_full, settled,
                fulls + sweep_all, done)

    start = (x, g, jnp.zeros((), dtype), jnp.asarray(False), jnp.zeros((), jnp.int32), x, x, g,
             jnp.ones((), jnp.int32), jnp.zeros((), dtype), jnp.asarray(False),
             jnp.zeros((), jnp.int32), jnp.asarray(False))
    z, q, change, full, k, *_, fulls, met = while_loop(cond, epoch, start, max_steps=max_epochs)
    smooth = 0.5 * (z - x) * (q + g)
    model_f = jnp.sum(smooth)
    decrease = jnp.sum(smooth + h.a * (jnp.abs(z) - jnp.abs(x)) + h.b * (z - x)
                       + 0.5 * h.c * (z * z - x * x))
    return z, h.subgradient(z, q), k, met, model_f, decrease, fulls, stationarity(z, q)


def whole_block(block_fn, d: int):
    """H itself, for a working set of every coordinate: `block_fn(slice(None))` first, so
    that a block written as indexing (`G[:, index][index]`, `XT[index]`) is the matrix with
    no gather (two copies of a 2,000 × 2,000 G, 7 ms each on the benchmark lasso); a
    function that cannot take a slice (or returns another shape) is called with
    `arange(d)` instead. Both calls happen at trace time."""
    try:
        H = block_fn(slice(None))
        if H.shape == (d, d):
            return H
    except Exception:  # noqa: BLE001 (any failure: the index form below reports its own)
        pass
    return block_fn(jnp.arange(d))


def working_block(block_fn, score, cap: int, d: int):
    """(index, H[index][:, index]) for the `cap` coordinates of highest `score` (all of them,
    by `whole_block`, when cap = d), the index in increasing order: gathering a block of H
    is then several times faster."""
    if cap == d:
        return jnp.arange(d), whole_block(block_fn, d)
    index = jnp.sort(jax.lax.top_k(score, cap)[1])
    return index, block_fn(index)


def working_set_cd(x, g, h: Separable, score, size, block_fn: Callable, tol, max_epochs: int,
                   start: int, hvp_cost: bool, residual_tol=0.0) -> CDResult:
    """Coordinate descent on the model restricted to the working set of `size` (dynamic)
    coordinates of highest `score` (the support must score +inf), in the smallest static
    capacity that holds it (module docstring). `block_fn(index) -> H[index][:, index]`."""
    d = x.size
    dtype = x.dtype
    caps = capacities(d, start)

    def branch(cap):
        def run(_):
            index, H = working_block(block_fn, score, cap, d)
            zb, vb, k, ok, model_f, decrease, _, residual = _cd_block(
                H.astype(dtype), x[index], g[index], h.take(index), tol, max_epochs, dtype,
                residual_tol)
            z = x.at[index].set(zb)
            v = jnp.zeros_like(x).at[index].set(vb)
            return CDResult(z, v, k, ok, jnp.asarray(cap if hvp_cost else 0, jnp.int32),
                            jnp.asarray(cap, jnp.int32), model_f, decrease, residual)
        return run

    which = capacity_index(size, caps)
    if len(caps) == 1:
        return branch(caps[0])(None)
    return jax.lax.switch(which, [branch(c) for c in caps], None)
