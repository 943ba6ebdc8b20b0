"""Line searches, shared by the minimizers and the equation solvers.

- `backtracking`: Armijo sufficient decrease, f(x + t d) ≤ f(x) + c₁ t gᵀd, shrinking t.
  Objective-only trials; the gradient is evaluated once, at the accepted point.
- `newton_line_search`: `backtracking` from the full step for Newton-type directions, with
  the rounding allowance that lets tight tolerances be reached (Newton, NewtonCG,
  SketchedNewton, SubspaceNewton).
- `zoom_wolfe`: strong Wolfe conditions by bracketing and zoom (Nocedal & Wright, Alg. 3.5/3.6)
  with safeguarded cubic interpolation, and Hager-Zhang's approximate Wolfe test once f changes
  are within rounding; each trial evaluates value and gradient, so the accepted point's
  gradient comes for free.
- `backtrack`: backtracking with quadratic interpolation on the merit function ½‖F‖² of an
  equation solver (NewtonRaphson, NewtonKrylov, Broyden).
"""

from __future__ import annotations

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp

from ._base import Counts, Iterate, Point, roundoff
from ._loops import while_loop
from ._results import RESULTS
from ._tree import (
    eps,
    tree_all_finite,
    tree_axpy,
    tree_changed,
    tree_dot,
    tree_inf_norm,
    tree_norm,
    tree_scale,
    tree_sub,
    tree_where,
)

# How many roundings of f (`_base.roundoff`) count as "no measurable change", a pair on
# purpose:
# - LINE_SEARCH_ROUNDOFF: a line search accepts a full Newton-type step whose predicted
#   decrease is below this many roundings unless f measurably rises (`backtracking`'s
#   `noise`); the minibatch acceptance test of `jaxopt2.optimizers` uses the same allowance.
# - ACCEPTANCE_ROUNDOFF: the acceptance tests of RegularizedNewton and DampedNewton compare a
#   decrease of f with a bound that itself goes to zero near a minimizer (λ‖p‖², a Newton
#   decrement); ten times more slack keeps float32 solves from rejecting every trial there
#   before the gradient test can pass.
LINE_SEARCH_ROUNDOFF = 10.0
ACCEPTANCE_ROUNDOFF = 100.0


class LineSearchResult(eqx.Module):
    iterate: Iterate
    step_size: jax.Array
    ok: jax.Array
    counts: Counts


def _armijo(value0, slope, t, value, c1, noise):
    """The sufficient-decrease test of a trial f(x + t d) = `value` from f(x) = `value0`."""
    # `value < value0` too: when c1·t·slope is below the rounding of f, the Armijo test alone
    # would accept steps that do not move, and the solver would stall silently.
    armijo = (value <= value0 + c1 * t * slope) & (value < value0)
    if noise is not None:
        armijo = armijo | ((-t * slope <= noise) & (value - value0 <= noise))
    return jnp.isfinite(value) & armijo


def backtracking(fn, it: Iterate, direction, args, init_step, *, c1=1e-4, shrink=0.5,
                 max_trials=30, noise=None) -> LineSearchResult:
    """Armijo backtracking from `init_step`. On failure the iterate is unchanged (`ok=False`).

    With `noise` (a few roundings of f), a trial whose whole predicted decrease −t·gᵀd is
    below `noise` is also accepted if f did not measurably rise: no comparison of f values can
    confirm such a step, and near a minimizer a Newton-type step is then the best information
    there is (the ε|f| slack of Hager & Zhang's approximate Wolfe conditions, SIAM J. Optim.
    16, 2005). Without it, tight tolerances end in `line_search_failed` one step short.

    The objective is traced once (a do-while loop) and the gradient once, at the accepted
    point: each extra trace of `fn` is paid again in compile time.
    """
    slope = tree_dot(it.grad, direction)
    dtype = it.value.dtype
    init_step = jnp.asarray(init_step, dtype)

    def accept(t, value):
        return _armijo(it.value, slope, t, value, c1, noise)

    # The test is evaluated once per trial, in the body, and carried: evaluated in `cond` and
    # again after the loop, XLA copies it into every fusion that reads it (issue 20).
    def cond(c):
        _, _, k, accepted = c
        return (k == 0) | (~accepted & (k < max_trials + 1))

    def body(c):
        t, _, k, _ = c
        t = jnp.where(k == 0, init_step, t * shrink)
        value = fn(tree_axpy(t, direction, it.params), args)[0].astype(dtype)
        return t, value, k + 1, accept(t, value)

    init = (init_step, jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32), jnp.array(False))
    t, value, k, accepted = while_loop(cond, body, init, max_steps=max_trials + 1)
    ok = accepted & (slope < 0)
    t = jnp.where(ok, t, jnp.zeros_like(t))
    new = _evaluate_at(fn, it, direction, t, args)
    new = tree_where(ok, new, it)
    return LineSearchResult(new, t, ok, Counts.of(fun=k, grad=1))


