"""Trust-region rules shared by NewtonCG, LevenbergMarquardt and the `optimizers`.

A trust-region method compares what a step did with what its model promised,

    ρ = actual / predicted = (f(x) − f(x + p)) / (m(0) − m(p)),

and uses ρ twice: to accept or reject the step, and to decide how far the model is trusted
next time. The second decision always has the same three bands (Nocedal & Wright,
Numerical Optimization, 2nd ed., Alg. 4.1; Moré 1978, §4):

- ρ < 1/4 (`SHRINK_BELOW`), *poor*: the model was too optimistic; shrink the radius Δ, or
  raise the damping λ;
- ρ > 3/4 (`GROW_ABOVE`), *good*: the model was right; grow Δ, or lower λ;
- in between: keep them.

What "shrink" and "grow" mean differs by solver (Steihaug's ‖p‖/4 and 2Δ, MINPACK's
interpolated factor, a damping multiplied by fixed factors, Nielsen's smooth factor), so the
rules here return the bands and the updates as separate small functions:

- `reduction_ratio`: ρ with its guard (no predicted decrease, or a non-finite one, gives
  ρ = 0, which every caller rejects);
- `bands`, `update_radius`: the three-band radius rule;
- `more_shrink`: MINPACK's interpolated shrink factor of Δ for least squares;
- `martens_damping`: λ × grow / × shrink by band (Martens 2010, after Moré);
- `nielsen_damping`: λ·max(1/3, 1 − (2ρ − 1)³) on acceptance, λ·ν with ν doubling on
  rejection (Nielsen 1999).

The bands are open (N&W's ρ < 1/4, ρ > 3/4); MINPACK closes them (ρ ≤ 1/4, ρ ≥ 3/4), which
differs only at exactly those two values. Acceptance thresholds stay with each solver
(NewtonCG 0.1, MINPACK 1e-4, the optimizers any decrease): they are part of each algorithm's
published form.

```python
import jax.numpy as jnp
from jaxopt2 import _trust_region as tr
rho = tr.reduction_ratio(jnp.array(0.9), jnp.array(1.0))          # 0.9: a good step
poor, good = tr.bands(rho)
radius = tr.update_radius(jnp.array(1.0), poor, good, shrunk=0.25, grown=2.0)   # 2.0
```
"""

from __future__ import annotations

import jax.numpy as jnp

SHRINK_BELOW = 0.25  # ρ below this: the model was too optimistic
GROW_ABOVE = 0.75  # ρ above this: the model can be trusted further


def reduction_ratio(actual, predicted, *, any_sign=False):
    """ρ = actual / predicted reduction, or 0 when the model predicts no decrease
    (predicted ≤ 0, or NaN) or the quotient is not finite.

    Both arguments are reductions (positive = the objective fell). A model that predicts no
    decrease gives no evidence for its step, and a NaN or infinite ρ (a non-finite trial
    value) must not reach the band tests, where comparisons with NaN are all false and
    would keep the radius unchanged; 0 lands in the poor band and below every acceptance
    threshold, so such a step is always rejected and the region shrinks.

    `any_sign=True` is MINPACK's convention (`lmder`: ρ = actred/prered for any prered ≠ 0),
    kept by the least-squares solvers: their predicted reduction is a difference of sums of
    squares that rounding, or a geodesic correction added to the damped step, can push below
    zero, and the signed quotient then still ranks the step (a rise of ‖r‖ that the model
    also predicted counts as agreement). On Moré–Garbow–Hillstrom problems 14 and 24 with
    geodesic acceleration the one-sided rule costs 30–100% more steps.

    ```python
    import jax.numpy as jnp
    from jaxopt2._trust_region import reduction_ratio
    reduction_ratio(jnp.array(0.5), jnp.array(1.0))      # 0.5
    reduction_ratio(jnp.array(0.5), jnp.array(0.0))      # 0.0: nothing was predicted
    reduction_ratio(jnp.array(jnp.nan), jnp.array(1.0))  # 0.0: the trial was not finite
    reduction_ratio(jnp.array(-0.5), jnp.array(-1.0), any_sign=True)  # 0.5
    ```
    """
    actual = jnp.asarray(actual)
    predicted = jnp.asarray(predicted)
    usable = (predicted != 0) if any_sign else (predicted > 0)
    rho = actual / jnp.where(usable, predicted, jnp.ones_like(predicted))
    return jnp.where(usable & jnp.isfinite(rho), rho, jnp.zeros_like(rho))


