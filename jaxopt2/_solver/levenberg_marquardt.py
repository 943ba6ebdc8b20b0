"""Levenberg-Marquardt in Moré's scaled trust-region form (MINPACK's lmder), with a
matrix-free variant for large problems.

This module holds the public class (its fields, checks and documentation); the two
algorithms live in `jaxopt2._levenberg_marquardt` (`dense`, `matrix_free`), each with its own
state, chosen once from `linear_solver` and the problem's shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _least_squares as lsq
from .._base import AbstractLeastSquaresSolver, Point
from .._levenberg_marquardt import dense, matrix_free
from .._validate import check_positive, renamed_fields


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
    (`None`: min(2n, 200)); `preconditioner` (None: plain CGLS); `precision`: a
    `jaxopt2.MixedPrecision(compute_dtype)` runs the matrix-free inner solve's products (J v,
    Jᵀu, the column-norm probes) in `compute_dtype` on low-precision copies of the data,
    while r, the gradient Jᵀr, the inner solve's vectors and every test stay in the
    parameters' dtype (the answer is the full-precision least-squares solution; the inner
    solve asks for no residual below `compute_dtype`'s eps, so steps converge linearly at a
    rate about δ·κ);
    it selects the matrix-free path (with `linear_solver="dense"` it is an error). See
    docs/precision.md.

    Reference: J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and theory",
    Numerical Analysis, Lecture Notes in Mathematics 630 (1978); M. K. Transtrum and
    J. P. Sethna, "Improvements to the Levenberg-Marquardt algorithm for nonlinear
    least-squares minimization", arXiv:1201.5885 (2012); Z. Frangella, J. A. Tropp and
    M. Udell, "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl. 44 (2023).

    ```python
    import jax.numpy as jnp, jaxopt2
    # Rosenbrock as least squares: r(y) = (10(y₂ − y₁²), 1 − y₁), minimum at (1, 1)
    residuals = lambda y, _: jnp.stack([10.0 * (y[1] - y[0] ** 2), 1.0 - y[0]])
    sol = jaxopt2.least_squares(residuals, jnp.array([-1.2, 1.0]), None,
                                solver=jaxopt2.LevenbergMarquardt())
    print(sol.params)  # ≈ [1. 1.]
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
    precision: Any = None

    def __check_init__(self):
        lsq.check_common(self)
        check_positive("factor", self.factor)  # Δ₀ = factor·‖D y₀‖

    def _path(self, point: Point):
        """The dense or the matrix-free algorithm: a static choice from `linear_solver` and
        the shapes of y and r(y), the same at `init` and at every `step`."""
        dense_path = lsq.use_dense(self.linear_solver, point.y, point.f, self.precision)
        return dense if dense_path else matrix_free

    def init(self, fn, point: Point, args):
        return self._path(point).init(self, fn, point, args)

    def step(self, fn, point: Point, args, state):
        return self._path(point).step(self, fn, point, args, state)
