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


class CDResult(eqx.Module):
    z: jax.Array  # flat, = x outside W
    subgrad: jax.Array  # v ∈ ∂h(z) on W (0 outside, where z = x)
    epochs: jax.Array
    converged: jax.Array  # the last full sweep met the tolerance
    hvps: jax.Array
    size: jax.Array  # the capacity used


def _cd_block(H, x, g, h: Separable, tol, max_epochs, dtype):
    """Cyclic coordinate descent on the block model from z = x (flat vectors of the block):
    epochs until the largest Hⱼⱼ|Δzⱼ| of an epoch is ≤ tol, or `max_epochs`."""
    diag = jnp.diagonal(H)
    denom = diag + h.c
    # A coordinate with no curvature (Hⱼⱼ + cⱼ ≤ 0) stays where it is: lo = hi = xⱼ.
    ok = denom > 0
    table = jnp.stack([diag, h.a, h.b, jnp.where(ok, denom, 1), jnp.where(ok, h.lo, x),
                       jnp.where(ok, h.hi, x)], axis=1)

    def coordinate(j, s):
        # One row of a table per coordinate: separate scalar gathers measured 1.5× slower
        # per epoch under XLA on CPU.
        z, q, change = s
        hjj, a, b, den, lo, hi = (table[j, i] for i in range(6))
        zj = z[j]
        u = hjj * zj - q[j] - b
        new = jnp.clip(jnp.sign(u) * jnp.maximum(jnp.abs(u) - a, 0) / den, lo, hi)
        delta = new - zj
        # (A lax.cond skipping the update where Δ = 0, as scikit-learn does, measured slower
        # under XLA on CPU.)
        q = q + delta * H[j]
        return z.at[j].set(new), q, jnp.maximum(change, hjj * jnp.abs(delta))

    def cond(s):
        _, _, change, full, k = s
        return (k < max_epochs) & ~(full & (change <= tol)) & ~jnp.isnan(tol)

    def epoch(s):
        # glmnet's active cycling: after a sweep over every coordinate, sweeps over the
        # support alone until they converge, then a full sweep again to confirm.
        z, q, change, _, k = s
        sweep_all = change <= tol
        on = ~h.at_kink(z) | sweep_all
        order = jnp.nonzero(on, size=x.size, fill_value=0)[0]
        z, q, change = jax.lax.fori_loop(
            0, jnp.sum(on), lambda i, c: coordinate(order[i], c), (z, q, jnp.zeros((), dtype)))
        return z, q, change, sweep_all, k + 1

    start = (x, g, jnp.zeros((), dtype), jnp.asarray(False), jnp.zeros((), jnp.int32))
    z, q, change, full, k = while_loop(cond, epoch, start, max_steps=max_epochs)
    return z, h.subgradient(z, q), k, full & (change <= tol)


def working_set_cd(x, g, h: Separable, score, size, block_fn: Callable, tol, max_epochs: int,
                   start: int, hvp_cost: bool) -> CDResult:
    """Coordinate descent on the model restricted to the working set of `size` (dynamic)
    coordinates of highest `score` (the support must score +inf), in the smallest static
    capacity that holds it (module docstring). `block_fn(index) -> H[index][:, index]`."""
    d = x.size
    dtype = x.dtype
    caps = capacities(d, start)

    def branch(cap):
        def run(_):
            # In increasing order: gathering a block of H is then several times faster.
            index = jnp.arange(d) if cap == d else jnp.sort(jax.lax.top_k(score, cap)[1])
            H = block_fn(index).astype(dtype)
            zb, vb, k, ok = _cd_block(H, x[index], g[index], h.take(index), tol, max_epochs,
                                      dtype)
            z = x.at[index].set(zb)
            v = jnp.zeros_like(x).at[index].set(vb)
            return CDResult(z, v, k, ok, jnp.asarray(cap if hvp_cost else 0, jnp.int32),
                            jnp.asarray(cap, jnp.int32))
        return run

    which = jnp.searchsorted(jnp.asarray(caps), size, side="left")
    which = jnp.clip(which, 0, len(caps) - 1)
    if len(caps) == 1:
        return branch(caps[0])(None)
    return jax.lax.switch(which, [branch(c) for c in caps], None)