def backtracking_grad_first(fn, it: Iterate, direction, args, *, c1=1e-4, shrink=0.5,
                            max_trials=30, noise=None) -> LineSearchResult:
    """`backtracking` from the unit step for methods whose unit step is nearly always
    accepted (Newton-type steps): the first trial evaluates value and gradient together, so an
    accepted unit step costs one value-and-gradient instead of a value plus a value-and-
    gradient (on data-bound objectives, two passes over the data instead of three). A
    rejected unit step falls back to `backtracking` from t = shrink."""
    dtype = it.value.dtype
    one = jnp.ones((), dtype)
    first = _evaluate_at(fn, it, direction, one, args)
    slope = tree_dot(it.grad, direction)
    ok = _armijo(it.value, slope, one, first.value, c1, noise) & (slope < 0)

    def accepted():
        return LineSearchResult(first, one, jnp.array(True), Counts.of(grad=1))

    def fallback():
        ls = backtracking(fn, it, direction, args, shrink * one, c1=c1, shrink=shrink,
                          max_trials=max_trials - 1, noise=noise)
        return LineSearchResult(ls.iterate, ls.step_size, ls.ok, ls.counts + Counts.of(grad=1))

    return jax.lax.cond(ok, accepted, fallback)



def newton_line_search(fn, iterate: Iterate, direction, args, c1, max_trials,
                       grad_first: bool = False, same_next: bool = True,
                       with_step: bool = False):
    """Armijo backtracking from the full step, accepting a full step whose predicted decrease
    is below the rounding of f (see `backtracking`'s `noise`). `grad_first`: evaluate the
    gradient with the first trial (`backtracking_grad_first`). `same_next`: the next step
    from the same x would be the same (False for random subspaces), so a step that leaves x
    unchanged ends the solve. `with_step`: also return the accepted step size t."""
    search = backtracking_grad_first if grad_first else partial(backtracking, init_step=1.0)
    ls = search(fn, iterate, direction, args, c1=c1, max_trials=max_trials,
                noise=roundoff(iterate.value, iterate.params, LINE_SEARCH_ROUNDOFF))
    # A step below the resolution of x (a noise-level decrease accepted along a direction
    # shorter than x's rounding) leaves x bitwise where it was, and the next step would do the
    # same again until the step budget ran out: no representable step along d decreases f.
    moved = tree_changed(ls.iterate.params, iterate.params) if same_next else True
    result = RESULTS.where(ls.ok & moved, RESULTS.successful, RESULTS.line_search_failed)
    if with_step:
        return ls.iterate, ls.counts, result, ls.step_size
    return ls.iterate, ls.counts, result


def _evaluate_at(fn, it, direction, t, args):
    params = tree_axpy(t, direction, it.params)
    (value, aux), grad = jax.value_and_grad(fn, has_aux=True)(params, args)
    return Iterate(params, value, grad, aux)


