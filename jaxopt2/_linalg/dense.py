"""Small dense factorisations for Newton-type steps.

- `damped_cholesky`: the Cholesky factor of H + τI for the smallest τ tried that makes it
  positive definite (Nocedal & Wright, Alg. 3.3), for modified Newton steps on indefinite H;
- `newton_solve` / `damped_solve`: J⁻¹·rhs by LU, falling back to the Levenberg step
  (JᵀJ + μI)⁻¹Jᵀ·rhs when J is singular;
- `ravelled_jacobian`: the dense Jacobian of a pytree function in ravelled coordinates.

lineax's `Cholesky`/`LU` factor a given operator and fail on an indefinite or singular one;
these keep going with the damped system, which a globalised Newton method needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._loops import while_loop
from .._tree import ravel

# Damping for an indefinite or singular Hessian: τ starts at max(0, −min Hᵢᵢ) + β‖H‖_F and is
# multiplied by _GROWTH until H + τI has a Cholesky factor. Once τ ≥ ‖H‖₂ (≤ ‖H‖_F) it must
# succeed, so with β = 1e-3 and growth 4 about six tries are enough; the rest is slack.
_BETA = 1e-3
_GROWTH = 4.0


def damped_cholesky(h, max_tries: int):
    """Lower Cholesky factor of h + τI for the smallest τ tried (τ = 0 first) that makes it
    positive definite. Returns (factor, τ); the factor is NaN only if every try failed."""
    eye = jnp.eye(h.shape[0], dtype=h.dtype)
    scale = jnp.linalg.norm(h)
    # H = 0 has no scale of its own; 1 keeps τ positive (the line search fixes the length).
    scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    tau0 = jnp.maximum(-jnp.min(jnp.diag(h)), 0.0) + _BETA * scale

    # One factorisation in the program, in a do-while loop whose first trip is τ = 0 (H
    # itself): a second call for H before the loop was a second LAPACK call site and its own
    # kernels (issue 20: compile time).
    def cond(c):
        _, _, k, ok = c
        return (k == 0) | (~ok & (k <= max_tries))

    def body(c):
        _, tau, k, _ = c
        tau = jnp.where(k == 0, 0.0, jnp.where(k == 1, tau0, _GROWTH * tau)).astype(h.dtype)
        factor = jnp.linalg.cholesky(h + tau * eye)
        return factor, tau, k + 1, jnp.all(jnp.isfinite(factor))

    zero = jnp.zeros((), h.dtype)
    factor, tau, _, _ = while_loop(cond, body, (jnp.full_like(h, jnp.nan), zero,
                                                jnp.zeros((), jnp.int32), jnp.array(False)),
                                   max_steps=max_tries + 1)
    return factor, tau


def damped_solve(jac, rhs, f_norm):
    """(JᵀJ + μI)⁻¹Jᵀ·rhs with μ = ‖F‖ + eps·‖J‖²_F: the Levenberg step used when J is
    singular. μ ~ ‖F‖ keeps the fast local convergence of the Levenberg–Marquardt method
    without nonsingularity (Fan & Yuan, Computing 74, 2005); the eps term keeps it positive
    definite at a root. Its direction is a descent direction for ½‖F‖² whenever JᵀF ≠ 0."""
    dtype = jac.dtype
    mu = f_norm + jnp.finfo(dtype).eps * jnp.sum(jac * jac)
    mu = jnp.maximum(mu, jnp.finfo(dtype).tiny)
    gram = jac.T @ jac + mu * jnp.eye(jac.shape[1], dtype=dtype)
    return jnp.linalg.solve(gram, jac.T @ rhs)


def newton_solve(jac, rhs, f_norm):
    """J⁻¹·rhs by LU, or the damped solve when that is not finite (J singular)."""
    x = jnp.linalg.solve(jac, rhs)
    bad = ~jnp.all(jnp.isfinite(x))
    return lax.cond(bad, lambda: damped_solve(jac, rhs, f_norm), lambda: x)


def ravelled_jacobian(fn, y, args):
    """The Jacobian of the ravelled F at the ravelled y: one `jax.jacfwd` (n forward products,
    batched), plus the unravel function of y."""
    flat_y, unravel = ravel(y)

    def flat_fn(v):
        return ravel(fn(unravel(v), args)[0])[0]

    return jax.jacfwd(flat_fn)(flat_y), unravel
