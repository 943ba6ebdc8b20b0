"""`SketchedSQP` and `DenseSQP`: Newton steps on the KKT system of an equality-constrained
problem, globalized by an exact augmented-Lagrangian merit function.

For min f(x) s.t. c(x) = 0 (c: ℝⁿ → ℝᵐ, Jacobian G), with L = f + λᵀc, a step solves

    [H + δI  Gᵀ] [Δx]     [∇ₓL]
    [G       0 ] [Δλ] = − [ c ]                                         (KKT system)

with H = ∇²ₓₓL (exact, from Hessian-vector products), to a relative residual θₖ (inexactly,
by randomized sketch-and-project, in `SketchedSQP`; exactly, by a dense LU solve, in
`DenseSQP`). The step is judged on the exact augmented Lagrangian

    M_{μ,ν}(x, λ) = L(x, λ) + (μ/2)‖c(x)‖² + (ν/2)‖∇ₓL(x, λ)‖²,

whose stationary points are the KKT points for μ large enough (Di Pillo & Grippo 1979,
Bertsekas 1982). Its directional derivative along the step is affine in μ, D = D₀ + μ·cᵀGΔx;
the penalty μ grows (by `penalty_growth`, at least to twice the value that works) until
(cᵀGΔx = −‖c‖² for an exact step)

    D ≤ −η (ν‖∇ₓL‖² + μ|cᵀGΔx|),    η = 1/2,

which the exact Newton step satisfies for μ large enough whenever H + δI is positive definite
on the null space of G. If no μ up to its cap works, the step is recomputed, first more
accurately (θ/10), then with more regularization δ (×10 from 10⁻⁴; δ also grows when the
curvature test ΔxᵀHΔx ≥ √eps·‖Δx‖² fails, an inertia-free substitute for an inertia count,
Chiang & Zavala 2016; the next step starts from δ/3, or from 10δ when the line search cut a
step longer than a tenth of x below α = 0.1, as a trust region would shrink). Then Armijo
backtracking on M from the unit step, which is accepted near a solution: the exact augmented
Lagrangian does not suffer the Maratos effect.

The accuracy θₖ is `sketch_rtol` when given (fixed θ: local linear convergence), or
min(0.1, ‖(∇ₓL, c)‖₂) (θ → 0 with the KKT residual: superlinear), always on the true residual
‖K z − r‖ ≤ θ‖r‖ (`SketchedSQP` sketches a block-scaled copy of K and checks), as in
I. Hong, S. Na, M. W. Mahoney and M. Kolar, "Constrained Optimization via Exact Augmented
Lagrangian and Randomized Iterative Sketching", ICML 2023 (their Alg. 1 with the sketch
accuracy rule; our constants and regularization are our own choices).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .._loops import while_loop
from .._prng import as_key, check_seed, module_key
from .._results import RESULTS
from .._sqrt_hessian import add_rest, check_b, check_sqrt_hessian
from .._validate import check_budget, check_choice
from .._xla_cpu import gram
from ..sketch import sketch_and_project
from ._base import AbstractConstrainedSolver, ConstrainedOutput
from ._problem import Problem, converged, default_rtol, kkt_residuals

_ETA = 0.5  # the fraction of the model decrease the penalty rule asks for
_DELTA_MIN = 1e-4  # the first regularization tried (IPOPT's δ₀)


class _State(eqx.Module):
    x: jax.Array
    lam: jax.Array
    penalty: jax.Array
    delta: jax.Array
    key: jax.Array
    step: jax.Array
    sketch_steps: jax.Array
    unit_steps: jax.Array
    done: jax.Array
    result: RESULTS
    # `hessian_every` > 1: the Hessian block in use (else an empty array); the Hessians formed
    H: jax.Array
    hessians: jax.Array
    age: jax.Array  # steps since H was formed
    reusable: jax.Array  # the last step was a short unit step: H may serve the next


class _Try(eqx.Module):
    dx: jax.Array
    dlam: jax.Array
    delta: jax.Array
    delta_c: jax.Array
    theta: jax.Array
    penalty: jax.Array
    tries: jax.Array
    ok: jax.Array
    sketch_steps: jax.Array
    key: jax.Array


class AbstractSQP(AbstractConstrainedSolver):
    """The globalization shared by `SketchedSQP` and `DenseSQP` (module docstring); the
    subclasses say how the KKT system is solved (`_kkt_solve`)."""

    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float]
    needs_equality: ClassVar[bool] = True
    merit_nu: eqx.AbstractVar[float]
    penalty: eqx.AbstractVar[float]
    penalty_growth: eqx.AbstractVar[float]
    max_penalty: eqx.AbstractVar[float | None]
    c1: eqx.AbstractVar[float]
    max_backtracks: eqx.AbstractVar[int]
    max_tries: eqx.AbstractVar[int]
    sqrt_hessian: eqx.AbstractVar[Callable | None]
    hessian_every: eqx.AbstractVar[int]

    @abc.abstractmethod
    def _kkt_solve(self, problem: Problem, K0, x, lam, args, rhs, delta, delta_c, theta,
                   key):
        """(z, sketch steps, solved) with z ≈ K⁻¹ rhs to relative residual θ (solved: that
        accuracy was reached), on flat (n + m) vectors, K = K0 + diag(δI, −δ_c I) =
        [[H + δI, Gᵀ], [G, −δ_c I]]; `K0` is what `_prepare` returned."""

    def _prepare(self, problem: Problem, x, lam, args, H=None):
        """The dense KKT matrix K0 (formed once per step, shared by the step's tries), or
        None for a matrix-free solve; `H`: its Hessian block, when already formed."""
        return _kkt_matrix(problem, x, lam, args, self.sqrt_hessian, type(self).__name__, H)

    def _forms_hessian(self) -> bool:
        return True

    def _hessian(self, problem: Problem, x, lam, args):
        return _hessian(problem, x, lam, args, self.sqrt_hessian, type(self).__name__)

    def _accuracy(self, residual_norm, dtype):
        return jnp.asarray(0.0, dtype)

    def _key(self):
        return jax.random.key(0)

    def run(self, problem: Problem, x0, args, max_steps: int) -> ConstrainedOutput:
        n, m = problem.n, problem.m
        dtype = x0.dtype
        eps = float(jnp.finfo(dtype).eps)
        rtol = default_rtol(dtype) if self.rtol is None else self.rtol
        big = 1e12 if eps < 1e-10 else 1e6
        pen_max = big if self.max_penalty is None else self.max_penalty
        nu = self.merit_nu
        no_mu = jnp.zeros((0,), dtype)

        def grad_l(x, lam):
            return problem.lagrangian_grad(x, lam, no_mu, args)

        def merit(x, lam, penalty):
            c = problem.c_eq(x, args)
            gl = grad_l(x, lam)
            return (problem.f(x, args) + lam @ c + 0.5 * penalty * (c @ c)
                    + 0.5 * nu * (gl @ gl))

        def hvp(x, lam, v):
            return jax.jvp(lambda y: grad_l(y, lam), (x,), (v,))[1]

        def direction(s: _State, gl, c, H, grad0, gc):
            """A step that passes the curvature and descent tests, with its δ and μ."""
            rhs = -jnp.concatenate([gl, c])
            r_norm = jnp.linalg.norm(rhs)
            theta0 = self._accuracy(r_norm, dtype)
            gl2 = gl @ gl
            K0 = self._prepare(problem, s.x, s.lam, args, H)

            def attempt(t: _Try):
                key, sub = jax.random.split(t.key)
                z, steps, solved = self._kkt_solve(problem, K0, s.x, s.lam, args, rhs,
                                                   t.delta, t.delta_c, t.theta, sub)
                dx, dlam = z[:n], z[n:]
                # A singular KKT matrix (G rank-deficient: HS 61 at x₀) gives no step or an
                # absurd one: the (2,2) block is then regularized by −δ_c I (IPOPT's δ_c).
                finite = jnp.all(jnp.isfinite(z)) & (
                    jnp.max(jnp.abs(dx), initial=0.0) <= 1e8 * jnp.maximum(
                        1.0, jnp.max(jnp.abs(s.x), initial=0.0)))
                curv = dx @ hvp(s.x, s.lam, dx) + t.delta * (dx @ dx)
                curv_ok = curv >= eps**0.5 * (dx @ dx)
                d0 = grad0[0] @ dx + grad0[1] @ dlam
                b = gc @ dx
                target = _ETA * nu * gl2
                # D ≤ −η(ν‖∇ₓL‖² + μ|cᵀGΔx|): with an exact solve cᵀGΔx = −‖c‖²; a
                # regularized one (δ_c > 0) still asks only that the step reduce ‖c‖.
                slope = b - _ETA * jnp.minimum(b, 0.0)
                works = d0 + t.penalty * slope <= -target
                need = jnp.where(slope < 0, (d0 + target) / jnp.where(slope < 0, -slope, 1.0),
                                 jnp.inf)
                raised = jnp.maximum(self.penalty_growth * t.penalty, 2.0 * need)
                penalty = jnp.where(works, t.penalty, raised)
                fixable = works | (raised <= pen_max)
                ok = finite & curv_ok & fixable
                # Not a descent direction for any admissible μ: solve more accurately first
                # (unless the solve already missed its accuracy: a singular or inconsistent
                # system, which only regularization mends), then regularize more.
                sharpen = finite & curv_ok & ~fixable & (t.theta > eps) & solved
                delta = jnp.where(ok | sharpen, t.delta,
                                  jnp.maximum(_DELTA_MIN, 10.0 * t.delta)).astype(dtype)
                theta = jnp.where(sharpen, 0.1 * t.theta, t.theta).astype(dtype)
                delta_c = jnp.where(finite, t.delta_c,
                                    jnp.maximum(eps**0.25, 10.0 * t.delta_c)).astype(dtype)
                return _Try(dx, dlam, delta, delta_c, theta,
                            jnp.where(ok, penalty, t.penalty).astype(dtype), t.tries + 1, ok,
                            t.sketch_steps + steps, key)

            zero = jnp.zeros((), jnp.int32)
            t0 = _Try(jnp.zeros((n,), dtype), jnp.zeros((m,), dtype), s.delta,
                      jnp.zeros((), dtype), theta0,
                      s.penalty, zero, jnp.zeros((), bool), zero, s.key)
            return while_loop(lambda t: ~t.ok & (t.tries < self.max_tries), attempt, t0,
                              max_steps=self.max_tries)

        def line_search(s: _State, t: _Try, c, m_base, grad0, gc):
            # M is affine in μ: M_μ = M_0 + (μ/2)‖c‖², ∇ₓM_μ = ∇ₓM_0 + μ Gᵀc, ∇_λ unchanged
            m0 = m_base + 0.5 * t.penalty * (c @ c)
            slope = (grad0[0] + t.penalty * gc) @ t.dx + grad0[1] @ t.dlam
            noise = 10 * eps * jnp.abs(m0)

            def body(carry):
                alpha, _, trial = carry
                alpha = jnp.where(trial > 0, 0.5 * alpha, alpha)
                value = merit(s.x + alpha * t.dx, s.lam + alpha * t.dlam, t.penalty)
                ok = value <= m0 + self.c1 * alpha * slope + noise
                return alpha, jnp.isfinite(value) & ok, trial + 1

            init = (jnp.asarray(1.0, dtype), jnp.zeros((), bool), jnp.zeros((), jnp.int32))
            alpha, ok, _ = while_loop(lambda c: ~c[1] & (c[2] < self.max_backtracks), body,
                                      init, max_steps=self.max_backtracks)
            return alpha, ok

        lazy = self.hessian_every > 1

        def step(s: _State):
            gl = grad_l(s.x, s.lam)
            c = problem.c_eq(s.x, args)
            if lazy:
                # A Hessian block serves up to `hessian_every` steps, after short unit steps
                # only (`reusable`, below); the tests that judge a step use exact
                # Hessian-vector products, never the stored block.
                fresh = ~s.reusable | (s.age + 1 >= self.hessian_every)
                H = jax.lax.cond(fresh, lambda: self._hessian(problem, s.x, s.lam, args),
                                 lambda: s.H)
            else:
                fresh, H = jnp.ones((), bool), None
            # the merit at penalty 0 and its gradient, and Gᵀc: shared by the penalty rule
            # (`direction`) and the line search (M is affine in μ)
            m_base, grad0 = jax.value_and_grad(merit, argnums=(0, 1))(s.x, s.lam, 0.0)
            gc = jax.grad(lambda y: 0.5 * jnp.sum(problem.c_eq(y, args) ** 2))(s.x)
            t = direction(s, gl, c, H, grad0, gc)
            alpha, ls_ok = line_search(s, t, c, m_base, grad0, gc)
            moved = t.ok & ls_ok
            x = jnp.where(moved, s.x + alpha * t.dx, s.x)
            lam = jnp.where(moved, s.lam + alpha * t.dlam, s.lam)
            kkt = kkt_residuals(problem, x, lam, no_mu, args)
            done = converged(kkt, problem, x, args, rtol, self.atol)
            finite = jnp.all(jnp.isfinite(x)) & jnp.isfinite(kkt.stationarity)
            result = RESULTS.where(done, RESULTS.successful, RESULTS.max_steps_reached)
            result = RESULTS.where(~done & ~t.ok, RESULTS.linear_solve_failed, result)
            result = RESULTS.where(~done & t.ok & ~ls_ok, RESULTS.line_search_failed, result)
            result = RESULTS.where(finite, result, RESULTS.nonfinite)
            number = s.step + 1
            # A stale block that yields no step ends nothing: the next step forms it afresh.
            stop = done | (~moved & fresh) | ~finite | (number >= max_steps)
            # δ falls by 3 after a step; but a long Newton step (below) that the
            # merit cut to α < 0.1 (curvature barely positive on the null space, far from a
            # solution) raises it ×10 instead, as a trust region would shrink: without this
            # the next step is as long and as cut, and the iterates can stall. ("Long": a
            # tenth of x or more; the short cut steps near a degenerate solution, HS 47, are
            # 1e-5 of x, and growing δ there would only slow them.)
            long_step = jnp.linalg.norm(t.dx) >= 0.1 * jnp.maximum(1.0, jnp.linalg.norm(s.x))
            cut = moved & (alpha < 0.1) & long_step
            delta_next = jnp.where(cut, jnp.maximum(_DELTA_MIN, 10.0 * t.delta), t.delta / 3)
            # (after a stale block failed, the fresh one starts from this step's δ)
            delta_next = jnp.where(moved | fresh, delta_next, s.delta)
            # Far from a solution H changes along the long steps: it is formed afresh after
            # any step that was cut or long (from w = 0 on a logistic regression, reusing it
            # after the first step added 3 steps of 300 projections each).
            reusable = moved & (alpha == 1) & ~long_step
            return _State(x, lam, t.penalty, delta_next.astype(dtype), t.key, number,
                          s.sketch_steps + t.sketch_steps,
                          s.unit_steps + (moved & (alpha == 1)).astype(jnp.int32), stop,
                          result, s.H if H is None else H,
                          s.hessians + (fresh & self._forms_hessian()).astype(jnp.int32),
                          jnp.where(fresh, 0, s.age + 1), reusable)

        # λ₀: the least-squares multiplier argmin ‖∇f + Gᵀλ‖ (m Jacobian products), so
        # that H = ∇²L carries the constraints' curvature from the first step (with λ₀ = 0 a
        # linear objective would give H = 0 and a step of length ‖g‖/δ).
        G0 = jax.jacrev(lambda y: problem.c_eq(y, args))(x0).reshape(m, n)
        g0 = jax.grad(problem.f)(x0, args)
        lam0 = jnp.linalg.lstsq(G0.T, -g0)[0].astype(dtype)
        lam0 = jnp.where(jnp.all(jnp.isfinite(lam0)), lam0, 0.0)
        kkt0 = kkt_residuals(problem, x0, lam0, no_mu, args)
        done0 = converged(kkt0, problem, x0, args, rtol, self.atol)
        zero = jnp.zeros((), jnp.int32)
        key = self._key()
        H0 = jnp.zeros((n, n) if lazy else (0, 0), dtype)
        s0 = _State(x0, lam0, jnp.asarray(self.penalty, dtype), jnp.zeros((), dtype), key,
                    zero, zero, zero, done0 | (max_steps == 0),
                    RESULTS.where(done0, RESULTS.successful, RESULTS.max_steps_reached),
                    H0, zero, zero, jnp.zeros((), bool))
        out = while_loop(lambda s: ~s.done, step, s0, max_steps=max(max_steps, 1))
        stats = dict(penalty=out.penalty, num_sketch_steps=out.sketch_steps,
                     num_unit_steps=out.unit_steps, num_hessians=out.hessians)
        return ConstrainedOutput(out.x, out.lam, no_mu, out.result, out.step, stats)


def _hessian(problem: Problem, x, lam, args, sqrt_hessian=None, who="SQP"):
    """H = ∇²ₓₓL, symmetrized (n Hessian-vector products). With `sqrt_hessian`
    (∇²f = BᵀB + R), H = BᵀB + R + ∇²(λᵀc): one matrix product for f and n forward products
    through the constraints alone."""
    n = problem.n
    no_mu = jnp.zeros((0,), x.dtype)
    if sqrt_hessian is None:
        H = jax.jacfwd(lambda y: problem.lagrangian_grad(y, lam, no_mu, args))(x)
    else:
        b, rest = sqrt_hessian(problem.unravel(x), args)
        H = add_rest(gram(check_b(b, n, x.dtype, who)), rest, who)
        H = H + jax.jacfwd(jax.grad(lambda y: lam @ problem.c_eq(y, args)))(x)
    return 0.5 * (H + H.T)


def _kkt_matrix(problem: Problem, x, lam, args, sqrt_hessian=None, who="SQP", H=None):
    """The dense KKT matrix [[H, Gᵀ], [G, 0]] (`_hessian` unless `H` is given, one
    Jacobian)."""
    n, m = problem.n, problem.m
    if H is None:
        H = _hessian(problem, x, lam, args, sqrt_hessian, who)
    G = jax.jacfwd(lambda y: problem.c_eq(y, args))(x).reshape(m, n)
    return jnp.block([[H, G.T], [G, jnp.zeros((m, m), x.dtype)]])


def _regularized(K0, n, delta, delta_c):
    shift = jnp.concatenate([jnp.full((n,), delta, K0.dtype),
                             jnp.full((K0.shape[0] - n,), -delta_c, K0.dtype)])
    return K0 + jnp.diag(shift)


class DenseSQP(AbstractSQP):
    """Newton–KKT steps solved exactly (dense LU of the (n + m)-square KKT matrix, formed
    from n Hessian-vector products and the constraint Jacobian; where it is singular, e.g. a
    rank-deficient constraint Jacobian, its minimum-norm least-squares solution), with
    `SketchedSQP`'s
    globalization (module docstring): for small and medium equality-constrained problems.

    - `rtol`, `atol`: the KKT tolerance (`None`: 1e-8 in float64, 1e-3 in float32).
    - `merit_nu` (ν), `penalty` (the initial μ), `penalty_growth`, `max_penalty` (`None`:
      1e12, 1e6 in float32): the merit function and its penalty rule.
    - `c1`, `max_backtracks`: the Armijo line search; `max_tries`: the attempts per step
      at a direction that passes the tests.
    - `sqrt_hessian`: optional `(params, args) -> (B, R)` with ∇²f = BᵀB + R (B one row per
      example; R None, a scalar or an n × n matrix), as for `Newton`: the Hessian of the
      Lagrangian is then BᵀB + R (one matrix product) plus the constraints' curvature
      ∇²(λᵀc) (n forward products through `eq` alone), instead of n Hessian-vector
      products through f; for generalized linear models, about half the arithmetic.
    - `hessian_every`: use each Hessian block for up to k steps (1, the default: a fresh one
      every step): the "lazy Hessian" of Doikov, Chayti & Jaggi (2023), only where the last
      step was a unit step shorter than a tenth of x (near a solution, where H changes
      little); after a long or cut step it is formed afresh. The steps on a stale Hessian
      are inexact Newton steps; the tests that accept a step still use exact Hessian-vector
      products, and where a stale block yields no acceptable step, the next step forms
      it afresh from the same point.
      Where forming the Hessian dominates a step (many examples behind f), k = 2 or 3
      trades a step or two for fewer Hessians. `stats["num_hessians"]` counts those formed.

    ```python
    import jax.numpy as jnp, jaxopt2
    fun = lambda x, _: x[0] + x[1]
    circle = lambda x, _: jnp.sum(x**2) - 2.0
    sol = jaxopt2.minimize_constrained(fun, jnp.array([1.0, -0.5]), eq=circle,
                                       solver=jaxopt2.DenseSQP())   # x* = (−1, −1)
    ```
    """

    rtol: float | None = None
    atol: float = 0.0
    merit_nu: float = 1e-2
    penalty: float = 1.0
    penalty_growth: float = 10.0
    max_penalty: float | None = None
    c1: float = 1e-4
    max_backtracks: int = eqx.field(static=True, default=40)
    max_tries: int = eqx.field(static=True, default=12)
    sqrt_hessian: Callable | None = None
    hessian_every: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_sqrt_hessian(self.sqrt_hessian, "DenseSQP")
        check_budget("hessian_every", self.hessian_every)

    def _kkt_solve(self, problem, K0, x, lam, args, rhs, delta, delta_c, theta, key):
        # LU while K is nonsingular; once a solve has failed (δ_c > 0 flags it), the
        # minimum-norm least-squares step of the unregularized K, whose Δλ stays bounded
        # where the regularized system's grows like 1/δ_c (λ then wrecks H = ∇²L).
        K = _regularized(K0, problem.n, delta, 0.0)
        z = jax.lax.cond(delta_c > 0, lambda: jnp.linalg.lstsq(K, rhs)[0],
                         lambda: jnp.linalg.solve(K, rhs))
        return z, jnp.zeros((), jnp.int32), jnp.ones((), bool)


class SketchedSQP(AbstractSQP):
    """Hong, Na, Mahoney & Kolar's sketched Newton–KKT method for equality constraints
    (module docstring): each KKT system solved by randomized sketch-and-project
    (`jaxopt2.sketch.sketch_and_project`) to the relative residual θₖ, the step judged on
    the exact augmented Lagrangian with an adaptive penalty.

    - `precondition` (default True): sketch the block-scaled system K̂ = L⁻¹KL⁻ᵀ, L =
      diag(M^½, C), M the row norms of the Hessian block (the identity when `matrix_free`),
      C Cᵀ = G M⁻¹ Gᵀ + δ_c I (m × m Cholesky) — Gower and Richtárik's sketch-and-project on
      K in the metric L Lᵀ. The KKT matrix of a badly scaled problem (condition 10³ on the
      logistic benchmark) becomes one of condition ≈ 3, where the projections converge at a
      rate near k/(n + m) each and can use the Gram matrix's Cholesky factor instead of an
      SVD. The accuracy θ is still checked on the true residual ‖K z − r‖ (the scaled solve
      resumes with a tighter tolerance when it falls short). False: sketch K itself.
    - `sketch`: `"rows"` (randomized block Kaczmarz, the default: the scaled rows have
      comparable norms, and a vanishing constraint gradient, an inconsistent equation, is
      left alone rather than mixed into every projection) or `"gaussian"` (every step mixes
      all equations); `sketch_size`: equations per sketch (`None`: half of n + m, rounded
      up); `sketch_max_steps`: the projections allowed per KKT solve. A solve that misses θ
      within them leads to more regularization, not to a sharper θ.
    - `sketch_rtol`: a fixed accuracy θ (local linear convergence), or `None`: θₖ =
      min(0.1, ‖(∇ₓL, c)‖₂), tightening with the KKT residual (superlinear).
    - `matrix_free`: False forms the KKT matrix (n Hessian-vector products, one batched
      product) once per step and sketches its rows; True never forms it: every projection
      costs `sketch_size` products with the KKT operator (Hessian-vector products and
      Jacobian products), for problems whose KKT matrix does not fit in memory. Sketch-and-
      project needs about (n + m)/k projections per digit even on a well-conditioned system,
      i.e. several times n + m operator products per solve, so when the n × n Hessian fits,
      forming it (as n products in one batch) is the cheaper way.
    - `key` (a PRNG key) or `seed` (an int): the stream of the sketches.
    - the merit and line-search fields, `sqrt_hessian` and `hessian_every`, as for
      `DenseSQP` (not with `matrix_free`).

    ```python
    import jax.numpy as jnp, jaxopt2
    fun = lambda x, _: jnp.sum((x - 1.0) ** 2) + x[0] * x[1]
    eq = lambda x, _: jnp.stack([x[0] + x[1] + x[2] - 1.0, x[0] - x[3]])
    sol = jaxopt2.minimize_constrained(fun, jnp.zeros(4), eq=eq,
                                       solver=jaxopt2.SketchedSQP(sketch_size=3))
    ```
    """

    rtol: float | None = None
    atol: float = 0.0
    sketch: str = eqx.field(static=True, default="rows")
    sketch_size: int | None = eqx.field(static=True, default=None)
    sketch_max_steps: int = eqx.field(static=True, default=200)
    sketch_rtol: float | None = None
    matrix_free: bool = eqx.field(static=True, default=False)
    precondition: bool = eqx.field(static=True, default=True)
    key: jax.Array | None = None
    seed: int = eqx.field(static=True, default=0)
    merit_nu: float = 1e-2
    penalty: float = 1.0
    penalty_growth: float = 10.0
    max_penalty: float | None = None
    c1: float = 1e-4
    max_backtracks: int = eqx.field(static=True, default=40)
    max_tries: int = eqx.field(static=True, default=12)
    sqrt_hessian: Callable | None = None
    hessian_every: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_choice("sketch", self.sketch, ("gaussian", "rows"))
        check_sqrt_hessian(self.sqrt_hessian, "SketchedSQP")
        check_budget("hessian_every", self.hessian_every)
        if self.hessian_every > 1 and self.matrix_free:
            raise ValueError("SketchedSQP: `hessian_every` reuses a formed Hessian, which "
                             "`matrix_free=True` never forms; drop one of them.")
        if self.sqrt_hessian is not None and self.matrix_free:
            raise ValueError("SketchedSQP: `sqrt_hessian` forms the Hessian, which "
                             "`matrix_free=True` never does; drop one of them.")
        check_seed(self.seed, "SketchedSQP", self.key)
        if self.key is not None:
            as_key(self.key, "SketchedSQP")
        if self.sketch_size is not None and not (isinstance(self.sketch_size, int)
                                                 and self.sketch_size >= 1):
            raise ValueError(f"`sketch_size` must be a positive int or None; got "
                             f"{self.sketch_size!r}.")
        if self.sketch_rtol is not None and not 0 < self.sketch_rtol < 1:
            raise ValueError(f"`sketch_rtol` must be in (0, 1) or None; got "
                             f"{self.sketch_rtol!r}.")

    def _key(self):
        return module_key(as_key(self.key, "SketchedSQP"), self.seed, "SketchedSQP")

    def _accuracy(self, residual_norm, dtype):
        if self.sketch_rtol is not None:
            return jnp.asarray(self.sketch_rtol, dtype)
        return jnp.minimum(0.1, residual_norm).astype(dtype)

    def _forms_hessian(self) -> bool:
        return not self.matrix_free

    def _prepare(self, problem, x, lam, args, H=None):
        if not self.matrix_free:
            return _kkt_matrix(problem, x, lam, args, self.sqrt_hessian, "SketchedSQP", H)
        if not self.precondition:
            return None
        # The constraint Jacobian (m reverse products) for the scaling's Schur block.
        return jax.jacrev(lambda y: problem.c_eq(y, args))(x).reshape(problem.m, problem.n)

    def _kkt_solve(self, problem, K0, x, lam, args, rhs, delta, delta_c, theta, key):
        n, m = problem.n, problem.m
        size = (n + m + 1) // 2 if self.sketch_size is None else min(self.sketch_size, n + m)
        if self.matrix_free:
            no_mu = jnp.zeros((0,), x.dtype)

            def mv(z):
                dx, dlam = z[:n], z[n:]
                hdx = jax.jvp(lambda y: problem.lagrangian_grad(y, lam, no_mu, args), (x,),
                              (dx,))[1]
                c, vjp = jax.vjp(lambda y: problem.c_eq(y, args), x)
                gdx = jax.jvp(lambda y: problem.c_eq(y, args), (x,), (dx,))[1]
                return jnp.concatenate([hdx + delta * dx + vjp(dlam)[0],
                                        gdx - delta_c * dlam])

            A = mv
            G = K0
            hscale = None
        else:
            A = _regularized(K0, n, delta, delta_c)
            G = A[n:, :n]
            # Row norms of the (1,1) block: its Jacobi-like scale, which also sees the
            # off-diagonal curvature of a variable whose diagonal entry vanishes.
            hscale = jnp.linalg.norm(A[:n, :n], axis=1)
        if self.matrix_free:
            def operator(mv_):
                return lx.FunctionLinearOperator(
                    mv_, jax.ShapeDtypeStruct((n + m,), x.dtype), tags=lx.symmetric_tag)
        else:
            def operator(K):
                return K

        def solve(Ak, b, key, y0, rtol, projection):
            return sketch_and_project(operator(Ak), b, key, sketch_size=size,
                                      sketch=self.sketch, x0=y0,
                                      max_steps=self.sketch_max_steps, rtol=rtol, atol=0.0,
                                      projection=projection)

        if not self.precondition:
            z, info = solve(A, rhs, key, None, theta, "svd")
            return z, info.num_steps, info.converged
        scale = _BlockScaling.build(hscale, G, delta, delta_c, n, x.dtype)
        K_hat = scale.operator(A) if self.matrix_free else scale.matrix(A)
        rhs_hat = scale.inv(rhs)
        target = theta * jnp.linalg.norm(rhs)

        def true_residual(y):
            z = scale.back(y)
            Kz = A(z) if self.matrix_free else A @ z
            return jnp.linalg.norm(Kz - rhs)

        # The accuracy θ is asked of the true residual ‖K z − r‖ ≤ θ‖r‖: a pass solves the
        # scaled system K̂ y = L⁻¹r to a relative tolerance, the true residual is checked
        # (one product with K), and while it misses the target the next pass resumes from y
        # with the scaled tolerance tightened by the shortfall. The scaled system is well
        # conditioned, so its projections use the Gram matrix's Cholesky factor (several
        # times cheaper than an SVD).
        def body(c):
            y, key, steps, rtol, _, _, passes = c
            key, sub = jax.random.split(key)
            # A formed K̂: its Gram matrix once per pass, then each projection is a gather
            # and a k × k Cholesky (`projection="gram"`: the same steps, about half the
            # cost each for k = (n + m)/2).
            y, info = solve(K_hat, rhs_hat, sub, y, rtol,
                            "cholesky" if self.matrix_free else "gram")
            res = true_residual(y)
            rtol = (0.5 * rtol * jnp.minimum(1.0, target / jnp.where(res > 0, res, 1.0))
                    ).astype(x.dtype)
            return (y, key, steps + info.num_steps, rtol, res, info.converged, passes + 1)

        def more(c):
            _, _, steps, _, res, ok, passes = c
            return (passes < 3) & ok & (res > target) & (steps < self.sketch_max_steps)

        zero = jnp.zeros((), jnp.int32)
        init = (jnp.zeros_like(rhs), key, zero, theta, jnp.asarray(jnp.inf, x.dtype),
                jnp.ones((), bool), zero)
        y, _, steps, _, res, _, _ = while_loop(more, body, init, max_steps=3)
        return scale.back(y), steps, res <= target


class _BlockScaling(eqx.Module):
    """The symmetric block-diagonal scaling L = diag(M^½, C), C Cᵀ = G M⁻¹ Gᵀ + δ_c I, of a
    KKT matrix K: the sketches act on K̂ = L⁻¹ K L⁻ᵀ. With M = the (1,1) block's row norms
    (I without a formed matrix), K̂ ≈ [[M^-½ H M^-½, Qᵀ], [Q, −δ_c(CCᵀ)⁻¹]] with Q Qᵀ ≈ I:
    the constraint rows are orthonormalized and the curvature scaled to O(1), whose singular
    values are then those of a well-scaled saddle-point matrix (for H ≈ M: 1 and (1 ± √5)/2,
    Murphy, Golub & Wathen 2000) rather than those of K. Sketch-and-project on K̂ is
    Gower–Richtárik's sketch-and-project on K in the metric B = L Lᵀ with sketches L⁻ᵀS."""

    s: jax.Array  # M^-½, (n,)
    chol: jax.Array  # C, (m, m) lower

    @classmethod
    def build(cls, hscale, G, delta, delta_c, n, dtype):
        eps = jnp.finfo(dtype).eps
        if hscale is None:
            hscale = jnp.ones((n,), dtype)
        top = jnp.max(hscale, initial=0.0)
        M = jnp.maximum(hscale, eps**0.5 * jnp.maximum(top, 1.0))
        s = 1 / jnp.sqrt(M)
        Gs = G * s
        S = Gs @ Gs.T
        m = S.shape[0]
        # a zero row of G (a constraint with a vanishing gradient) leaves S singular
        tiny = eps * jnp.maximum(jnp.trace(S) / max(m, 1), 1.0)
        chol = jnp.linalg.cholesky(S + (delta_c + tiny) * jnp.eye(m, dtype=dtype))
        return cls(s, chol)

    def _solve_c(self, v, trans=False):
        return jax.scipy.linalg.solve_triangular(self.chol, v, lower=True, trans=trans)

    def inv(self, r):
        """L⁻¹ r."""
        n = self.s.shape[0]
        return jnp.concatenate([self.s * r[:n], self._solve_c(r[n:])])

    def back(self, y):
        """L⁻ᵀ y."""
        n = self.s.shape[0]
        return jnp.concatenate([self.s * y[:n], self._solve_c(y[n:], trans=1)])

    def matrix(self, K):
        """K̂ = L⁻¹ K L⁻ᵀ, formed."""
        n = self.s.shape[0]
        H = self.s[:, None] * K[:n, :n] * self.s[None, :]
        Gh = self._solve_c(K[n:, :n] * self.s[None, :])
        D = self._solve_c(self._solve_c(K[n:, n:]).T).T
        return jnp.block([[H, Gh.T], [Gh, D]])

    def operator(self, mv):
        return lambda y: self.inv(mv(self.back(y)))
