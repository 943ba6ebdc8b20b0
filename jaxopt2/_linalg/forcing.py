"""Forcing terms: the relative tolerance of an inexact Newton step's inner linear solve."""

from __future__ import annotations

import jax.numpy as jnp

EW_ETA_MAX = 0.5  # forcing terms are capped here: early steps need only a rough direction
_EW_GAMMA, _EW_ALPHA = 0.9, 2.0  # Eisenstat–Walker choice 2


def eisenstat_walker(grad_norm, prev_grad_norm, prev_eta, dtype):
    """Forcing term ηₖ for an inexact Newton solve, choice 2 of Eisenstat & Walker (1996):

        ηₖ = 0.9 (‖gₖ‖ / ‖gₖ₋₁‖)²,   raised to 0.9 ηₖ₋₁² when that exceeds 0.1,

    then clipped to [eps, 0.5]. The inner solve stops at ‖H p + g‖ ≤ ηₖ‖gₖ‖. It is
    scale-invariant, loose far from the minimizer (η = 0.5 while ‖g‖ does not fall) and
    tightens as ‖g‖ falls quadratically, which keeps superlinear local convergence without
    over-solving early; the safeguard stops η from dropping abruptly after one lucky step.
    Below eps the residual test cannot be met and would only burn the CG budget.
    A zero `prev_grad_norm` is treated as 1. Start with prev_grad_norm = ‖g₀‖ and
    prev_eta = 0.5, which gives η₀ = 0.5.
    """
    ratio = grad_norm / jnp.where(prev_grad_norm > 0, prev_grad_norm, 1.0)
    eta = _EW_GAMMA * ratio**_EW_ALPHA
    floor = _EW_GAMMA * prev_eta**_EW_ALPHA
    eta = jnp.where(floor > 0.1, jnp.maximum(eta, floor), eta)
    eps = jnp.finfo(dtype).eps
    return jnp.clip(eta, eps, EW_ETA_MAX).astype(dtype)


def inner_rtol(cg_rtol, grad_norm, prev_grad_norm, prev_eta, dtype):
    """The relative tolerance of this step's inner CG solve: the fixed `cg_rtol`, or, when it
    is None, the Eisenstat–Walker forcing term from the gradient norms of this and the last
    accepted step (`eisenstat_walker`)."""
    if cg_rtol is None:
        return eisenstat_walker(grad_norm, prev_grad_norm, prev_eta, dtype)
    return jnp.asarray(cg_rtol, dtype)
