"""Gauss-Newton with a backtracking line search, dense or matrix-free."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _least_squares as lsq
from .._base import AbstractLeastSquaresSolver, Counts, Point
from .._linalg import EW_ETA_MAX, eisenstat_walker
from .._linesearch import merit_backtracking
from .._results import RESULTS
from .._tree import ravel, tree_axpy, tree_dot, tree_norm, tree_zeros_like
from .._validate import renamed_fields

_C1 = 1e-4  # Armijo constant
_MAX_TRIALS = 30  # halvings before the line search gives up (t ≥ 2⁻²⁹)


class _State(eqx.Module):
    diag: Any  # cg: column-norm scaling D (pytree like y); dense: unused zeros
    eta: jax.Array  # last Eisenstat-Walker forcing term (cg)
    gnorm: jax.Array  # ‖D⁻¹Jᵀr‖ at the last step (cg)
    rnorm0: jax.Array
    cos: jax.Array  # gradient cosine at the last linearization
    # cg with a preconditioner only (None otherwise, which leaves that program as it was):
    # the preconditioned CG iterations summed over the solve.
    pcg_iters: jax.Array | None = None


@renamed_fields(cg_max_iters="cg_max_steps")
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
      relative tolerance or after `cg_max_steps` (None: min(2n, 200)) jvp/vjp pairs.
    - `"auto"` (default): dense when n ≤ 1000 parameters and m·n ≤ 4e6, else cg.

    **Preconditioning** (`preconditioner`, matrix-free path only): with
    `preconditioner=jaxopt2.sketch.NystromPreconditioner(rank=k)` the inner solve becomes
    preconditioned CG on the normal equations D⁻¹JᵀJD⁻¹ z = −D⁻¹Jᵀr (z = D p; still one jvp and
    one vjp per iteration, the same stopping test), with the Nyström preconditioner of
    Frangella, Tropp & Udell (2023) built at every step from a rank-k sketch of D⁻¹JᵀJD⁻¹
    (k products, batched by `vmap`): the top k eigenvalues are flattened to about the k-th
    one, so CG only has to resolve the tail below them. Any callable with NewtonCG's protocol,
    `preconditioner(fun, params, args, operator) -> (v -> M⁻¹v)`, M symmetric positive definite,
    works too; it is called once per step with `operator` = D⁻¹JᵀJD⁻¹ (a lineax operator tagged
    symmetric and PSD, products by jvp and vjp of the step's linearization) in the scaled
    variables, `fun(z, args) = ½‖r(D⁻¹z)‖²` and `params` = D y.

    It pays when J D⁻¹ has a few large, well-separated singular values above a flat or slowly
    decaying tail (ill-conditioned features, nearly collinear columns): plain CGLS then stops
    at `cg_max_steps` with a poor direction, while the preconditioned solve converges in a few
    dozen iterations and Gauss-Newton keeps its fast local rate. Costs per step: k extra
    jvp/vjp pairs, counted in `num_jvp`/`num_vjp` (a custom preconditioner's own products are
    not), O(n k) memory and an n×k QR and SVD. The preconditioned iterations summed over the
    solve are `sol.state.pcg_iters` (None without a preconditioner). A preconditioner that
    returns non-finite values, or one with vᵀM⁻¹v ≤ 0, stops the solve at the current point
    with `RESULTS.linear_solve_failed` (its direction is never tried). With
    `linear_solver="dense"` it is rejected at construction; on a small problem that `"auto"`
    solves densely it is unused.

    **Mixed precision** (`precision=jaxopt2.MixedPrecision(compute_dtype)`, as in
    `LevenbergMarquardt`): the inner solve's J v and Jᵀu products in `compute_dtype`, the
    residual, the gradient and every test in the parameters' dtype; matrix-free path only.

    **Stopping**: as `LevenbergMarquardt` (MINPACK's relative rules; `None` means √eps):
    `ftol` on the actual and predicted relative reductions of ‖r‖², `xtol` on the
    Gauss-Newton direction, ‖D p‖ ≤ xtol·‖D y‖ (dense: D = current column norms of J),
    `gtol` on the cosine between r and the columns of J, and r = 0. When the line search
    finds no decrease the solve stops: successfully if the cosine is ≤ eps^¼ or ‖r‖ fell to
    √eps·‖r₀‖, else with `RESULTS.line_search_failed`.

    Reference: Nocedal & Wright, Numerical Optimization, 2nd ed., §10.3; Å. Björck,
    Numerical Methods for Least Squares Problems (1996), §9.2 (damped Gauss-Newton); Z.
    Frangella, J. A. Tropp and M. Udell, "Randomized Nyström preconditioning", SIAM J. Matrix
    Anal. Appl. 44 (2023).
    """

    ftol: float | None = None
    xtol: float | None = None
    gtol: float | None = None
    scale: bool = True
    linear_solver: str = "auto"
    cg_max_steps: int | None = None
    preconditioner: Callable | None = None
    precision: Any = None

    def __check_init__(self):
        lsq.check_common(self)

    def init(self, fn, point: Point, args):
        dtype = lsq.working_dtype(point.y, point.f)
        rnorm = tree_norm(point.f).astype(dtype)
        one = jnp.ones((), dtype)
        free = self.preconditioner is not None and not lsq.use_dense(
            self.linear_solver, point.y, point.f, self.precision)
        state = _State(tree_zeros_like(point.y), jnp.asarray(EW_ETA_MAX, dtype), rnorm, rnorm,
                       one, jnp.zeros((), jnp.int32) if free else None)
        return state, Counts(), lsq.at_floor(rnorm, dtype), RESULTS.successful

    def step(self, fn, point: Point, args, state: _State):
        dtype = state.eta.dtype
        ftol, xtol, gtol = lsq.tolerances(self, dtype)
        tmap = jax.tree_util.tree_map
        broken = None  # whether the preconditioner broke (only with one)
        if lsq.use_dense(self.linear_solver, point.y, point.f, self.precision):
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
            lin = lsq.scaled_linearization(fn, point.y, args, state.diag, self.scale, dtype,
                                           self.precision)
            rnorm, cos, gnorm, diag = lin.rnorm, lin.cos, lin.gnorm, lin.diag
            eta = eisenstat_walker(gnorm, state.gnorm, state.eta, dtype)
            eta = lsq.precision_floor(eta, self.precision)
            n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(point.y))
            solve, sketch = lsq.inner_solver(self.preconditioner, fn, point.y, args, lin, 0.0,
                                             rtol=eta, max_iters=lsq.cg_budget(self, n),
                                             dtype=dtype)
            cg, broken = solve(lin.r, lin.g)
            p = tmap(jnp.divide, cg.x, diag)
            # ‖r + J p‖² = ‖q‖² from CGLS, and rᵀJp = gᵀz, so the model needs no more products
            rjp = tree_dot(lin.g, cg.x).astype(dtype)
            jpjp = cg.residual_sq - rnorm**2 - 2 * rjp
            if self.precision is not None:
                # ‖Jp‖² = −rᵀJp for every CG iterate; from the full-precision gradient, as
                # CGLS's residual from low-precision products cancels near the solution.
                jpjp = -rjp
            slope = rjp
            dnorm = lambda v: tree_norm(tmap(jnp.multiply, diag, v)).astype(dtype)  # noqa: E731
            counts = lin.counts + Counts.of(jvp=cg.num_iters, vjp=cg.num_iters)
            if broken is not None:
                counts = counts + sketch
                # No usable direction: skip the line search, keep the point, and report
                # linear_solve_failed below (a NaN p would only exhaust the trials first).
                slope = jnp.where(broken, 0.0, slope)

        stationary = (cos <= gtol) | lsq.at_floor(rnorm, dtype)
        cost = rnorm**2

        def trial(t):
            y = tree_axpy(t, p, point.y)
            f, aux = fn(y, args)
            return Point(y, f, aux), tree_norm(f).astype(dtype) ** 2

        # Armijo on φ = ‖r‖² (φ'(0) = 2rᵀJp), halving t
        ls = merit_backtracking(trial, point, phi0=cost, slope=2 * slope, decrease=2 * slope,
                                c1=_C1, max_trials=_MAX_TRIALS, interpolate=False,
                                active=~stationary & (slope < 0))
        new, t, value, k, ok = ls.point, ls.step_size, ls.merit, ls.num_fun, ls.ok
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
        pcg_iters = state.pcg_iters
        if broken is not None:
            # (at a stationary point the direction was never needed)
            broken = broken & ~stationary
            done = done | broken
            result = RESULTS.where(broken, RESULTS.linear_solve_failed, result)
            pcg_iters = pcg_iters + cg.num_iters
        new_state = _State(diag, eta, gnorm, state.rnorm0, cos, pcg_iters)
        return new, new_state, counts + Counts.of(fun=k), done, result