def zoom_wolfe(fn, it: Iterate, direction, args, init_step, *, c1=1e-4, c2=0.9,
               max_trials=30, max_step=1e10) -> LineSearchResult:
    """Strong Wolfe line search: find t with
    f(x + t d) ≤ f(x) + c₁ t gᵀd and |∇f(x + t d)ᵀd| ≤ c₂ |gᵀd|.

    Phase 1 extrapolates (a cubic step, kept within [2t, 10t]) until the minimum is bracketed;
    phase 2 shrinks the bracket by cubic interpolation safeguarded to the middle 80% of the
    bracket, so it shrinks at least tenfold when the minimizer sits near an end (Nocedal &
    Wright, Numerical Optimization, 2nd ed., Alg. 3.5/3.6). Every trial costs one
    value-and-gradient evaluation, so the accepted point's gradient comes for free.

    Near a minimizer the decrease c₁ t gᵀd drops below the rounding error of f, and a search
    that compares values alone fails although progress is still possible. So a trial with
    |f(x + t d) − f(x)| ≤ ε|f(x)| (ε = max(1e-6, √eps): 1e-6 in float64 as in CG_DESCENT,
    3.5e-4 in float32) is also accepted when its slope
    satisfies Hager & Zhang's approximate Wolfe conditions, c₂ gᵀd ≤ ∇f(x + t d)ᵀd ≤
    (1 − 2c₁) |gᵀd| (SIAM J. Optim. 16(1), 2005), and within that band the bracket is updated
    from the slope's sign alone (as in Hager & Zhang's update rule).

    If no acceptable point is found within `max_trials` (or the bracket shrinks below the
    dtype's resolution), the lowest Armijo point seen is returned; `ok` is False only if there
    is none, or if `d` is not a descent direction. On failure the iterate is unchanged.
    """
    f0 = it.value
    slope0 = tree_dot(it.grad, direction)
    dtype = jnp.result_type(f0.dtype, slope0.dtype)
    f0, slope0 = f0.astype(dtype), slope0.astype(dtype)
    tiny = float(jnp.finfo(dtype).eps)
    descent = slope0 < 0

    def trial(t):
        new = _evaluate_at(fn, it, direction, t, args)
        return new, new.value.astype(dtype), tree_dot(new.grad, direction).astype(dtype)

    def armijo(t, f):
        return jnp.isfinite(f) & (f <= f0 + c1 * t * slope0)

    def curvature(s):
        return jnp.abs(s) <= c2 * jnp.abs(slope0)

    noise = max(1e-6, tiny ** 0.5) * jnp.abs(f0)

    def sufficient(t, f, s):
        # Only where f did not measurably change: a real decrease must meet Armijo itself.
        approx = (jnp.isfinite(f) & (jnp.abs(f - f0) <= noise)
                  & (s <= (1 - 2 * c1) * jnp.abs(slope0)))
        return armijo(t, f) | approx

    zero = jnp.zeros((), dtype)
    # The objective is traced once, inside the loop: each pass evaluates the pending trial t.
    # [lo, hi] is the bracket once `bracketed` (lo = 0 at first). `best` is the lowest Armijo
    # point seen (or the Wolfe point), the fallback; within rounding noise `lo` may move on
    # slopes alone, but `best` only ever holds a real decrease. Each end is carried as one
    # vector (t, f(t), slope at t): one select moves a whole end, where three scalars would
    # each be a select, a loop-carried value and a fusion operand (issue 20: compile size).
    start = jnp.stack([zero, f0, slope0])
    state = dict(t=jnp.asarray(init_step, dtype), lo=start, hi=start,
                 bracketed=jnp.array(False), k=jnp.zeros((), jnp.int32),
                 done=jnp.array(False), best=it, best_t=zero)

    def cond(st):
        lo, hi = st["lo"][0], st["hi"][0]
        stalled = st["bracketed"] & (jnp.abs(hi - lo) <= tiny * jnp.maximum(hi, lo))
        return descent & ~st["done"] & ~stalled & (st["k"] < max_trials)

    def body(st):
        t, lo, hi = st["t"], st["lo"], st["hi"]
        new_it, f, s = trial(t)
        here = jnp.stack([t, f, s])
        wolfe = sufficient(t, f, s) & curvature(s)
        # Nocedal & Wright's bracket update: a trial without sufficient decrease becomes `hi`;
        # one with decrease becomes `lo`, and if the slope there points back towards the old
        # `lo` (or upward while still extrapolating), the old `lo` becomes `hi`. Within rounding
        # noise of f(x) values cannot rank points, so the slope alone decides: t becomes `lo`
        # when the slope there points into the rest of the bracket.
        in_noise = jnp.isfinite(f) & (jnp.abs(f - f0) <= noise)
        toward_hi = jnp.where(st["bracketed"], s * (hi[0] - t) < 0, s < 0)
        decrease = jnp.where(in_noise, toward_hi, armijo(t, f) & (f < lo[1]))
        flip = decrease & jnp.where(st["bracketed"], s * (hi[0] - lo[0]) >= 0, s >= 0)
        take_t = ~decrease
        new_hi = jnp.where(take_t, here, jnp.where(flip, lo, hi))
        new_lo = jnp.where(decrease, here, lo)
        bracketed = st["bracketed"] | take_t | flip
        keep = wolfe | (armijo(t, f) & (f < st["best"].value.astype(dtype)))
        best = tree_where(keep, new_it, st["best"])
        best_t = jnp.where(keep, t, st["best_t"])

        # One cubic serves both phases: inside the bracket, or extrapolated from the previous
        # point through t.
        ends = jnp.where(bracketed, jnp.concatenate([new_lo, new_hi]),
                         jnp.concatenate([lo, here]))
        cubic = _cubic_min(*ends)
        lo_t, hi_t = new_lo[0], new_hi[0]
        a, b = jnp.minimum(lo_t, hi_t), jnp.maximum(lo_t, hi_t)
        # No cubic: bisect, unless f(hi) overflowed; then hi says nothing about the scale, so
        # shrink tenfold towards lo.
        overflow = ~jnp.isfinite(new_hi[1]) | ~jnp.isfinite(new_hi[2])
        t_zoom = jnp.where(jnp.isfinite(cubic), cubic,
                           jnp.where(overflow, lo_t + 0.1 * (hi_t - lo_t), 0.5 * (a + b)))
        t_zoom = jnp.clip(t_zoom, a + 0.1 * (b - a), b - 0.1 * (b - a))
        # A cubic with no minimizer ahead means f still looks unbounded along d: go tenfold.
        t_ext = jnp.where(jnp.isfinite(cubic) & (cubic > t), cubic, 10.0 * t)
        t_ext = jnp.minimum(jnp.clip(t_ext, 2.0 * t, 10.0 * t), max_step)
        t_next = jnp.where(bracketed, t_zoom, t_ext).astype(dtype)
        return dict(t=t_next, lo=new_lo, hi=new_hi, bracketed=bracketed, k=st["k"] + 1,
                    done=wolfe, best=best, best_t=best_t)

    st = while_loop(cond, body, state, max_steps=max_trials)
    ok = descent & (st["best_t"] > 0)
    final = tree_where(ok, st["best"], it)
    return LineSearchResult(final, jnp.where(ok, st["best_t"], zero), ok, Counts.of(grad=st["k"]))


