"""Jacobian-free Newton–Krylov for large systems F(y) = 0: inexact Newton steps by GMRES on
Jacobian-vector products, with an automatic banded preconditioner found by probing."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._base import AbstractRootFinder, Counts, Point, residual_converged
from .._krylov import EW_ETA_MAX, eisenstat_walker
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
from ._root_common import backtrack, gmres
from .root_newton import _check_common

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


def _probe_band(lin, unravel, n: int, b: int, dtype):
    """The band of half-width b of J (in the ravelled unknowns) from 2b+1 products
    (Curtis, Powell & Reid, IMA J. Appl. Math. 13, 1974): colour c probes the columns
    j ≡ c (mod 2b+1); within a band no two columns of one colour meet in a row, so each
    product returns one band entry per row. Returns band[i, k] = J[i, i + k − b]."""
    width = 2 * b + 1
    cols = jnp.arange(n)
    probes = (cols[None, :] % width == jnp.arange(width)[:, None]).astype(dtype)
    outs = jax.vmap(lambda v: ravel(lin(unravel(v)))[0])(probes)  # (2b+1, n)
    offsets = jnp.arange(width) - b
    j = cols[:, None] + offsets[None, :]
    band = jnp.take_along_axis(outs.T, j % width, axis=1)
    return jnp.where((j >= 0) & (j < n), band, 0.0).astype(dtype)


def _band_lu(band, b: int):
    """LU without pivoting of a band matrix (half-width b), row by row in one scan: returns
    L's strictly lower band (n, b) and U's upper band (n, b + 1). Out-of-range rows act as
    the identity, so the first rows need no special case."""
    dtype = band.dtype

    def row(u_prev, a):
        # u_prev[q, c] = U[i−b+q, i−b+q+c]; a[k] = A[i, i+k−b]
        lower = []
        for q in range(b):
            s = a[q]
            for p in range(q):
                s = s - lower[p] * u_prev[p, q - p]
            lower.append(s / u_prev[q, 0])
        upper = []
        for c in range(b + 1):
            s = a[b + c]
            for p in range(c, b):
                s = s - lower[p] * u_prev[p, b - p + c]
            upper.append(s)
        u_row = jnp.stack(upper)
        return jnp.concatenate([u_prev[1:], u_row[None]]), (jnp.stack(lower), u_row)

    u_init = jnp.zeros((b, b + 1), dtype).at[:, 0].set(1.0)
    _, (lower, upper) = lax.scan(row, u_init, band)
    return lower, upper


def _band_lu_solve(lower, upper, r, b: int):
    def forward(z_prev, inputs):
        l_row, r_i = inputs
        z_i = r_i - l_row @ z_prev
        return jnp.concatenate([z_prev[1:], z_i[None]]), z_i

    _, z = lax.scan(forward, jnp.zeros(b, r.dtype), (lower, r))

    def backward(x_next, inputs):
        u_row, z_i = inputs
        x_i = (z_i - u_row[1:] @ x_next) / u_row[0]
        return jnp.concatenate([x_i[None], x_next[:-1]]), x_i

    _, x = lax.scan(backward, jnp.zeros(b, r.dtype), (upper, z), reverse=True)
    return x


def _band_solver(band, b: int):
    """v ↦ B⁻¹v for the probed band B (tridiagonal: LAPACK-style pivoted solve)."""
    if b == 1:
        dl, d, du = band[:, 0], band[:, 1], band[:, 2]
        return lambda v: lax.linalg.tridiagonal_solve(dl, d, du, v[:, None])[:, 0]
    lower, upper = _band_lu(band, b)
    return lambda v: _band_lu_solve(lower, upper, v, b)


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
    - `gmres_max_iters`: GMRES products per Newton step (default 300); a step whose GMRES
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

    rtol: float | None = None
    atol: float = 0.0
    gmres_restart: int = 30
    gmres_max_iters: int = 300
    preconditioner: str | Callable | None = "auto"
    bandwidth: int = 1
    c1: float = 1e-4
    max_backtracks: int = 30

    def __check_init__(self):
        _check_common(self)
        if not (isinstance(self.gmres_restart, int) and self.gmres_restart >= 1):
            raise ValueError(f"`gmres_restart` must be a positive int; got "
                             f"{self.gmres_restart}.")
        if not (isinstance(self.gmres_max_iters, int) and self.gmres_max_iters >= 1):
            raise ValueError(f"`gmres_max_iters` must be a positive int; got "
                             f"{self.gmres_max_iters}.")
        if not (callable(self.preconditioner) or self.preconditioner in _PRECONDITIONERS):
            raise ValueError(f"`preconditioner` must be None, 'auto', 'banded' or a callable "
                             f"`(fn, y, args) -> (v -> M⁻¹v)`; got {self.preconditioner!r}.")
        if not (isinstance(self.bandwidth, int) and self.bandwidth >= 1):
            raise ValueError(f"`bandwidth` must be a positive int (1 = tridiagonal); got "
                             f"{self.bandwidth}.")

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
        )
        return state, Counts(), done, RESULTS.successful

    def _band_preconditioner(self, lin, y):
        """(v ↦ B⁻¹v, flat band solve, products spent) for the band probed at y."""
        flat_y, unravel = ravel(y)
        n, b = flat_y.shape[0], self.bandwidth
        band = _probe_band(lin, unravel, n, b, flat_y.dtype)
        solve = _band_solver(band, b)
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

        sol = gmres(lin, rhs, rtol=eta, max_iters=self.gmres_max_iters,
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
        result = RESULTS.where(ls.ok, RESULTS.successful, RESULTS.line_search_failed)
        result = RESULTS.where(progress, result, RESULTS.linear_solve_failed)
        new = ls.point
        converged = residual_converged(tree_inf_norm(new.f), state.f_norm0, self.rtol,
                                       self.atol, result_dtype(point.y))
        done = converged | ~ls.ok | ~progress
        new_state = _NewtonKrylovState(
            f_norm0=state.f_norm0,
            f_norm_prev=f_norm,
            eta=eta,
            gmres_iters=sol.num_iters,
            preconditioned=used,
        )
        counts = Counts.of(fun=1 + ls.num_fun, jvp=sol.num_iters + probes)
        return new, new_state, counts, done, result
