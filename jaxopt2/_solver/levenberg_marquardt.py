"""Levenberg-Marquardt in Moré's scaled trust-region form (MINPACK's lmder), with a
matrix-free variant for large problems."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .. import _least_squares as lsq
from .._base import AbstractLeastSquaresSolver, Counts, Point
from .._linalg import EW_ETA_MAX, eisenstat_walker
from .._results import RESULTS
from .._tree import ravel, tree_add, tree_norm, tree_where, tree_zeros_like
from .._validate import check_positive, renamed_fields

_ACCEPT = 1e-4  # accept a step when ρ = actual / predicted reduction ≥ this (MINPACK)
_GEODESIC_ALPHA = 0.75  # Transtrum & Sethna's bound on 2‖a‖/‖v‖
_LAMBDA0 = 1e-3  # matrix-free: λ₀ = 1e-3 · ‖J g‖²/‖g‖² (Nielsen's τ = 1e-3)


class _DenseState(eqx.Module):
    svd: lsq.ScaledSVD  # of J D⁻¹ at the current point
    diag: jax.Array  # D
    delta: jax.Array  # trust-region radius Δ (in the D-norm)
    lam: jax.Array  # last λ, the starting guess of the next secular-equation solve
    first: jax.Array  # no step accepted yet (Δ is then clipped to the first ‖D p‖)
    rnorm0: jax.Array
    cos: jax.Array  # gradient cosine at the current point
    stale: jax.Array  # the SVD is not yet of the current point's Jacobian (new point)
    rnorm: jax.Array  # ‖r‖ at the current point


class _FreeState(eqx.Module):
    diag: Any  # D, a pytree like y (0 before the first step)
    lam: jax.Array  # damping λ (< 0 until the first step sets its scale)
    nu: jax.Array  # Nielsen's growth factor on rejection
    eta: jax.Array  # last Eisenstat-Walker forcing term
    gnorm: jax.Array  # ‖Jᵀr‖ at the last step (for the forcing term)
    rnorm0: jax.Array
    cos: jax.Array  # gradient cosine estimate at the last linearization
    # With a preconditioner only (None otherwise, which leaves that program as it was): the
    # preconditioned CG iterations summed over the solve (geodesic solves included).
    pcg_iters: jax.Array | None = None


@renamed_fields(cg_max_iters="cg_max_steps")
class LevenbergMarquardt(AbstractLeastSquaresSolver):
    """Levenberg-Marquardt for min ½‖r(y)‖², in the scaled trust-region form of Moré (1978)
    that MINPACK's `lmder` implements.

    Each step solves (JᵀJ + λD²) p = −Jᵀr with λ ≥ 0 chosen so that ‖D p‖ ≤ Δ: λ = 0 when the
    Gauss-Newton step lies inside the region, otherwise ‖D p‖ is brought within 10% of Δ by
    Moré's safeguarded Newton iteration on the secular equation. The step is accepted when
    ρ = actual / predicted reduction of ‖r‖² is at least 1e-4; Δ shrinks (by MINPACK's
    interpolated factor in [0.1, 0.5]) when ρ < 1/4 and becomes 2‖D p‖ when ρ ≥ 3/4 or λ = 0.
    Δ₀ = `factor`·‖D y₀‖ (`factor` if that is 0), clipped to the first ‖D p‖.

    D (`scale=True`) holds the largest Jacobian column norms seen so far (MINPACK's mode 1,
    zero columns counted as 1), which makes the method invariant to the scaling of the
    parameters; `scale=False` uses D = I.

    Use it for nonlinear least squares and curve fitting, zero- or large-residual; it is the
    robust default (a rank-deficient J, even at the start, is handled by the damping and by
    the minimum-norm Gauss-Newton step). `GaussNewton` is cheaper per step on benign
    zero-residual problems.

    **Inner solve** (`linear_solver`):

    - `"dense"`: J is formed (forward or reverse mode, whichever needs fewer products; one
      `num_jac` per accepted point) and the SVD J D⁻¹ = U S Vᵀ gives p(λ) in closed form for
      every λ, so the secular equation and rejected steps cost no further Jacobian work.
    - `"cg"`: matrix-free; J is never formed. Products J v and Jᵀu come from one
      linearization per step (`num_jvp`, `num_vjp`), and damped CGLS solves the system to the
      Eisenstat-Walker relative tolerance. Moré's secular equation cannot be solved cheaply
      here, so λ itself is the parameter: D holds column norms estimated from four Jᵀu
      products (the largest seen so far; D = I with `scale=False`), CGLS runs on J D⁻¹ in
      z = D p, λ₀ = 1e-3·‖J g‖²/‖g‖² (g = D⁻¹Jᵀr), and Nielsen's update
      λ ← λ·max(1/3, 1 − (2ρ − 1)³) on acceptance, λ ← νλ, ν ← 2ν on rejection (Madsen,
      Nielsen & Tingleff, "Methods for non-linear least squares problems", 2004).
      Memory stays about the size of the data.
    - `"auto"` (default): dense when n ≤ 1000 parameters and m·n ≤ 4e6, else cg.

    **Preconditioning** (`preconditioner`, matrix-free path only): with
    `preconditioner=jaxopt2.sketch.NystromPreconditioner(rank=k)` the inner solve becomes
    preconditioned CG on the damped normal equations (D⁻¹JᵀJD⁻¹ + λI) z = −D⁻¹Jᵀr, each
    iteration still one jvp and one vjp, with M⁻¹ the Nyström preconditioner of Frangella, Tropp
    & Udell (2023) built at every step from a rank-k sketch of D⁻¹JᵀJD⁻¹ (k products, batched
    by `vmap`) with shift μ = λ + its `mu`: the top k eigenvalues are flattened to about the
    k-th one plus λ, and CG only has to resolve the rest. Any callable with NewtonCG's protocol,
    `preconditioner(fun, params, args, operator) -> (v -> M⁻¹v)`, M symmetric positive definite,
    works too; it is called once per step with `operator` = D⁻¹JᵀJD⁻¹ (a lineax operator tagged
    symmetric and PSD, products by jvp and vjp of the step's linearization) in the scaled
    variables z = D y, `fun(z, args) = ½‖r(D⁻¹z)‖²`, `params` = D y (λ is not passed: only the
    Nyström class receives it, through μ).

    It pays when J D⁻¹ has a few large, well-separated singular values above a flat or slowly
    decaying tail (ill-conditioned features, nearly collinear columns): plain CGLS then stalls
    on the budget `cg_max_steps` and the truncated steps stagnate, while the preconditioned
    solve converges in a few dozen iterations. Costs per step: k extra jvp/vjp pairs, counted in
    `num_jvp`/`num_vjp` (a custom preconditioner's own products are not), O(n k) memory and an
    n×k QR and SVD. Because λ itself conditions the early systems, those steps need only a
    few iterations either way, and there the sketch dominates the count: keep k near the
    number of large singular values. The preconditioned iterations summed over the solve are
    `sol.state.pcg_iters` (None without a preconditioner). A preconditioner that returns
    non-finite values, or one with vᵀM⁻¹v ≤ 0, stops the solve at the current point with
    `RESULTS.linear_solve_failed` (its step is never taken). With `linear_solver="dense"` it
    is rejected at construction; on a small problem that `"auto"` solves densely it is unused.

    **Stopping** (MINPACK's relative rules, all reported as `RESULTS.successful`):

    - `ftol`: the actual and predicted relative reductions of ‖r‖² are both ≤ ftol (and
      ρ ≤ 2). This is what stops large-residual problems at a local minimum.
    - `xtol`: Δ ≤ xtol·‖D y‖ (cg: ‖D p‖ ≤ xtol·‖D y‖). This stops zero-residual problems.
    - `gtol`: the cosine between r and every column of J is ≤ gtol (cg: ‖Jᵀr‖ ≤
      gtol·‖r‖·‖J g‖/‖g‖, a stricter stand-in for the column norms).
    - r = 0, or ‖r‖² below the dtype's smallest normal number.

    `None` means √eps of the working dtype (1.5e-8 in float64, 3.5e-4 in float32) for all
    three. MINPACK's gtol default is 0; √eps is harmless on zero-residual problems (where
    the cosine stays of order one) and stops large-residual ones once the gradient is
    negligible even if the ftol test does not fire. When the tolerances are below what the
    dtype resolves (MINPACK's info 6/7) the solve stops: successfully if the cosine is
    ≤ eps^¼ or ‖r‖ fell to √eps·‖r₀‖, else with `RESULTS.line_search_failed`.

    **Geodesic acceleration** (`geodesic=True`, Transtrum & Sethna 2012): the step becomes
    v + a/2, with a the solution of the same damped system for the second directional
    derivative r''(v, v) (nested jvp: one extra `num_fun` and two `num_jvp` per step), used
    when 2‖D a‖/‖D v‖ ≤ 0.75. It helps in narrow curved valleys (fewer steps), at the cost of
    one more residual-sized solve per step.

    **Arguments:** `ftol`, `xtol`, `gtol` as above; `factor`: Δ₀ = factor·‖D y₀‖ (MINPACK's
    default 100); `scale`; `linear_solver`; `geodesic`; `cg_max_steps`: CGLS budget per step
    (`None`: min(2n, 200)); `preconditioner` (None: plain CGLS).

    Reference: J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and theory",
    Numerical Analysis, Lecture Notes in Mathematics 630 (1978); M. K. Transtrum and
    J. P. Sethna, "Improvements to the Levenberg-Marquardt algorithm for nonlinear
    least-squares minimization", arXiv:1201.5885 (2012); Z. Frangella, J. A. Tropp and
    M. Udell, "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl. 44 (2023).

    ```python
    import jax.numpy as jnp, jaxopt2
    t = jnp.linspace(0.0, 1.0, 20)
    y = 2.0 * jnp.exp(-3.0 * t)
    fit = lambda p, a: p["A"] * jnp.exp(-p["k"] * a[0]) - a[1]
    sol = jaxopt2.least_squares(fit, {"A": 1.0, "k": 1.0}, (t, y),
                                solver=jaxopt2.LevenbergMarquardt())
    ```
    """

    ftol: float | None = None
    xtol: float | None = None
    gtol: float | None = None
    factor: float = 100.0
    scale: bool = True
    linear_solver: str = "auto"
    geodesic: bool = False
    cg_max_steps: int | None = None
    preconditioner: Callable | None = None

    def __check_init__(self):
        lsq.check_common(self)
        check_positive("factor", self.factor)  # Δ₀ = factor·‖D y₀‖

    # --- init -------------------------------------------------------------------------------

    def init(self, fn, point: Point, args):
        dtype = lsq.working_dtype(point.y, point.f)
        r = ravel(point.f)[0].astype(dtype)
        rnorm = jnp.linalg.norm(r)
        if not lsq.use_dense(self.linear_solver, point.y, point.f):
            one = jnp.ones((), dtype)
            iters = None if self.preconditioner is None else jnp.zeros((), jnp.int32)
            state = _FreeState(tree_zeros_like(point.y), -one, 2 * one,
                               jnp.asarray(EW_ETA_MAX, dtype), rnorm, rnorm, one, iters)
            return state, Counts(), lsq.at_floor(rnorm, dtype), RESULTS.successful
        # J is formed at the start of the first step, not here: one Jacobian (and SVD) site
        # in the compiled program instead of two halves compile time.
        x = ravel(point.y)[0]
        k, n = min(r.size, x.size), x.size
        svd = lsq.ScaledSVD(jnp.zeros(k, dtype), jnp.zeros((k, n), dtype), jnp.zeros(k, dtype),
                            jnp.zeros((), dtype),
                            jnp.zeros((r.size, k), dtype) if self.geodesic else None)
        zero = jnp.zeros((), dtype)
        state = _DenseState(svd, jnp.ones(n, dtype), zero, zero, jnp.array(True), rnorm,
                            jnp.ones((), dtype), jnp.array(True), rnorm)
        return state, Counts(), lsq.at_floor(rnorm, dtype), RESULTS.successful

    def _diag(self, old, colnorm, first):
        """D: the largest column norms seen so far (zeros counted as 1), or I."""
        if not self.scale:
            return jnp.ones_like(colnorm)
        fresh = jnp.where(colnorm > 0, colnorm, 1.0)
        return jnp.where(first, fresh, jnp.maximum(old, colnorm))

    def step(self, fn, point: Point, args, state):
        if isinstance(state, _FreeState):
            return self._free_step(fn, point, args, state)
        return self._dense_step(fn, point, args, state)

    # --- dense: Moré's trust region on the SVD ----------------------------------------------

    def _dense_step(self, fn, point: Point, args, state: _DenseState):
        dtype = state.delta.dtype
        ftol, xtol, gtol = lsq.tolerances(self, dtype)
        eps = jnp.finfo(dtype).eps
        x, unravel, rflat = lsq.flat_problem(fn, point.y, args, dtype)
        r = ravel(point.f)[0].astype(dtype)
        rnorm = state.rnorm
        n, factor = x.size, self.factor

        def refresh():
            """J, D, the SVD of J D⁻¹ and the gradient cosine at the current point."""
            jac = lsq.dense_jacobian(rflat, x, r.size)
            cos, colnorm = lsq.column_cosine(jac, r, rnorm)
            diag = self._diag(state.diag, colnorm, first=state.first)
            return lsq.scaled_svd(jac, diag, r, keep_u=self.geodesic), diag, cos

        svd, diag, cos = lax.cond(state.stale, refresh,
                                  lambda: (state.svd, state.diag, state.cos))
        xnorm = jnp.linalg.norm(diag * x)  # ‖D y‖

        # Δ₀ = factor·‖D y₀‖, once D is known (the first step).
        delta0 = jnp.where(xnorm > 0, factor * xnorm, factor)
        delta = jnp.where(state.first & state.stale, delta0, state.delta).astype(dtype)
        # λ with the step's norm and model decrease, packed in one vector (one loop, one
        # kernel on small problems); the scalar work after the trial evaluation is one kernel
        # too (`lsq.one_kernel`). Otherwise they are most of the program's fusions.
        lm = lsq.lm_solve(svd.s, svd.c, svd.rank_tol, n, delta, state.lam)
        lam = lm[lsq.LM_LAM]
        b = lsq.svd_coefficients(svd, lam)
        extra = Counts()
        if self.geodesic:
            b, extra = self._geodesic(rflat, x, svd, diag, lam, b)
            # ‖D p‖ (V has orthonormal columns), the model decrease and ‖S b‖² of the new b,
            # in place of those of the λ-step (whose norm still clips the first Δ).
            lm = jnp.concatenate([lm, jnp.stack([jnp.linalg.norm(b), lsq.model_decrease(svd, b),
                                                 jnp.sum((svd.s * b) ** 2)])])
        geo = 7 if self.geodesic else 0
        p = (svd.vt.T @ b) / diag

        x_new = x + p
        y_new = unravel(x_new)
        f_new, aux_new = fn(y_new, args)
        r_new = ravel(f_new)[0].astype(dtype)
        rnorm_new = jnp.linalg.norm(r_new)
        xnorm_new = jnp.linalg.norm(diag * x_new)

        def after(lm, first, rnorm, rnorm_new, delta, xnorm, xnorm_new, cos, rnorm0):
            lam, znorm = lm[lsq.LM_LAM], lm[lsq.LM_NORM]
            if geo:
                pnorm, decrease, sb2 = lm[geo], lm[geo + 1], lm[geo + 2]
            else:
                pnorm, decrease, sb2 = znorm, lm[lsq.LM_DECREASE], lm[lsq.LM_SB2]
            stationary = (cos <= gtol) | lsq.at_floor(rnorm, dtype)
            # MINPACK clips the (generous) initial radius to the first step's length.
            delta = jnp.where(first, jnp.minimum(delta, znorm), delta)
            actual, predicted, ratio = lsq.reductions(rnorm, rnorm_new, decrease)
            safe_r = jnp.where(rnorm > 0, rnorm, 1.0)
            dirder = -(sb2 + lam * pnorm**2) / safe_r**2
            # Radius update (Moré 1978, §4 and MINPACK): shrink by a factor in [0.1, 0.5]
            # found by interpolating the actual reduction, expand to 2‖D p‖ on a good step.
            shrink = jnp.where(actual >= 0, 0.5,
                               0.5 * dirder / jnp.where(dirder + 0.5 * actual != 0,
                                                        dirder + 0.5 * actual, 1.0))
            shrink = jnp.where(~(0.1 * rnorm_new < rnorm) | (shrink < 0.1), 0.1, shrink)
            poor = ratio <= 0.25
            good = ~poor & ((lam == 0) | (ratio >= 0.75))
            delta = jnp.where(poor, shrink * jnp.minimum(delta, 10.0 * pnorm),
                              jnp.where(good, 2.0 * pnorm, delta)).astype(dtype)
            lam = jnp.where(poor, lam / shrink, jnp.where(good, 0.5 * lam, lam)).astype(dtype)
            accept = ~stationary & (ratio >= _ACCEPT) & jnp.isfinite(rnorm_new)
            rnorm_now = jnp.where(accept, rnorm_new, rnorm)
            xnorm = jnp.where(accept, xnorm_new, xnorm)
            tried = ~stationary
            converged = stationary | lsq.at_floor(rnorm_now, dtype) | (tried & (
                lsq.ftol_test(actual, predicted, ratio, ftol) | (delta <= xtol * xnorm)))
            stalled = tried & (lsq.ftol_test(actual, predicted, ratio, eps)
                               | (delta <= eps * xnorm))
            ok = converged | lsq.stalled_success(cos, rnorm_now, rnorm0, dtype)
            done = converged | stalled
            result = RESULTS.where(done & ~ok, RESULTS.line_search_failed, RESULTS.successful)
            return accept, delta, lam, rnorm_now, done, result

        accept, delta, lam, rnorm_now, done, result = lsq.one_kernel(
            after, lm, state.first, rnorm, rnorm_new, delta, xnorm, xnorm_new, cos,
            state.rnorm0)
        new = tree_where(accept, Point(y_new, f_new, aux_new), point)
        new_state = _DenseState(svd, diag, delta, lam, state.first & ~accept, state.rnorm0, cos,
                                accept, rnorm_now)
        fresh = state.stale.astype(jnp.int32)
        counts = Counts.of(fun=1 + fresh, jac=fresh) + extra
        return new, new_state, counts, done, result

    def _geodesic(self, rflat, x, svd, diag, lam, b):
        """v + a/2 with a the damped solution for r''(v, v) (Transtrum & Sethna 2012, §4),
        kept only when 2‖D a‖ ≤ 0.75‖D v‖."""
        v = (svd.vt.T @ b) / diag

        def directional(z):
            return jax.jvp(rflat, (z,), (v,))[1]

        rvv = jax.jvp(directional, (x,), (v,))[1]
        a = lsq.svd_coefficients(svd, lam, svd.u.T @ rvv)
        use = (2.0 * jnp.linalg.norm(a) <= _GEODESIC_ALPHA * jnp.linalg.norm(b)) & jnp.all(
            jnp.isfinite(a))
        return jnp.where(use, b + 0.5 * a, b), Counts.of(fun=1, jvp=2)

    # --- matrix-free: λ-form with damped CGLS -----------------------------------------------

    def _free_step(self, fn, point: Point, args, state: _FreeState):
        dtype = state.lam.dtype
        ftol, xtol, gtol = lsq.tolerances(self, dtype)
        eps = jnp.finfo(dtype).eps
        tmap = jax.tree_util.tree_map
        # Work in z = D p: CGLS on J D⁻¹ is Jacobi-preconditioned, and the damping λ‖D p‖²
        # is Marquardt's scale-invariant one.
        lin = lsq.scaled_linearization(fn, point.y, args, state.diag, self.scale, dtype)
        r, jvp, vjp, diag, g = lin.r, lin.jvp, lin.vjp, lin.diag, lin.g
        rnorm, gnorm, jnorm, cos = lin.rnorm, lin.gnorm, lin.jnorm, lin.cos
        stationary = (gnorm == 0) | (cos <= gtol)
        lam = jnp.where(state.lam < 0, _LAMBDA0 * jnorm**2, state.lam)
        lam = jnp.where(lam > 0, lam, 1.0).astype(dtype)
        eta = eisenstat_walker(gnorm, state.gnorm, state.eta, dtype)
        n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(point.y))
        max_iters = lsq.cg_budget(self, n)

        def attempt():
            # The preconditioner (if any) is built here, not at a stationary point, once per
            # step: A = J D⁻¹ and λ are both fixed within a step (a rejection re-linearizes).
            solve, sketch = lsq.inner_solver(self.preconditioner, fn, point.y, args, lin, lam,
                                             rtol=eta, max_iters=max_iters, dtype=dtype)
            cg, broken = solve(r, g)
            z, pred, extra, iters = cg.x, rnorm**2 - cg.residual_sq, Counts(), cg.num_iters
            if self.geodesic:
                z, extra, geo_cg, broken_geo = self._free_geodesic(fn, point.y, args, jvp, vjp,
                                                                   solve, z, diag)
                model = tree_add(r, jvp(z))
                pred = rnorm**2 - tree_norm(model).astype(dtype) ** 2
                if broken is not None:
                    iters, broken = iters + geo_cg, broken | broken_geo
            y_new = tree_add(point.y, tmap(jnp.divide, z, diag))
            f_new, aux_new = fn(y_new, args)
            counts = Counts.of(fun=1, jvp=cg.num_iters, vjp=cg.num_iters) + extra
            out = (Point(y_new, f_new, aux_new), tree_norm(z).astype(dtype), pred, counts)
            if broken is None:
                return out
            return out[:3] + (counts + sketch, broken, iters)

        def skip():
            out = (point, jnp.zeros((), dtype), jnp.zeros((), dtype), Counts.of(fun=0))
            if self.preconditioner is None:
                return out
            return out + (jnp.array(False), jnp.zeros((), jnp.int32))

        trial, pnorm, pred, counts, *pcg = lax.cond(stationary, skip, attempt)
        rnorm_new = tree_norm(trial.f).astype(dtype)
        actual, predicted, ratio = lsq.reductions(rnorm, rnorm_new, pred)
        accept = ~stationary & (ratio >= _ACCEPT) & jnp.isfinite(rnorm_new)
        if pcg:
            # A broken preconditioner leaves no usable step: keep the point and stop with
            # linear_solve_failed (below), rather than let the λ loop chase a NaN step or
            # a truncated one pass the xtol test.
            broken, iters = pcg
            accept = accept & ~broken
        new = tree_where(accept, trial, point)
        shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)
        lam_next = jnp.where(accept, lam * shrink, lam * state.nu).astype(dtype)
        nu = jnp.where(accept, 2.0, 2.0 * state.nu).astype(dtype)
        rnorm_now = jnp.where(accept, rnorm_new, rnorm)
        ynorm = tree_norm(tmap(jnp.multiply, diag, point.y)).astype(dtype)

        tried = ~stationary
        converged = stationary | lsq.at_floor(rnorm_now, dtype) | (tried & (
            lsq.ftol_test(actual, predicted, ratio, ftol) | (pnorm <= xtol * ynorm)))
        stalled = tried & (lsq.ftol_test(actual, predicted, ratio, eps) | (pnorm <= eps * ynorm))
        ok = converged | lsq.stalled_success(cos, rnorm_now, state.rnorm0, dtype)
        done = converged | stalled
        result = RESULTS.where(done & ~ok, RESULTS.line_search_failed, RESULTS.successful)
        pcg_iters = None
        if pcg:
            done = done | broken
            result = RESULTS.where(broken, RESULTS.linear_solve_failed, result)
            pcg_iters = state.pcg_iters + iters
        new_state = _FreeState(diag, lam_next, nu, eta, gnorm, state.rnorm0, cos, pcg_iters)
        counts = counts + lin.counts
        return new, new_state, counts, done, result

    def _free_geodesic(self, fn, y, args, jvp, vjp, solve, z, diag):
        """The matrix-free geodesic correction, by `solve` (the step's damped inner solve, with
        its preconditioner if any). Returns the step, its counts, its inner iterations and
        whether the preconditioner broke (None without one)."""
        v = jax.tree_util.tree_map(jnp.divide, z, diag)

        def directional(q):
            return jax.jvp(lambda u: fn(u, args)[0], (q,), (v,))[1]

        rvv = jax.jvp(directional, (y,), (v,))[1]
        cg, broken = solve(rvv, vjp(rvv))
        a = cg.x
        use = (2.0 * tree_norm(a) <= _GEODESIC_ALPHA * tree_norm(z)) & jnp.isfinite(
            tree_norm(a))
        step = tree_where(use, jax.tree_util.tree_map(lambda u, w: u + 0.5 * w, z, a), z)
        counts = Counts.of(fun=1, jvp=3 + cg.num_iters, vjp=1 + cg.num_iters)
        return step, counts, cg.num_iters, broken
