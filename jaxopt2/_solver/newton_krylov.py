"""Jacobian-free Newton–Krylov for large systems F(y) = 0: inexact Newton steps by GMRES on
Jacobian-vector products, with an automatic banded preconditioner found by probing."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._base import AbstractRootFinder, Counts, Point, newton_root_outcome, residual_converged
from .._linalg import EW_ETA_MAX, band_solver, eisenstat_walker, gmres, probe_band
from .._linesearch import backtrack
from .._results import RESULTS
from .._tree import (
    ravel,
    result_dtype,
    tree_dot,
    tree_inf_norm,
    tree_neg,
    tree_norm,
    tree_size,
    tree_where,
)
from .._validate import check_budget, check_line_search_solver, renamed_fields

# "auto" keeps the probed band B when ‖b − J B⁻¹b‖ ≤ _BAND_QUALITY‖b‖ for the right-hand side
# b = −F: B then removes most of J's action where it matters. Exact bands give ~eps·cond(J).
_BAND_QUALITY = 0.5
_PRECONDITIONERS = (None, "auto", "banded")


class _NewtonKrylovState(eqx.Module):
    f_norm0: jax.Array  # max|F(y0)|, the scale of the relative stopping test
    f_norm_prev: jax.Array  # ‖F‖₂ where the last step started (for Eisenstat–Walker)
    eta: jax.Array  # the last forcing term
    gmres_iters: jax.Array  # GMRES products at the last step (diagnostic)
    preconditioned: jax.Array  # whether the last step used the band (diagnostic)
    step_size: jax.Array  # the line search's step of the last iteration (1: a full step)


@renamed_fields(gmres_max_iters="gmres_max_steps")
class NewtonKrylov(AbstractRootFinder):
    """Jacobian-free Newton–Krylov: inexact Newton steps by GMRES on Jacobian-vector products,
    for large systems F(y) = 0.

    Each step linearises F once (`jax.linearize`) and solves J p = −F by restarted GMRES
    (right-preconditioned, own implementation on pytrees) to the relative residual
    ‖J p + F‖ ≤ ηₖ‖F‖, with the Eisenstat–Walker forcing term ηₖ (choice 2, capped at 0.5:
    loose far from the root, tightening as ‖F‖ falls, for superlinear local convergence
    without over-solving). The step is globalised by backtracking on ½‖F‖² until
    ‖F(y + tp)‖ ≤ (1 − c₁ t (1 − η̂))‖F(y)‖ (to first order), with η̂ the residual GMRES
    actually reached; the Jacobian is never formed.

    **Preconditioning.** Discretised differential equations have ill-conditioned Jacobians
    (the 1-D Bratu problem at n = 10⁴: cond ≈ 4·10⁷) on which plain GMRES stalls. With
    `preconditioner="auto"` (default) every step probes J with 2b+1 products using
    Curtis–Powell–Reid colouring, which recovers a band of half-width b = `bandwidth` exactly
    when J is banded (and a contaminated estimate otherwise), and tests it with one more
    product on the right-hand side b = −F: with x₀ = B⁻¹b, the band is used (as right
    preconditioner, and x₀ as GMRES's start) when ‖b − J x₀‖ ≤ 0.5‖b‖, otherwise the step
    runs unpreconditioned from x = 0. An exact band usually meets the forcing term at x₀
    already, and then GMRES takes no iteration. So structure is found without being declared,
    at 2b+2 products per step (cheap against hundreds of GMRES
    iterations), and problems that are not nearly banded lose only those products. The band
    is in the ravelled unknowns (for a pytree, the concatenation of its leaves in
    `jax.tree_util` order), so the unknowns must be ordered so that couplings are local.
    b = 1 uses a pivoted tridiagonal solve; wider bands an LU without pivoting (a scan over
    rows, fine for diagonally dominant or well-conditioned bands; a failed factorisation
    fails the quality test in "auto").

    - `None`: plain GMRES (cheapest per iteration for well-conditioned J).
    - `"banded"`: use the probed band whenever ‖b − J B⁻¹b‖ < ‖b‖ (and its solve is finite).
    - a callable `preconditioner(fn, y, args) -> (v -> M⁻¹v)`, M⁻¹ ≈ J(y)⁻¹ acting on pytrees
      shaped like y; built once per step (`fn(y, args)` returns `(F, aux)`), and used, as
      the band, when ‖b − J M⁻¹b‖ < ‖b‖.

    **Arguments:**

    - `rtol`, `atol`: stop when max|F(y)| ≤ atol + rtol·max|F(y₀)|; `rtol=None` is √eps of
      the working dtype.
    - `gmres_restart`: Krylov basis size m of GMRES(m) (default 30: memory m·n).
    - `gmres_max_steps`: GMRES products per Newton step (default 300); a step whose GMRES
      does not reach ηₖ still uses its best iterate if it reduces ‖J p + F‖.
    - `preconditioner`, `bandwidth` (default 1, the tridiagonal Jacobians of 1-D
      three-point stencils; use 2 for five-point stencils and so on): see above.
    - `c1`, `max_backtracks`: line search constants (1e-4, 30).

    Counts per step: `fun` = 1 (linearize) + line-search trials; `jvp` = GMRES products +
    2b+2 probing products with the band (1 with a callable, none without preconditioner).

    If GMRES makes no progress at all (η̂ ≥ 1), the solve stops with
    `RESULTS.linear_solve_failed`; if no trial step decreases ‖F‖, with
    `RESULTS.line_search_failed`.

    References: R. S. Dembo, S. C. Eisenstat and T. Steihaug, "Inexact Newton methods", SIAM
    J. Numer. Anal. 19 (1982); S. C. Eisenstat and H. F. Walker, "Globally convergent inexact
    Newton methods", SIAM J. Optim. 4 (1994) and "Choosing the forcing terms in an inexact
    Newton method", SIAM J. Sci. Comput. 17 (1996); D. A. Knoll and D. E. Keyes,
    "Jacobian-free Newton–Krylov methods: a survey", J. Comput. Phys. 193 (2004); Y. Saad and
    M. H. Schultz, "GMRES", SIAM J. Sci. Stat. Comput. 7 (1986).
    """

    steps_estimate_error: ClassVar[bool] = True

    rtol: float | None = None
    atol: float = 0.0
    gmres_restart: int = 30
    gmres_max_steps: int = 300
    preconditioner: str | Callable | None = "auto"
    bandwidth: int = 1
    c1: float = 1e-4
    max_backtracks: int = 30

    def __check_init__(self):
        check_line_search_solver(self)
        check_budget("gmres_restart", self.gmres_restart)
        check_budget("gmres_max_steps", self.gmres_max_steps)
        if not (callable(self.preconditioner) or self.preconditioner in _PRECONDITIONERS):
            raise ValueError(f"`preconditioner` must be None, 'auto', 'banded' or a callable "
                             f"`(fn, y, args) -> (v -> M⁻¹v)`; got {self.preconditioner!r}.")
        check_budget("bandwidth", self.bandwidth)  # 1 = tridiagonal

    def init(self, fn, point: Point, args):
        dtype = result_dtype(point.y)
        f_norm0 = tree_inf_norm(point.f)
        done = residual_converged(f_norm0, f_norm0, self.rtol, self.atol, dtype)
        state = _NewtonKrylovState(
            f_norm0=f_norm0,
            f_norm_prev=tree_norm(point.f).astype(dtype),
            eta=jnp.asarray(EW_ETA_MAX, dtype),
            gmres_iters=jnp.zeros((), jnp.int32),
            preconditioned=jnp.array(False),
            step_size=jnp.ones((), dtype),
        )
        return state, Counts(), done, RESULTS.successful

    def _band_preconditioner(self, lin, y):
        """(v ↦ B⁻¹v, flat band solve, products spent) for the band probed at y."""
        flat_y, unravel = ravel(y)
        n, b = flat_y.shape[0], self.bandwidth
        band = probe_band(lin, unravel, n, b, flat_y.dtype)
        solve = band_solver(band, b)
        return (lambda v: unravel(solve(ravel(v)[0]))), 2 * b + 1

    def _preconditioned_start(self, lin, precond, rhs, rhs_norm):
        """x₀ = M⁻¹b and r₀ = b − J x₀ (one product). The ratio ‖r₀‖/‖b‖ is the quality test of
        "auto" (on the vector that matters, the right-hand side); a good band often meets the
        forcing term right there and GMRES takes no iteration at all."""
        x0 = precond(rhs)
        r0 = jax.tree_util.tree_map(jnp.subtract, rhs, lin(x0))
        ratio = tree_norm(r0).astype(rhs_norm.dtype) / jnp.where(rhs_norm > 0, rhs_norm, 1.0)
        usable = jnp.isfinite(ratio)
        if self.preconditioner == "auto":
            usable = usable & (ratio <= _BAND_QUALITY)
        else:
            usable = usable & (ratio < 1)  # otherwise x = 0 is the better start
        return x0, r0, usable

    def step_fraction(self, state: _NewtonKrylovState):
        return state.step_size

    def step(self, fn, point: Point, args, state: _NewtonKrylovState):
        dtype = state.eta.dtype
        _, lin = jax.linearize(lambda y: fn(y, args)[0], point.y)
        f_norm = tree_norm(point.f).astype(dtype)
        eta = eisenstat_walker(f_norm, state.f_norm_prev, state.eta, dtype)
        n = tree_size(point.y)
        rhs = tree_neg(point.f)
        if self.preconditioner is None:
            precond, x0, r0, used, probes = None, None, None, jnp.array(False), 0
        else:
            if callable(self.preconditioner):
                precond, probes = self.preconditioner(fn, point.y, args), 1
            else:
                precond, probes = self._band_preconditioner(lin, point.y)
                probes += 1
            x0, r0, used = self._preconditioned_start(lin, precond, rhs, f_norm)
            x0 = jax.tree_util.tree_map(lambda a: jnp.where(used, a, 0.0), x0)
            r0 = tree_where(used, r0, rhs)
            band_solve = precond

            def precond(v):
                return tree_where(used, band_solve(v), v)

        sol = gmres(lin, rhs, rtol=eta, max_iters=self.gmres_max_steps,
                    restart=min(self.gmres_restart, n), precond=precond, x0=x0, r0=r0)
        eta_hat = (sol.residual_norm / jnp.where(f_norm > 0, f_norm, 1.0)).astype(dtype)
        progress = jnp.isfinite(eta_hat) & (eta_hat < 1)
        # φ'(0) = Fᵀ J p = −‖F‖² − Fᵀr with r = −F − J p the GMRES residual.
        phi0 = 0.5 * f_norm**2
        slope = -(f_norm**2) - tree_dot(point.f, sol.residual)
        decrease = -(1 - jnp.minimum(eta_hat, 1.0)) * f_norm**2
        direction = jax.tree_util.tree_map(lambda p: jnp.where(progress, p, 0.0), sol.x)
        ls = backtrack(fn, point, direction, args, phi0=phi0, slope=slope.astype(dtype),
                       decrease=decrease, c1=self.c1, max_trials=self.max_backtracks)
        new = ls.point
        done, result = newton_root_outcome(self, point, new, state.f_norm0, ls.ok, progress)
        new_state = _NewtonKrylovState(
            f_norm0=state.f_norm0,
            f_norm_prev=f_norm,
            eta=eta,
            gmres_iters=sol.num_iters,
            preconditioned=used,
            step_size=ls.step_size.astype(dtype),
        )
        counts = Counts.of(fun=1 + ls.num_fun, jvp=sol.num_iters + probes)
        return new, new_state, counts, done, result