def _cubic_min(a, fa, sa, b, fb, sb):
    """Minimizer of the cubic through (a, fa, sa) and (b, fb, sb) (N&W eq. 3.59); NaN when the
    cubic has no local minimizer or the data are degenerate, so callers pick their fallback."""
    diff = a - b
    safe = jnp.where(diff == 0, 1.0, diff)
    d1 = sa + sb - 3.0 * (fa - fb) / safe
    disc = d1 * d1 - sa * sb
    d2 = jnp.sign(b - a) * jnp.sqrt(jnp.maximum(disc, 0.0))
    denom = sb - sa + 2.0 * d2
    bad = (diff == 0) | (disc < 0) | (denom == 0) | ~jnp.isfinite(d1)
    t = b - (b - a) * (sb + d2 - d1) / jnp.where(denom == 0, 1.0, denom)
    return jnp.where(bad | ~jnp.isfinite(t), jnp.nan, t)


# --------------------------------------------------------------------------- equations


class Backtrack(eqx.Module):
    point: Point  # the accepted point (the input point when `ok` is False)
    step_size: jax.Array  # the accepted t (0 when `ok` is False)
    merit: jax.Array  # φ at the last trial (inf when no trial was made)
    ok: jax.Array
    num_fun: jax.Array  # evaluations of fn spent


