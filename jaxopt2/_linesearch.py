"""Line searches on f(x + t·d), shared by the minimizers.

- `backtracking`: Armijo sufficient decrease, f(x + t d) ≤ f(x) + c₁ t gᵀd, shrinking t.
  Objective-only trials; the gradient is evaluated once, at the accepted point.
- `zoom_wolfe`: strong Wolfe conditions by bracketing and zoom (Nocedal & Wright, Alg. 3.5/3.6)
  with safeguarded cubic interpolation; each trial evaluates value and
  gradient, so the accepted point's gradient comes for free.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from ._base import Counts, Iterate
from ._tree import tree_axpy, tree_dot


class LineSearchResult(eqx.Module):
    iterate: Iterate
    step_size: jax.Array
    ok: jax.Array
    counts: Counts


def backtracking(fn, it: Iterate, direction, args, init_step, *, c1=1e-4, shrink=0.5,
                 max_trials=30) -> LineSearchResult:
    """Armijo backtracking from `init_step`. On failure the iterate is unchanged (`ok=False`)."""
    slope = tree_dot(it.grad, direction)
    init_step = jnp.asarray(init_step, it.value.dtype)

    def value_at(t):
        return fn(tree_axpy(t, direction, it.params), args)[0]

    def accept(t, value):
        return jnp.isfinite(value) & (value <= it.value + c1 * t * slope)

    def cond(c):
        t, value, k = c
        return ~accept(t, value) & (k < max_trials)

    def body(c):
        t, _, k = c
        t = t * shrink
        return t, value_at(t), k + 1

    t0 = init_step
    t, value, k = lax.while_loop(cond, body, (t0, value_at(t0), jnp.zeros((), jnp.int32)))
    ok = accept(t, value) & (slope < 0)
    t = jnp.where(ok, t, jnp.zeros_like(t))
    new = _evaluate_at(fn, it, direction, t, args)
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, it)
    return LineSearchResult(new, t, ok, Counts.of(fun=k + 1, grad=1))


def _evaluate_at(fn, it, direction, t, args):
    params = tree_axpy(t, direction, it.params)
    (value, aux), grad = jax.value_and_grad(fn, has_aux=True)(params, args)
    return Iterate(params, value, grad, aux)


def zoom_wolfe(fn, it: Iterate, direction, args, init_step, *, c1=1e-4, c2=0.9,
               max_trials=30, max_step=1e10) -> LineSearchResult:
    """Strong Wolfe line search: find t with
    f(x + t d) ≤ f(x) + c₁ t gᵀd and |∇f(x + t d)ᵀd| ≤ c₂ |gᵀd|.

    Phase 1 expands t (doubling) until the minimum is bracketed; phase 2 shrinks the bracket
    by safeguarded cubic interpolation. Every trial costs one value-and-gradient evaluation.
    If no Wolfe point is found within `max_trials`, the best Armijo point seen is returned, and
    `ok` is False only if not even that exists.
    """
    dtype = it.value.dtype
    f0 = it.value
    slope0 = tree_dot(it.grad, direction)

    def trial(t):
        new = _evaluate_at(fn, it, direction, t, args)
        return new, tree_dot(new.grad, direction)

    def armijo(t, f):
        return jnp.isfinite(f) & (f <= f0 + c1 * t * slope0)

    def curvature(s):
        return jnp.abs(s) <= c2 * jnp.abs(slope0)

    zero = jnp.zeros((), dtype)
    init_step = jnp.asarray(init_step, dtype)
    new0, s0 = trial(init_step)
    # State: current trial (t, f, s, iterate); bracket [lo, hi] with values/slopes at lo, hi;
    # `bracketed` once hi is known; `best` is the best Armijo point so far.
    state = dict(
        t=init_step, f=new0.value, s=s0, it=new0,
        lo=zero, f_lo=f0, s_lo=slope0, hi=zero, f_hi=f0, s_hi=slope0,
        bracketed=jnp.array(False), k=jnp.ones((), jnp.int32),
        best=it, best_t=zero,
    )

    def done(st):
        return armijo(st["t"], st["f"]) & curvature(st["s"])

    def cond(st):
        return ~done(st) & (st["k"] < max_trials)

    def body(st):
        t, f, s = st["t"], st["f"], st["s"]
        ok_armijo = armijo(t, f) & (f < st["f_lo"])
        improve = ok_armijo & (f < st["best"].value)
        best = jax.tree_util.tree_map(lambda a, b: jnp.where(improve, a, b), st["it"], st["best"])
        best_t = jnp.where(improve, t, st["best_t"])
        # Update bracket per Nocedal & Wright: if t violates Armijo (or f >= f_lo), t becomes hi;
        # otherwise t becomes lo, and if slope has the wrong sign the old lo becomes hi.
        to_hi = ~ok_armijo
        flip = ok_armijo & (s * (st["hi"] - st["lo"]) >= 0) & st["bracketed"]
        expand_flip = ok_armijo & ~st["bracketed"] & (s >= 0)
        new_hi = jnp.where(to_hi, t, jnp.where(flip | expand_flip, st["lo"], st["hi"]))
        f_hi = jnp.where(to_hi, f, jnp.where(flip | expand_flip, st["f_lo"], st["f_hi"]))
        s_hi = jnp.where(to_hi, s, jnp.where(flip | expand_flip, st["s_lo"], st["s_hi"]))
        new_lo = jnp.where(ok_armijo, t, st["lo"])
        f_lo = jnp.where(ok_armijo, f, st["f_lo"])
        s_lo = jnp.where(ok_armijo, s, st["s_lo"])
        bracketed = st["bracketed"] | to_hi | expand_flip
        # Next trial: expand while not bracketed, else interpolate inside the bracket.
        t_interp = _cubic_min(new_lo, f_lo, s_lo, new_hi, f_hi, s_hi)
        t_next = jnp.where(bracketed, t_interp, jnp.minimum(2.0 * t, max_step))
        new_it, s_next = trial(t_next)
        return dict(t=t_next, f=new_it.value, s=s_next, it=new_it, lo=new_lo, f_lo=f_lo,
                    s_lo=s_lo, hi=new_hi, f_hi=f_hi, s_hi=s_hi, bracketed=bracketed,
                    k=st["k"] + 1, best=best, best_t=best_t)

    st = lax.while_loop(cond, body, state)
    wolfe = done(st)
    last_better = armijo(st["t"], st["f"]) & (st["f"] < st["best"].value)
    use_last = wolfe | last_better
    final = jax.tree_util.tree_map(lambda a, b: jnp.where(use_last, a, b), st["it"], st["best"])
    t = jnp.where(use_last, st["t"], st["best_t"])
    ok = (slope0 < 0) & (use_last | (st["best_t"] > 0))
    final = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), final, it)
    return LineSearchResult(final, jnp.where(ok, t, zero), ok, Counts.of(grad=st["k"]))


def _cubic_min(a, fa, sa, b, fb, sb):
    """Minimizer of the cubic interpolating (a, fa, sa), (b, fb, sb), safeguarded to stay in
    the middle 80% of [a, b]; bisection when the cubic is degenerate."""
    d1 = sa + sb - 3.0 * (fa - fb) / jnp.where(a == b, 1.0, a - b)
    disc = d1 * d1 - sa * sb
    d2 = jnp.sign(b - a) * jnp.sqrt(jnp.maximum(disc, 0.0))
    denom = sb - sa + 2.0 * d2
    t = b - (b - a) * (sb + d2 - d1) / jnp.where(denom == 0, 1.0, denom)
    lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
    width = hi - lo
    bad = ~jnp.isfinite(t) | (disc < 0) | (denom == 0)
    t = jnp.where(bad, 0.5 * (a + b), t)
    return jnp.clip(t, lo + 0.1 * width, hi - 0.1 * width)
