"""Exact Newton's method with a dense Hessian and a Cholesky solve, for small problems."""

from __future__ import annotations

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from .._base import AbstractMinimizer, Counts, Iterate, roundoff
from .._linesearch import backtracking, backtracking_grad_first
from .._loops import while_loop
from .._results import RESULTS
from .._tree import ravel

# Damping for an indefinite or singular Hessian: τ starts at max(0, −min Hᵢᵢ) + β‖H‖_F and is
# multiplied by _GROWTH until H + τI has a Cholesky factor. Once τ ≥ ‖H‖₂ (≤ ‖H‖_F) it must
# succeed, so with β = 1e-3 and growth 4 about six tries are enough; the rest is slack.
_BETA = 1e-3
_GROWTH = 4.0


class _NewtonState(eqx.Module):
    damping: jax.Array  # τ added to the Hessian at the last step; 0 when H itself was factored


class Newton(AbstractMinimizer):
    """Newton's method with a dense Hessian: solve ∇²f(xₖ) dₖ = −∇f(xₖ) by Cholesky, then
    xₖ₊₁ = xₖ + tₖ dₖ with tₖ from Armijo backtracking starting at the full step tₖ = 1.

    When ∇²f(xₖ) is not positive definite (the Cholesky factor has NaNs: indefinite or
    singular), the solve uses H + τI instead, with τ increased geometrically from
    max(0, −min Hᵢᵢ) + 10⁻³‖H‖_F until the factorisation succeeds (Nocedal & Wright, Alg. 3.3).
    H + τI is positive definite, so dₖ is always a descent direction; the τ used is kept in
    the state (`Solution.state.damping`) for diagnosis.

    The parameters are flattened into one vector (`jax.flatten_util.ravel_pytree`) and the
    n × n Hessian is formed with forward-over-reverse differentiation: n Hessian-vector
    products, O(n²) memory and an O(n³) factorisation per step. Use it for problems up to a
    few thousand parameters, where it converges quadratically near a minimizer with no
    tuning; for larger problems use `NewtonCG`, which never forms the Hessian.

    Each step counts one dense Hessian (`num_hessian`) plus the line search's objective
    evaluations and one gradient. A line search that finds no decrease stops the solve with
    `RESULTS.line_search_failed`. Near a minimizer, where the predicted decrease −gᵀd falls
    below the rounding of f, the full step is taken unless f measurably rises, so tight
    tolerances remain reachable.

    Reference: J. Nocedal and S. J. Wright, Numerical Optimization, 2nd ed., §3.3–3.4.

    ```python
    import jax.numpy as jnp, jaxopt2
    rosen = lambda p, a: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
    sol = jaxopt2.minimize(rosen, jnp.array([-1.2, 1.0]), solver=jaxopt2.Newton())
    ```
    """

    rtol: float | None = None
    atol: float = 0.0
    c1: float = 1e-4
    max_backtracks: int = 30
    max_damping_tries: int = 12

    def init(self, fn, iterate: Iterate, args) -> _NewtonState:
        return _NewtonState(jnp.zeros((), iterate.value.dtype))

    def step(self, fn, iterate: Iterate, args, state: _NewtonState):
        x, unravel = ravel(iterate.params)
        g, _ = ravel(iterate.grad)
        h = jax.hessian(lambda v: fn(unravel(v), args)[0])(x).astype(x.dtype)
        factor, tau = _damped_cholesky(0.5 * (h + h.T), self.max_damping_tries)
        d = jsl.cho_solve((factor, True), -g)
        new, counts, result = newton_line_search(fn, iterate, unravel(d), args, self.c1,
                                                 self.max_backtracks)
        counts = counts + Counts.of(hessian=1)
        return new, _NewtonState(tau.astype(iterate.value.dtype)), counts, result


def newton_line_search(fn, iterate: Iterate, direction, args, c1, max_trials,
                       grad_first: bool = False):
    """Armijo backtracking from the full step, accepting a full step whose predicted decrease
    is below the rounding of f (see `backtracking`'s `noise`). `grad_first`: evaluate the
    gradient with the first trial (`backtracking_grad_first`)."""
    search = backtracking_grad_first if grad_first else partial(backtracking, init_step=1.0)
    ls = search(fn, iterate, direction, args, c1=c1, max_trials=max_trials,
                noise=roundoff(iterate.value, iterate.params, 10.0))
    result = RESULTS.where(ls.ok, RESULTS.successful, RESULTS.line_search_failed)
    return ls.iterate, ls.counts, result


def _damped_cholesky(h, max_tries: int):
    """Lower Cholesky factor of h + τI for the smallest τ tried (τ = 0 first) that makes it
    positive definite. Returns (factor, τ); the factor is NaN only if every try failed."""
    eye = jnp.eye(h.shape[0], dtype=h.dtype)
    scale = jnp.linalg.norm(h)
    # H = 0 has no scale of its own; 1 keeps τ positive (the line search fixes the length).
    scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    tau0 = jnp.maximum(-jnp.min(jnp.diag(h)), 0.0) + _BETA * scale

    def failed(factor):
        return ~jnp.all(jnp.isfinite(factor))

    def cond(c):
        factor, _, k = c
        return failed(factor) & (k < max_tries)

    def body(c):
        _, tau, k = c
        tau = jnp.where(k == 0, tau0, _GROWTH * tau)
        return jnp.linalg.cholesky(h + tau * eye), tau, k + 1

    zero = jnp.zeros((), h.dtype)
    factor, tau, _ = while_loop(cond, body, (jnp.linalg.cholesky(h), zero,
                                                 jnp.zeros((), jnp.int32)), max_steps=max_tries)
    return factor, tau