def merit_backtracking(trial, point: Point, *, phi0, slope, decrease, c1: float, max_trials,
                       interpolate: bool, active=None, accept_full=None) -> Backtrack:
    """Backtracking from t = 1 on a merit function φ(t), generic over φ: `trial(t)` returns
    `(point at t, φ(t))` (one evaluation of the residual function, whose aux is kept).

    Accepts the first t with φ(t) ≤ φ(0) + c₁·t·`decrease`, φ(t) < φ(0) and φ(t) finite (with
    `accept_full`, also t = 1 whenever φ(1) is finite). The next t is t/2, or with
    `interpolate` the minimizer of the quadratic through φ(0), φ'(0) = `slope` and φ(t), kept
    in [t/10, t/2] (Dennis & Schnabel, §6.3.2; a non-finite trial halves t). `active=False`
    (a traced flag) makes no trial at all. `max_trials` may be traced.

    Used with φ = ½‖F‖² by the root finders (`backtrack`) and with φ = ‖r‖² by GaussNewton.
    """
    dtype = jnp.result_type(phi0)
    phi0 = jnp.asarray(phi0, dtype)
    slope = jnp.asarray(slope, dtype)
    decrease = jnp.asarray(decrease, dtype)

    def accept(t, phi):
        decreased = (phi <= phi0 + c1 * t * decrease) & (phi < phi0)
        if accept_full is not None:
            decreased = decreased | ((t == 1) & accept_full)
        return jnp.isfinite(phi) & decreased

    # The test is carried from the body, not re-evaluated in `cond` and after the loop (as in
    # `backtracking`: a smaller program).
    def cond(c):
        _, _, _, k, accepted = c
        go = (k == 0) | (~accepted & (k < max_trials))
        return go if active is None else active & go

    def body(c):
        t, _, phi, k, _ = c
        if interpolate:
            curvature = phi - phi0 - slope * t
            t_quad = -slope * t * t / (2 * jnp.where(curvature > 0, curvature, 1.0))
            t_next = jnp.where(jnp.isfinite(phi) & (curvature > 0),
                               jnp.clip(t_quad, 0.1 * t, 0.5 * t), 0.5 * t)
        else:
            t_next = 0.5 * t
        t = jnp.where(k == 0, jnp.ones_like(t), t_next)
        new, phi = trial(t)
        return t, new, phi, k + 1, accept(t, phi)

    init = (jnp.ones((), dtype), point, jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32),
            jnp.array(False))
    t, new, phi, k, accepted = while_loop(cond, body, init, max_steps=max_trials)
    ok = accepted if active is None else active & accepted
    return Backtrack(tree_where(ok, new, point), jnp.where(ok, t, 0.0), phi, ok, k)


def backtrack(fn, point: Point, direction, args, *, phi0, slope, decrease, c1: float,
              max_trials) -> Backtrack:
    """Backtracking from t = 1 on φ(t) = ½‖F(y + t·p)‖² (`merit_backtracking` with quadratic
    interpolation).

    Accepts the first t with φ(t) ≤ φ(0) + c₁·t·`decrease` and φ(t) < φ(0). For an exact
    Newton direction `decrease` = slope = −‖F‖²; for an inexact one with relative linear
    residual η it is −(1 − η)‖F‖², which makes the test the Dembo–Eisenstat–Steihaug condition
    ‖F(y + tp)‖ ≤ (1 − c₁t(1 − η))‖F(y)‖ to first order (Eisenstat & Walker, SIAM J. Optim. 4,
    1994). Each trial is one evaluation of fn, and the accepted one is returned with its aux,
    so nothing is evaluated twice. `max_trials` may be traced.
    """
    dtype = jnp.result_type(phi0)

    # A full Newton-like step below the resolution of y (a start at the root) is taken as it
    # is: φ is round-off there and cannot decrease, and the step test of `_stopping.py` ends
    # the solve. "Newton-like": its linear model removes at least half of ‖F‖² (−slope ≥ φ₀);
    # at a local minimum of ‖F‖ that is not a root, the (damped) step is tiny too but explains
    # little of F, and the search fails there as it should.
    y_scale = jnp.maximum(tree_inf_norm(point.y), 1.0)
    negligible = ((tree_inf_norm(direction) <= 10.0 * jnp.finfo(dtype).eps * y_scale)
                  & (-jnp.asarray(slope, dtype) >= jnp.asarray(phi0, dtype)))

    def trial(t):
        y = tree_axpy(t, direction, point.y)
        f, aux = fn(y, args)
        return Point(y, f, aux), (0.5 * tree_dot(f, f)).astype(dtype)

    return merit_backtracking(trial, point, phi0=phi0, slope=slope, decrease=decrease, c1=c1,
                              max_trials=max_trials, interpolate=True, accept_full=negligible)


