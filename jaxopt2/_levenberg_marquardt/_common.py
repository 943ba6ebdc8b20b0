"""What both Levenberg–Marquardt paths share."""

from __future__ import annotations

ACCEPT = 1e-4  # accept a step when ρ = actual / predicted reduction ≥ this (MINPACK)
GEODESIC_ALPHA = 0.75  # Transtrum & Sethna's bound on 2‖a‖/‖v‖


def use_geodesic(a_norm, v_norm, a_finite):
    """Keep the geodesic correction a of the step v when 2‖a‖ ≤ α‖v‖ (α = 0.75) and a is
    finite: a larger correction means the second-order term dominates and the quadratic
    path cannot be trusted (Transtrum & Sethna 2012, §4)."""
    return (2.0 * a_norm <= GEODESIC_ALPHA * v_norm) & a_finite
