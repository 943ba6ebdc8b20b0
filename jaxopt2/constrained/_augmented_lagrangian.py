"""`AugmentedLagrangian`: the safeguarded augmented Lagrangian method (ALGENCAN style).

For min f(x) s.t. c_E(x) = 0, c_I(x) ≤ 0, l ≤ x ≤ u, outer step k minimizes over the box the
Powell–Hestenes–Rockafellar augmented Lagrangian

    L_ρ(x; λ̄, μ̄) = f(x) + (ρ/2)·(‖c_E(x) + λ̄/ρ‖² + ‖max(0, c_I(x) + μ̄/ρ)‖²)

approximately (projected gradient ≤ εₖ), warm-started from the previous point, by a bounded
inner solver (projected Newton-CG by default, any `minimize` solver that takes `bounds`), then

    λ = λ̄ + ρ c_E(x),   μ = max(0, μ̄ + ρ c_I(x))                    (first-order update)
    λ̄, μ̄ = clip(λ, ±λ_max), clip(μ, 0, μ_max)                      (safeguard)
    V = max(‖c_E‖∞, ‖max(c_I, −μ̄/ρ)‖∞)                   (feasibility and complementarity)
    ρ ← γρ   if V > τ·V_previous                              (not enough progress)
    εₖ₊₁ = max(ε_final, min(εₖ/10, V))                    (inner accuracy follows the outer)

The bounded multipliers make the method globally convergent to KKT points under CPLD, and to
stationary points of the infeasibility ‖c(x)₊‖² when the constraints cannot be met (Andreani,
Birgin, Martínez & Schuverdt, "On augmented Lagrangian methods with general lower-level
constraints", SIAM J. Optim. 18, 2007; Birgin & Martínez, "Practical Augmented Lagrangian
Methods for Constrained Optimization", SIAM 2014, Alg. 4.1; Conn, Gould & Toint, SIAM J. Numer.
Anal. 28, 1991). When ρ has reached `max_penalty` and V stops falling for three outer steps
while still above the tolerance, the solve ends as `RESULTS.primal_infeasible`: the point is
then (approximately) a local minimizer of the infeasibility, a certificate of local
infeasibility only — a nonconvex feasible set may still have points elsewhere.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._base import AbstractMinimizer
from .._loops import while_loop
from .._minimize import minimize
from .._results import RESULTS
from ._base import AbstractConstrainedSolver, ConstrainedOutput
from ._problem import Problem, converged, default_rtol, kkt_residuals

_STALL_STEPS = 3  # outer steps without progress at the largest penalty: infeasible
_RHO_MIN = 1e-8  # the smallest penalty, at the start and after noisy subproblems


def _inf(v):
    return jnp.max(jnp.abs(v), initial=0.0) if v.size else jnp.zeros((), v.dtype)


class _State(eqx.Module):
    x: jax.Array
    lam: jax.Array  # safeguarded λ̄, used in the next subproblem
    mu: jax.Array
    lam_new: jax.Array  # first-order estimates at x, reported with the solution
    mu_new: jax.Array
    rho: jax.Array
    eps: jax.Array
    v_prev: jax.Array
    stall: jax.Array
    step: jax.Array
    inner_steps: jax.Array
    done: jax.Array
    result: RESULTS


class AugmentedLagrangian(AbstractConstrainedSolver):
    """Safeguarded augmented Lagrangian method for equality and inequality constraints and
    bounds (module docstring for the algorithm and references).

    - `rtol`, `atol`: the KKT tolerance (`None`: 1e-8 in float64, 1e-3 in float32).
    - `inner`: the solver of the subproblems, a `jaxopt2.minimize` solver that takes `bounds`
      when the problem has them; `None` is `jaxopt2.NewtonCG()`, or
      `jaxopt2.ProjectedNewtonCG()` with bounds (Hessian-vector products;
      `jaxopt2.LBFGSB()` needs only gradients but stalls at large ρ). Its own tolerances are
      replaced by the outer loop's εₖ.
    - `inner_max_steps`: the step budget of each subproblem (static).
    - `penalty`: the initial ρ; `None` picks Birgin & Martínez's
      10·max(1, |f(x₀)|)/max(1, ½‖c(x₀)₊‖²), clipped to [1e-8, 1e8].
    - `penalty_growth` (γ) and `progress` (τ): ρ grows by γ when V falls by less than τ, and
      shrinks by γ when a subproblem fails at a feasible point (there its gradient is rounding
      noise amplified by ρ, as in float32 at a large ρ₀).
    - `max_penalty`: the cap on ρ (`None`: 1e12 in float64, 1e6 in float32), and the level at
      which a lack of progress is reported as infeasibility.
    - `max_multiplier`: the safeguard λ_max = μ_max.

    ```python
    import jax.numpy as jnp, jaxopt2
    # min x₀ + x₁ on the unit disc: x* = −(1, 1)/√2
    sol = jaxopt2.minimize_constrained(
        lambda x, _: x[0] + x[1], jnp.array([0.5, 0.0]),
        ineq=lambda x, _: jnp.sum(x**2) - 1.0, solver=jaxopt2.AugmentedLagrangian())
    ```
    """

    rtol: float | None = None
    atol: float = 0.0
    inner: AbstractMinimizer | None = None
    inner_max_steps: int = eqx.field(static=True, default=200)
    penalty: float | None = None
    penalty_growth: float = 10.0
    progress: float = 0.5
    max_penalty: float | None = None
    max_multiplier: float = 1e20

    supports_inequality: ClassVar[bool] = True
    supports_bounds: ClassVar[bool] = True

    def __check_init__(self):
        if self.inner is not None and not isinstance(self.inner, AbstractMinimizer):
            raise TypeError("`inner` must be a jaxopt2.minimize solver such as "
                            f"jaxopt2.LBFGSB(); got {type(self.inner).__name__}.")
        if not (isinstance(self.inner_max_steps, int) and self.inner_max_steps >= 1):
            raise ValueError(f"`inner_max_steps` must be a positive int; got "
                             f"{self.inner_max_steps!r}.")
        if not self.penalty_growth > 1:
            raise ValueError(f"`penalty_growth` must be > 1; got {self.penalty_growth!r}.")
        if not 0 < self.progress < 1:
            raise ValueError(f"`progress` must be in (0, 1); got {self.progress!r}.")
        if self.penalty is not None and not self.penalty > 0:
            raise ValueError(f"`penalty` must be > 0 (or None); got {self.penalty!r}.")

    def _inner(self, bounded: bool):
        inner = self.inner
        if inner is None:
            # Newton-CG (projected with bounds): the subproblems grow ill-conditioned as ρ
            # grows, where L-BFGS-B stalls (HS 49 at ρ = 3e6: 19,000 inner steps, no
            # solution). Resolved here, not imported at module level: shared modules never
            # import a solver module (tests/test_structure.py); this is a user's view.
            from .. import NewtonCG, ProjectedNewtonCG

            inner = ProjectedNewtonCG() if bounded else NewtonCG()
        if bounded and not getattr(type(inner), "supports_bounds", False):
            raise ValueError(f"The problem has bounds but the inner solver "
                             f"{type(inner).__name__} does not take them; use "
                             "jaxopt2.LBFGSB() or jaxopt2.ProjectedNewtonCG().")
        return inner

    def run(self, problem: Problem, x0, args, max_steps: int) -> ConstrainedOutput:
        dtype = x0.dtype
        rtol = default_rtol(dtype) if self.rtol is None else self.rtol
        big = 1e12 if jnp.finfo(dtype).eps < 1e-10 else 1e6
        rho_max = jnp.asarray(big if self.max_penalty is None else self.max_penalty, dtype)
        inner = self._inner(problem.bounded)
        bounds = (problem.lower, problem.upper) if problem.bounded else None

        def augmented(x, data):
            args, lam, mu, rho = data
            ce = problem.c_eq(x, args) + lam / rho
            ci = jnp.maximum(problem.c_ineq(x, args) + mu / rho, 0.0)
            return problem.f(x, args) + 0.5 * rho * (jnp.sum(ce**2) + jnp.sum(ci**2))

        f0 = problem.f(x0, args)
        c_eq0, c_in0 = problem.c_eq(x0, args), problem.c_ineq(x0, args)
        if self.penalty is None:
            viol = 0.5 * (jnp.sum(c_eq0**2) + jnp.sum(jnp.maximum(c_in0, 0.0) ** 2))
            rho0 = jnp.clip(10 * jnp.maximum(1.0, jnp.abs(f0)) / jnp.maximum(1.0, viol),
                            _RHO_MIN, 1e8)
        else:
            rho0 = jnp.asarray(self.penalty)
        rho0 = jnp.where(jnp.isfinite(rho0), rho0, 1.0).astype(dtype)
        lam0 = jnp.zeros((problem.m,), dtype)
        mu0 = jnp.zeros((problem.p,), dtype)
        inf = jnp.asarray(jnp.inf, dtype)
        zero = jnp.zeros((), jnp.int32)
        state = _State(x0, lam0, mu0, lam0, mu0, rho0, jnp.asarray(0.1, dtype), inf, zero,
                       zero, zero, jnp.zeros((), bool), RESULTS.successful)

        def cond(s):
            return ~s.done

        def body(s):
            g_scale = jnp.maximum(1.0, _inf(jax.grad(problem.f)(s.x, args)))
            eps_final = 0.5 * (self.atol + rtol * g_scale)
            tol_inner = jnp.maximum(s.eps, eps_final)
            # Stop on the absolute test ‖G‖ ≤ εₖ alone (atol is traced; rtol must stay a
            # Python float for the shared stopping rule, and tiny disables the relative test).
            solver = eqx.tree_at(lambda v: (v.rtol, v.atol), inner,
                                 (1e-30, tol_inner.astype(dtype)),
                                 is_leaf=lambda v: v is None)
            data = (args, s.lam, s.mu, s.rho)
            sol = minimize(augmented, s.x, data, solver=solver, bounds=bounds,
                           max_steps=self.inner_max_steps, throw=False)
            x = jax.lax.stop_gradient(sol.params)
            ce, ci = problem.c_eq(x, args), problem.c_ineq(x, args)
            lam_new = s.lam + s.rho * ce
            mu_new = jnp.maximum(s.mu + s.rho * ci, 0.0)
            v = jnp.maximum(_inf(ce), _inf(jnp.maximum(ci, -s.mu / s.rho)))
            kkt = kkt_residuals(problem, x, lam_new, mu_new, args)
            ok = converged(kkt, problem, x, args, rtol, self.atol)
            finite = jnp.all(jnp.isfinite(x)) & jnp.isfinite(kkt.stationarity)
            # Feasible to tolerance is progress enough: a larger ρ would only make the
            # subproblems harder (degenerate minimizers stall L-BFGS at a huge ρ).
            feasible = v <= self.atol + rtol
            slow = (v > self.progress * s.v_prev) & ~feasible
            # A subproblem that cannot be solved at a feasible point is one whose gradient is
            # rounding noise: ρ multiplies the rounding of c (ρ·eps·|terms of c|·‖∇c‖, about
            # 5 on HS 100 in float32 at Birgin & Martínez's ρ₀ = 7140, against a tolerance of
            # 0.05). Feasibility needs no larger ρ, so a smaller one is tried instead.
            noisy = (sol.status != RESULTS.successful) & feasible
            rho = jnp.where(slow, jnp.minimum(self.penalty_growth * s.rho, rho_max),
                            jnp.where(noisy, jnp.maximum(s.rho / self.penalty_growth, _RHO_MIN),
                                      s.rho))
            stall = jnp.where(slow & (s.rho >= rho_max) & ~feasible, s.stall + 1, 0)
            step = s.step + 1
            result = RESULTS.where(ok, RESULTS.successful, RESULTS.max_steps_reached)
            result = RESULTS.where(stall >= _STALL_STEPS, RESULTS.primal_infeasible, result)
            result = RESULTS.where(finite, result, RESULTS.nonfinite)
            done = ok | ~finite | (stall >= _STALL_STEPS) | (step >= max_steps)
            lam_safe = jnp.clip(lam_new, -self.max_multiplier, self.max_multiplier)
            mu_safe = jnp.clip(mu_new, 0.0, self.max_multiplier)
            eps = jnp.minimum(0.1 * s.eps, jnp.maximum(v, kkt.stationarity))
            return _State(x, lam_safe, mu_safe, lam_new, mu_new, rho, eps.astype(dtype),
                          v, stall, step,
                          s.inner_steps + sol.stats["num_steps"], done, result)

        if max_steps == 0:
            out = state
            result = RESULTS.max_steps_reached
        else:
            out = while_loop(cond, body, state, max_steps=max_steps)
            result = out.result
        stats = dict(num_inner_steps=out.inner_steps, penalty=out.rho)
        return ConstrainedOutput(out.x, out.lam_new, out.mu_new, result, out.step, stats)
