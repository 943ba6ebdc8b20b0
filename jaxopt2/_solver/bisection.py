"""Bracketing root finder for scalar equations (Chandrupatla's method)."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._base import AbstractRootFinder, Counts, Point, evaluate_point
from .._results import RESULTS
from .._validate import check_positive, check_tolerance, check_tolerances


class _State(eqx.Module):
    bracketed: jax.Array  # False while still expanding from y0 to find a sign change
    # Chandrupatla: [a, b] brackets the root, a is the newest point, c the last one dropped.
    a: jax.Array
    fa: jax.Array
    b: jax.Array
    fb: jax.Array
    c: jax.Array
    fc: jax.Array
    t: jax.Array  # the next point is a + t (b − a)
    # Expansion: points y0 ± h; `left`/`right` are the outermost ones evaluated so far.
    y0: jax.Array
    f0: jax.Array
    h: jax.Array
    left: jax.Array
    f_left: jax.Array
    right: jax.Array
    f_right: jax.Array
    side: jax.Array  # +1: next trial is y0 + h, −1: y0 − h (then h doubles)


def _scalar(y, what: str) -> jax.Array:
    leaves = jtu.tree_leaves(y)
    if len(leaves) != 1 or jnp.shape(leaves[0]) != ():
        shapes = [jnp.shape(x) for x in leaves]
        raise ValueError(f"Bisection solves scalar equations: {what} must be a single scalar "
                         f"(a shape () array), got leaves of shapes {shapes}. For systems use "
                         "jaxopt2.NewtonKrylov() or jaxopt2.Broyden(); to solve many scalar "
                         "equations at once, jax.vmap over root_find.")
    return leaves[0]


def _same_sign(u, v):
    return jnp.sign(u) == jnp.sign(v)


class Bisection(AbstractRootFinder):
    """Root of a scalar equation F(y) = 0 by a safeguarded bracketing method.

    Phase 1 (only without a bracket): expand from y₀, trying y₀ + h, y₀ − h, y₀ + 2h,
    y₀ − 2h, … (h doubling every two trials, h₀ = `initial_step` · max(|y₀|, 1)) until F
    changes sign; the bracket is the new point and the previous one on its side. With
    `lower`/`upper` given, F is evaluated at both (two evaluations) and y₀, if strictly
    inside, splits the bracket for free.

    Phase 2: Chandrupatla's method. Each step evaluates F at a + t (b − a) inside the bracket
    [a, b]; t is the inverse-quadratic-interpolation step through the last three points when
    Chandrupatla's test says the interpolant is monotone on the bracket, else ½ (bisection),
    clipped so the point is at least tol/2 inside both ends. The bracket is kept at every step,
    so convergence is guaranteed, as for bisection, and it is superlinear (order ≈ 1.84) on
    smooth F, like Brent's method but with a simpler, more robust selection rule. One
    evaluation of F per step.

    Stops (successfully) when the bracket width is ≤ atol + rtol·|y| (y the bracket end with
    the smaller |F|), or when |F(y)| ≤ `ftol` (by default only an exact zero). The reported
    root is the last point evaluated, which lies inside that bracket. `rtol=None` is 4·eps of
    y's dtype: the root to nearly full precision.

    Fails with a status when the given bracket has F of the same sign at both ends (pass
    `lower`/`upper` with F(lower)·F(upper) ≤ 0, or none to search); without a bracket,
    running out of `max_steps` while expanding reports `max_steps_reached`.

    Differentiable in `args` through `jaxopt2.root_find` (implicit function theorem on F = 0:
    dy/dθ = −(∂F/∂y)⁻¹ ∂F/∂θ); the iterations themselves are not differentiated.

    Reference: T. R. Chandrupatla, "A new hybrid quadratic/bisection algorithm for finding the
    zero of a nonlinear function without using derivatives", Adv. Eng. Softw. 28 (1997).
    """

    supports_half_precision: ClassVar[bool] = True  # the bracket bounds the error in any dtype
    # rtol/atol bound the bracket's width, not |F| (`_front.equation_detail`)
    tolerance_on_bracket: ClassVar[bool] = True

    confirm_by_step: ClassVar[bool] = False  # the bracket width is its error bound

    lower: float | None = None
    upper: float | None = None
    rtol: float | None = None
    atol: float = 0.0
    ftol: float = 0.0
    initial_step: float = 1e-2

    def __check_init__(self):
        if (self.lower is None) != (self.upper is None):
            raise ValueError("Pass both `lower` and `upper` (a bracket), or neither (then the "
                             f"bracket is searched from y0); got lower={self.lower}, "
                             f"upper={self.upper}.")
        if self.lower is not None and not float(self.lower) < float(self.upper):
            raise ValueError(f"`lower` must be < `upper`; got {self.lower} and {self.upper}.")
        check_tolerances(self)
        check_tolerance("ftol", self.ftol)
        check_positive("initial_step", self.initial_step)

    def _tol(self, s: _State):
        rtol = 4 * float(jnp.finfo(s.a.dtype).eps) if self.rtol is None else self.rtol
        best = jnp.where(jnp.abs(s.fa) <= jnp.abs(s.fb), s.a, s.b)
        return self.atol + rtol * jnp.abs(best)

    def _next_t(self, s: _State) -> jax.Array:
        """Chandrupatla's choice of the next point's position t in [a, b]."""
        a, b, c, fa, fb, fc = s.a, s.b, s.c, s.fa, s.fb, s.fc
        xi = (a - b) / (c - b)
        phi = (fa - fb) / (fc - fb)
        iqi = (phi**2 < xi) & ((1 - phi) ** 2 < 1 - xi)
        t_iqi = fa / (fb - fa) * fc / (fb - fc) + (c - a) / (b - a) * fa / (fc - fa) * fb / (
            fc - fb)
        t = jnp.where(iqi & jnp.isfinite(t_iqi), t_iqi, 0.5)
        tl = jnp.minimum(0.5 * self._tol(s) / jnp.abs(b - a), 0.5)
        t = jnp.clip(t, tl, 1 - tl)
        # An end already at an exact zero (possible for a given bracket): evaluate it next.
        return jnp.where(fa == 0, 0.0, jnp.where(fb == 0, 1.0, t)).astype(a.dtype)

    def _done(self, s: _State, f_new):
        width = jnp.abs(s.b - s.a)
        return (jnp.abs(f_new) <= self.ftol) | (s.bracketed & (width <= self._tol(s)))

    def init(self, fn, point: Point, args):
        y0 = _scalar(point.y, "y0")
        f0 = _scalar(point.f, "F(y0)")
        dtype = y0.dtype
        h = self.initial_step * jnp.maximum(jnp.abs(y0), 1).astype(dtype)
        half = jnp.asarray(0.5, dtype)
        if self.lower is None:
            state = _State(jnp.array(False), y0, f0, y0, f0, y0, f0, half,
                           y0, f0, h, y0, f0, y0, f0, jnp.ones((), dtype))
            return state, Counts(), jnp.abs(f0) <= self.ftol, RESULTS.successful

        # The trailing dimensions of F's output follow y's, so F at the ends reuses `fn`.
        def at(x):
            return _scalar(fn(jtu.tree_unflatten(jtu.tree_structure(point.y), [x]), args)[0],
                           "F(lower)")

        lo, hi = jnp.asarray(self.lower, dtype), jnp.asarray(self.upper, dtype)
        f_lo, f_hi = at(lo), at(hi)
        valid = ~_same_sign(f_lo, f_hi) | (f_lo == 0) | (f_hi == 0)
        # y0 strictly inside splits the bracket: keep the half where F changes sign.
        inside = (lo < y0) & (y0 < hi) & (f0 != 0)
        use_left = inside & ~_same_sign(f0, f_lo)
        use_right = inside & ~use_left
        a = jnp.where(use_right, y0, lo)
        fa = jnp.where(use_right, f0, f_lo)
        b = jnp.where(use_left, y0, hi)
        fb = jnp.where(use_left, f0, f_hi)
        state = _State(jnp.array(True), a, fa, b, fb, a, fa, half,
                       y0, f0, h, y0, f0, y0, f0, jnp.ones((), dtype))
        state = eqx.tree_at(lambda s: s.t, state, self._next_t(state))
        done = (jnp.abs(f0) <= self.ftol) | ~valid
        result = RESULTS.where(valid, RESULTS.successful, RESULTS.bracket_invalid)
        return state, Counts.of(fun=2), done, result

    def step(self, fn, point: Point, args, state: _State):
        s = state
        trial = s.y0 + s.side * s.h
        x = jnp.where(s.bracketed, s.a + s.t * (s.b - s.a), trial)
        new = evaluate_point(fn, jtu.tree_unflatten(jtu.tree_structure(point.y), [x]), args)
        fx = _scalar(new.f, "F(y)")

        # Phase 2 update: keep the bracket, x becomes the newest end a.
        keep_a = _same_sign(fx, s.fa)
        c2, fc2 = jnp.where(keep_a, s.a, s.b), jnp.where(keep_a, s.fa, s.fb)
        b2, fb2 = jnp.where(keep_a, s.b, s.a), jnp.where(keep_a, s.fb, s.fa)

        # Phase 1 update: a sign change against F(y0) closes the bracket with the previous
        # (inner) point on that side.
        right = s.side > 0
        inner = jnp.where(right, s.right, s.left)
        f_inner = jnp.where(right, s.f_right, s.f_left)
        found = ~_same_sign(fx, s.f0)

        bracketed = s.bracketed | found
        b_new = jnp.where(s.bracketed, b2, inner)
        fb_new = jnp.where(s.bracketed, fb2, f_inner)
        c_new = jnp.where(s.bracketed, c2, inner)
        fc_new = jnp.where(s.bracketed, fc2, f_inner)
        expanding = ~s.bracketed
        s = _State(
            bracketed, x, fx, b_new, fb_new, c_new, fc_new, s.t, s.y0, s.f0,
            jnp.where(expanding & ~right, 2 * s.h, s.h),
            jnp.where(expanding & ~right, x, s.left),
            jnp.where(expanding & ~right, fx, s.f_left),
            jnp.where(expanding & right, x, s.right),
            jnp.where(expanding & right, fx, s.f_right),
            jnp.where(expanding, -s.side, s.side),
        )
        # Just bracketed: c duplicates b, so the first step is a bisection.
        t = jnp.where(s.bracketed & ~state.bracketed, jnp.asarray(0.5, x.dtype), self._next_t(s))
        s = eqx.tree_at(lambda st: st.t, s, t)
        return new, s, Counts.of(fun=1), self._done(s, fx), RESULTS.successful