def bands(rho, *, low=SHRINK_BELOW, high=GROW_ABOVE):
    """`(poor, good)` = (ρ < low, ρ > high): the model was too optimistic, or good enough
    to trust further (Nocedal & Wright, Alg. 4.1). Callers add their own conditions, e.g. a
    rejected step is always poor and Steihaug's radius only grows when the step reached
    the boundary."""
    return rho < low, rho > high


def update_radius(radius, poor, good, *, shrunk, grown):
    """Δ₊ = `shrunk` if poor, `grown` if good (and not poor), else Δ, in Δ's dtype."""
    radius = jnp.asarray(radius)
    new = jnp.where(poor, shrunk, jnp.where(good, grown, radius))
    return new.astype(radius.dtype)


def more_shrink(actual, dirder, rnorm, rnorm_new):
    """MINPACK's factor μ ∈ [0.1, 0.5] for shrinking a least-squares trust region (Moré
    1978, §4; `lmder`): with φ(t) = ‖r(x + t p)‖²/‖r‖² modelled by the quadratic through
    φ(0) = 1, φ'(0) = 2·`dirder` and φ(1) = 1 − `actual`, μ is its minimizer,
    μ = ½·dirder / (dirder + ½·actual), or ½ when the residual did not grow (actual ≥ 0);
    it is raised to 0.1 when smaller, and is 0.1 when the residual grew tenfold or is not
    finite."""
    denom = dirder + 0.5 * actual
    shrink = jnp.where(actual >= 0, 0.5, 0.5 * dirder / jnp.where(denom != 0, denom, 1.0))
    return jnp.where(~(0.1 * rnorm_new < rnorm) | (shrink < 0.1), 0.1, shrink)


def martens_damping(lam, poor, good, *, grow, shrink):
    """Martens' Levenberg–Marquardt heuristic for a damping λ (the inverse of a radius):
    λ·grow when poor, λ·shrink when good, λ otherwise (Martens, "Deep learning via
    Hessian-free optimization", ICML 2010, §4.1: grow 3/2, shrink 2/3). Pass a rejected
    step as poor."""
    return jnp.where(poor, lam * grow, jnp.where(good, lam * shrink, lam))


def nielsen_damping(lam, nu, rho, accept):
    """Nielsen's damping update, `(λ₊, ν₊)`: on acceptance λ·max(1/3, 1 − (2ρ − 1)³) and
    ν = 2; on rejection λ·ν and ν doubled.

    The factor is smooth in ρ: 1/3 at ρ ≥ 1 (the model was exact or pessimistic), 1 at
    ρ = 1/2, and up to 2 as ρ → 0, so λ does not oscillate between fixed multiples as the
    band rule can; successive rejections raise λ geometrically faster (×2, ×4, ×8, …).
    Reference: H. B. Nielsen, "Damping parameter in Marquardt's method", IMM-REP-1999-05,
    DTU (1999); Madsen, Nielsen & Tingleff, "Methods for non-linear least squares
    problems" (2004), eq. 3.16."""
    factor = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
    lam = jnp.asarray(lam)
    new_lam = jnp.where(accept, lam * factor, lam * nu).astype(lam.dtype)
    new_nu = jnp.where(accept, 2.0, 2.0 * nu).astype(jnp.asarray(nu).dtype)
    return new_lam, new_nu
