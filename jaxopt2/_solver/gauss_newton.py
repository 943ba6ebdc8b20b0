"""Gauss-Newton with a backtracking line search, dense or matrix-free."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._base import AbstractLeastSquaresSolver, Counts, Point
from .._krylov import EW_ETA_MAX, eisenstat_walker
from .._loops import while_loop
from .._results import RESULTS
from .._tree import ravel, tree_axpy, tree_dot, tree_norm, tree_where, tree_zeros_like
from . import _lsq_common as lsq

_C1 = 1e-4  # Armijo constant
_MAX_TRIALS = 30  # halvings before the line search gives up (t ≥ 2⁻²⁹)


class _State(eqx.Module):
    diag: Any  # cg: column-norm scaling D (pytree like y); dense: unused zeros
    eta: jax.Array  # last Eisenstat-Walker forcing term (cg)
    gnorm: jax.Array  # ‖D⁻¹Jᵀr‖ at the last step (cg)
    rnorm0: jax.Array
    cos: jax.Array  # gradient cosine at the last linearization


class GaussNewton(AbstractLeastSquaresSolver):
    """Gauss-Newton for min ½‖r(y)‖² with an Armijo backtracking line search.

    The direction solves the Gauss-Newton system JᵀJ p = −Jᵀr, i.e. the linear least-squares
    problem min ‖J p + r‖, and the step y + t p takes the first t ∈ {1, ½, ¼, …} with
    ‖r(y + t p)‖² ≤ ‖r‖² + 2·1e-4·t·(Jᵀr)ᵀp. Near a zero-residual solution with J of full
    rank, t = 1 is accepted and convergence is quadratic; on large-residual problems it is
    linear at best (the neglected Σ rᵢ∇²rᵢ matters) and may fail, where `LevenbergMarquardt`
    is the robust choice. Each step costs one Jacobian (or linearization) and the line-search
    trials.

    **Inner solve** (`linear_solver`):

    - `"dense"`: J formed (`num_jac`), p = −J⁺r by SVD, the minimum-norm solution, so a
      rank-deficient J gives a well-defined descent direction.
    - `"cg"`: matrix-free CGLS on J D⁻¹ (D: column norms estimated from four Jᵀu products,
      the largest seen so far; `scale=False`: D = I), stopped at the Eisenstat-Walker
      relative tolerance or after `cg_max_iters` (None: min(2n, 200)) jvp/vjp pairs.
    - `"auto"` (default): dense when n ≤ 1000 parameters and m·n ≤ 4e6, else cg.

    **Stopping**: as `LevenbergMarquardt` (MINPACK's relative rules; `None` means √eps):
    `ftol` on the actual and predicted relative reductions of ‖r‖², `xtol` on the
    Gauss-Newton direction, ‖D p‖ ≤ xtol·‖D y‖ (dense: D = current column norms of J),
    `gtol` on the cosine between r and the columns of J, and r = 0. When the line search
    finds no decrease the solve stops: successfully if the cosine is ≤ eps^¼ or ‖r‖ fell to
    √eps·‖r₀‖, else with `RESULTS.line_search_failed`.

    Reference: Nocedal & Wright, Numerical Optimization, 2nd ed., §10.3; Å. Björck,
    Numerical Methods for Least Squares Problems (1996), §9.2 (damped Gauss-Newton).
    """

    ftol: float | None = None
    xtol: float | None = None
    gtol: float | None = None
    scale: bool = True
    linear_solver: str = "auto"
    cg_max_iters: int | None = None

    def __check_init__(self):
        lsq.check_common(self)

    def init(self, fn, point: Point, args):
        dtype = lsq.working_dtype(point.y, point.f)
        rnorm = tree_norm(point.f).astype(dtype)
        one = jnp.ones((), dtype)
        state = _State(tree_zeros_like(point.y), jnp.asarray(EW_ETA_MAX, dtype), rnorm, rnorm,
                       one)
        return state, Counts(), lsq.at_floor(rnorm, dtype), RESULTS.successful

    def step(self, fn, point: Point, args, state: _State):
        dtype = state.eta.dtype
        ftol, xtol, gtol = lsq.tolerances(self, dtype)
        tmap = jax.tree_util.tree_map
        if lsq.use_dense(self.linear_solver, point.y, point.f):
            x, unravel, rflat = lsq.flat_problem(fn, point.y, args, dtype)
            r = ravel(point.f)[0].astype(dtype)
            rnorm = jnp.linalg.norm(r)
            jac = lsq.dense_jacobian(rflat, x, r.size)
            cos, colnorm = lsq.column_cosine(jac, r, rnorm)
            svd = lsq.scaled_svd(jac, jnp.ones_like(colnorm), r)
            p = unravel(svd.vt.T @ lsq.svd_coefficients(svd, 0.0))
            jp = jac @ ravel(p)[0].astype(dtype)
            dnorm = lambda v: jnp.linalg.norm(colnorm * ravel(v)[0])  # noqa: E731
            slope = jnp.dot(r, jp)  # (Jᵀr)ᵀp
            rjp, jpjp = slope, jnp.dot(jp, jp)
            eta = state.eta
            diag, gnorm = state.diag, state.gnorm
            counts = Counts.of(fun=1, jac=1)
        else:
            lin = lsq.scaled_linearization(fn, point.y, args, state.diag, self.scale, dtype)
            rnorm, cos, gnorm, diag = lin.rnorm, lin.cos, lin.gnorm, lin.diag
            eta = eisenstat_walker(gnorm, state.gnorm, state.eta, dtype)
            n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(point.y))
            cg = lsq.cgls(lin.jvp, lin.vjp, lin.r, lin.g, 0.0, rtol=eta,
                          max_iters=lsq.cg_budget(self, n), dtype=dtype)
            p = tmap(jnp.divide, cg.x, diag)
            # ‖r + J p‖² = ‖q‖² from CGLS, and rᵀJp = gᵀz, so the model needs no more products
            rjp = tree_dot(lin.g, cg.x).astype(dtype)
            jpjp = cg.residual_sq - rnorm**2 - 2 * rjp
            slope = rjp
            dnorm = lambda v: tree_norm(tmap(jnp.multiply, diag, v)).astype(dtype)  # noqa: E731
            counts = lin.counts + Counts.of(jvp=cg.num_iters, vjp=cg.num_iters)

        stationary = (cos <= gtol) | lsq.at_floor(rnorm, dtype)
        cost = rnorm**2

        def trial(t):
            y = tree_axpy(t, p, point.y)
            f, aux = fn(y, args)
            return Point(y, f, aux), tree_norm(f).astype(dtype) ** 2

        def armijo(t, value):
            return jnp.isfinite(value) & (value <= cost + 2 * _C1 * t * slope) & (value < cost)

        def cond(c):
            t, _, value, k = c
            return ~stationary & (slope < 0) & (k < _MAX_TRIALS) & ((k == 0) | ~armijo(t, value))

        def body(c):
            t, _, _, k = c
            t = jnp.where(k == 0, 1.0, 0.5 * t).astype(dtype)
            new, value = trial(t)
            return t, new, value, k + 1

        init = (jnp.ones((), dtype), point, jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32))
        t, new, value, k = while_loop(cond, body, init, max_steps=_MAX_TRIALS)
        ok = ~stationary & (k > 0) & armijo(t, value)
        new = tree_where(ok, new, point)
        rnorm_new = jnp.sqrt(value)
        predicted_sq = -(2 * t * rjp + t * t * jpjp)
        actual, predicted, ratio = lsq.reductions(rnorm, rnorm_new, predicted_sq)
        xnorm = dnorm(new.y)
        # The full direction, not t·p: a short step from backtracking says the model is poor
        # there, not that the iterates have converged.
        step = dnorm(p)
        # ftol on the full Gauss-Newton step's predicted reduction: backtracking to a tiny t
        # predicts (and achieves) little, which is a poor model, not convergence.
        full = -(2 * rjp + jpjp) / jnp.where(rnorm > 0, rnorm, 1.0) ** 2
        converged = stationary | (ok & (lsq.ftol_test(actual, jnp.maximum(predicted, full),
                                                      ratio, ftol)
                                        | (step <= xtol * xnorm)
                                        | lsq.at_floor(rnorm_new, dtype)))
        failed = ~stationary & ~ok
        rnorm_now = jnp.where(ok, rnorm_new, rnorm)
        good = converged | lsq.stalled_success(cos, rnorm_now, state.rnorm0, dtype)
        done = converged | failed
        result = RESULTS.where(done & ~good, RESULTS.line_search_failed, RESULTS.successful)
        new_state = _State(diag, eta, gnorm, state.rnorm0, cos)
        return new, new_state, counts + Counts.of(fun=k), done, result