def projected_backtracking(fn, it: Iterate, direction, args, project, init_step, *, c1=1e-4,
                           shrink=0.5, max_trials=30, noise=None) -> LineSearchResult:
    """Armijo backtracking along the projection arc x(t) = P(x + t d) of a convex set
    (bounds): accept f(x(t)) ≤ f(x) + c₁ gᵀ(x(t) − x) with f(x(t)) < f(x) (Bertsekas,
    Nonlinear Programming, 2nd ed., §2.3, the Armijo rule along the projection arc). Every
    trial is projected exactly, so active bounds are hit exactly, not up to rounding.

    Each trial evaluates value and gradient (a quasi-Newton or Newton step is nearly always
    accepted at the first trial, whose gradient the solver needs anyway). With `noise` (a few
    roundings of f), where the predicted decrease and the change of f are both below it and f
    can no longer judge a trial, the gradient does: the trial is accepted if
    g(x(t))ᵀ(x(t) − x) ≤ (2c₁ − 1)·gᵀ(x(t) − x), Hager & Zhang's approximate Armijo condition
    (SIAM J. Optim. 16, 2005), which rejects steps that overshoot the minimizer along the path
    by about twice or more. A noise clause on f values alone lets a quasi-Newton iteration
    bounce between two points at the rounding floor (float32, f ≈ 4e7: seen on a rescaled
    logistic regression). On failure the iterate is unchanged (`ok=False`)."""
    dtype = it.value.dtype
    init_step = jnp.asarray(init_step, dtype)

    def delta(params):
        return jax.tree_util.tree_map(jnp.subtract, params, it.params)

    def accept(new: Iterate):
        step = delta(new.params)
        decrease = tree_dot(it.grad, step)
        ok = _armijo(it.value, decrease, 1.0, new.value, c1, None)
        if noise is not None:
            flat = (-decrease <= noise) & (new.value - it.value <= noise)
            ok = ok | (flat & (tree_dot(new.grad, step) <= (2 * c1 - 1) * decrease))
        return ok & (decrease < 0) & jnp.isfinite(new.value) & tree_all_finite(new.grad)

    def trial(t):
        params = project(tree_axpy(t, direction, it.params))
        (value, aux), grad = jax.value_and_grad(fn, has_aux=True)(params, args)
        return Iterate(params, value.astype(dtype), grad, aux)

    def cond(c):
        _, new, k = c
        return (k == 0) | (~accept(new) & (k < max_trials))

    def body(c):
        t, _, k = c
        t = jnp.where(k == 0, init_step, t * shrink)
        return t, trial(t), k + 1

    t, new, k = while_loop(cond, body, (init_step, it, jnp.zeros((), jnp.int32)),
                           max_steps=max_trials)
    ok = accept(new)
    return LineSearchResult(tree_where(ok, new, it), jnp.where(ok, t, jnp.zeros_like(t)), ok,
                            Counts.of(grad=k))


def cauchy_curvature(fn, iterate: Iterate, args, products: bool):
    """(q, counts): the curvature q = uᵀ∇²f(x)u along u = ∇f(x)/‖∇f(x)‖₂, so that 1/q is the
    Cauchy step length along −∇f (exact on a quadratic). Along the unit direction: gᵀHg itself
    underflows where f is tiny (1e-8·f at its minimizer in float32: ‖g‖ ≈ 1e-15, gᵀHg below
    float32's range). `products`: one Hessian-vector product; otherwise a gradient difference
    at h = √eps·s(x), accurate to about √eps relative (one gradient, and no forward-over-reverse
    code to compile). q ≤ 0 or non-finite: no curvature measured."""
    g = iterate.grad
    gnorm = tree_norm(g)
    u = tree_scale(1 / jnp.where(gnorm > 0, gnorm, 1), g)
    grad = jax.grad(lambda p: fn(p, args)[0])
    if products:
        # exact: on x² − y² from (1, 0) GradientDescent's first step lands on the saddle
        # itself, where the zero gradient triggers the curvature check
        return tree_dot(u, jax.jvp(grad, (iterate.params,), (u,))[1]), Counts.of(hvp=1)
    h = eps(iterate.params) ** 0.5 * jnp.maximum(tree_inf_norm(iterate.params), 1)
    g_h = grad(tree_axpy(-h, u, iterate.params))
    return tree_dot(u, tree_sub(g, g_h)) / h, Counts.of(grad=1)

