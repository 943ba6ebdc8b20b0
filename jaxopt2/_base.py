"""The pieces every minimizer shares: evaluation counts, the current iterate, the solver
interface and the stopping test.

A minimizer is an `eqx.Module` holding hyperparameters with two methods:

- `init(fn, iterate, args) -> state`
- `step(fn, iterate, args, state) -> (iterate, state, counts, result)`

`fn(params, args)` returns `(value, aux)`. The shared loop (`_iterate.py`) owns the stopping test
(gradient norm against `atol + rtol * |g0|`), the non-finite check, the step budget and the
callback, so a solver file only says how to take one step.

**Two step protocols, on purpose.** Least-squares, root-finding and fixed-point solvers
(`AbstractIterativeSolver`) instead return `(point, state, counts, done, result)`: they
report `done` themselves. The difference is who owns the convergence test. Every minimizer
is judged by one rule (`_stopping.MinimizerRule`: gradient and two error estimates, a start
at the solution, divergence, then the curvature check), which needs the previous iterate and
the start, so the loop owns it and no minimizer can drift from it. The equation solvers' tests
need their own internals, which the loop cannot see: MINPACK's relative-reduction, step and
gradient tests for least squares use the trust-region model's predicted reduction and scaled
step, bisection stops on its bracket width (an error bound), root finders compare ‖F‖ with
their own tolerances; the loop only confirms a root by its step (`confirm_by_step`). One
5-value protocol would make every minimizer call the shared rule itself and carry its memory
in its state; one 4-value protocol would make the loop learn each solver's test. Both only
move code; what is shared, the per-step verdict, is one function each in
`_iterate.py` (`minimizer_step`, `solver_step`), used by the front doors' loops and by the
public `Stepper`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from ._keywords import check_solver_keywords
from ._results import RESULTS
from ._tree import result_dtype, tree_inf_norm


def _zero():
    return jnp.zeros((), jnp.int32)


class Counts(eqx.Module):
    """Evaluation counts. `fun`: function-only evaluations (line-search trials, residuals);
    `grad`: value-and-gradient evaluations; `hvp`: Hessian- (or GGN-, Fisher-) vector products;
    `jvp`/`vjp`: Jacobian products of residual functions; `hessian`: dense Hessians formed;
    `jac`: dense Jacobians formed."""

    fun: jax.Array = eqx.field(default_factory=_zero)
    grad: jax.Array = eqx.field(default_factory=_zero)
    hvp: jax.Array = eqx.field(default_factory=_zero)
    jvp: jax.Array = eqx.field(default_factory=_zero)
    vjp: jax.Array = eqx.field(default_factory=_zero)
    hessian: jax.Array = eqx.field(default_factory=_zero)
    jac: jax.Array = eqx.field(default_factory=_zero)

    def __add__(self, other: Counts) -> Counts:
        return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a + b, jnp.int32), self, other)

    @staticmethod
    def of(**kwargs) -> Counts:
        return Counts(**{k: jnp.asarray(v, jnp.int32) for k, v in kwargs.items()})


class Iterate(eqx.Module):
    """The current point with what was computed there."""

    params: Any
    value: jax.Array
    grad: Any
    aux: Any


def evaluate(fn, params, args) -> Iterate:
    """Value, gradient and aux of `fn` at `params` (one gradient evaluation)."""
    (value, aux), grad = jax.value_and_grad(fn, has_aux=True)(params, args)
    return Iterate(params, value, grad, aux)


def roundoff(value, params, factor: float):
    """`factor` roundings of the objective `value`: changes in f below this are not
    measurable. eps is that of the least precise of f and the parameter leaves, since a
    float32 leaf rounds the terms of f it enters even when f itself is float64."""
    leaves = jax.tree_util.tree_leaves(params) + [value]
    eps = max(float(jnp.finfo(leaf.dtype).eps) for leaf in leaves)
    return factor * eps * jnp.abs(value)


def default_rtol(dtype) -> float:
    """Relative gradient tolerance when the user gives none: 1e-6 in float64, 3·√eps otherwise
    (1e-3 in float32). A line search that compares objective values can only resolve gradients
    down to about √(eps·|f|·L), so a tighter float32 default would stall instead of stopping."""
    return max(1e-6, 3 * float(jnp.finfo(dtype).eps) ** 0.5)


class AbstractMinimizer(eqx.Module):
    """Base class of `jaxopt2.minimize` solvers.

    Subclasses declare `rtol` and `atol` fields: iteration stops when
    `max|grad| <= atol + rtol * max|grad(params0)|`. `rtol=None` picks a dtype-aware default.
    """

    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float]
    # Second-order solvers promise a minimum, not just a stationary point: the loop then
    # checks the curvature where it stops (`_stopping.curvature_check`).
    uses_curvature: ClassVar[bool] = False
    # Whether the first step is scale-free (a Newton-type step, or one a Wolfe line search
    # accepted), so that a negligible first step means a start at the solution
    # (`_stopping.py`). Armijo backtracking alone can accept a tiny step anywhere.
    first_step_scale_free: ClassVar[bool] = True
    # Half-precision params are solved in float32 by the front door unless a solver says it
    # is honest in float16/bfloat16 itself; dense solvers refuse huge n (`_precision.py`).
    supports_half_precision: ClassVar[bool] = False
    forms_dense_matrix: ClassVar[bool] = False
    # Which solvers `minimize(..., bounds=, prox=)` accepts; they declare a field
    # `constraint: Composite | None = None` that the front door fills (`_composite.py`).
    supports_bounds: ClassVar[bool] = False
    supports_prox: ClassVar[bool] = False
    supports_bounds_with_prox: ClassVar[bool] = False
    # The step budget `minimize` gives when the user passes no `max_steps`: Newton-type
    # steps converge superlinearly and need few; quasi-Newton and first-order solvers
    # override it (LBFGS took 396 steps on the cond-1e4 logistic benchmark in float64).
    default_max_steps: ClassVar[int] = 256

    def __new__(cls, *args, **kwargs):
        # jaxopt-style keywords (`tol=`, `maxiter=`) fail with a message naming ours.
        check_solver_keywords(cls, kwargs)
        new = super().__new__
        # object.__new__ takes no arguments (equinox 0.11's Module has no __new__ of its own).
        return new(cls) if new is object.__new__ else new(cls, *args, **kwargs)

    def curvature_probe(self, fn, params, args, state):
        """v ↦ ∇²f(params)·v for the saddle check at the end of a solve (`_stopping.py`): the
        exact Hessian by default; a solver whose curvature model is cheaper and unbiased
        (SketchedNewton's subsampled Hessian) may use that instead."""
        del state
        grad = lambda p: jax.grad(lambda q: fn(q, args)[0])(p)  # noqa: E731
        return lambda v: jax.jvp(grad, (params,), (v,))[1]

    def error_estimate(self, state) -> jax.Array | None:
        """The solver's own estimate of ‖xₖ − x*‖∞ after a step (from `state`), which then
        replaces the stopping rule's two shared estimates (`_stopping.MinimizerRule`); None
        (the default) keeps them. For a solver whose steps say little about the distance
        left (GradientDescent's irregular Barzilai-Borwein steps)."""
        del state
        return None

    def step_cut_short(self, state) -> jax.Array | bool:
        """Whether the last step was cut to a length set in x's units (a trust-region
        radius) rather than by the problem. Its length then says nothing about the distance
        to x*, so a negligible first step is not read as a start at the solution
        (`_stopping.py`): from (x − 1)⁴ at x₀ = 10⁶ a radius-1 first step is 1e-6·s(x₀),
        below float32's resolution of x, yet x₀ is far from the minimizer. False by default."""
        del state
        return False

    def adjoint_preconditioner(self, state, params) -> Callable | None:
        """The curvature the solve ends with, for the implicit derivative's linear solve:
        `v ↦ M⁻¹v` with M ≈ ∇²f at the solution, symmetric positive definite (a pytree
        like `params` in and out), or None. `minimize` hands it to the default adjoint,
        whose conjugate gradients then need a few products where the matrix would be formed
        (`Newton`: its last Cholesky factor). None by default. (The L-BFGS and BFGS
        inverse-Hessian models were tried and measured: no faster adjoint on
        `benchmarks/hypergradient.py`, 0.3–0.6 s more compile.)"""
        del state, params
        return None

    def convert_objective(self, fn, params0, args):
        """`fn` with the arrays it closes over made explicit inputs
        (`eqx.filter_closure_convert`), so that implicit differentiation sees them. The result
        only accepts `args` of the example's shapes; a solver that also evaluates `fn` on
        other shapes (subsamples of the data) overrides this. A curvature that evaluates `fn`
        in another dtype (`MixedPrecision`) adds its own conversion (`wrap_objective`)."""
        full = eqx.filter_closure_convert(fn, params0, args)
        wrap = getattr(getattr(self, "curvature", None), "wrap_objective", None)
        return full if wrap is None else wrap(fn, full, params0, args)

    @abc.abstractmethod
    def init(self, fn, iterate: Iterate, args) -> Any:
        """The solver state before the first step."""

    def init_gradients(self) -> int:
        """Gradient evaluations `init` makes (static), counted in `stats["num_grad"]` with
        the start's own."""
        return 0

    @abc.abstractmethod
    def step(self, fn, iterate: Iterate, args, state) -> tuple[Iterate, Any, Counts, RESULTS]:
        """One iteration: the new iterate, state, the evaluations it cost and a status
        (`RESULTS.successful` to keep going, anything else stops the loop)."""


class Point(eqx.Module):
    """The current point of a least-squares, root-finding or fixed-point solve: `y`, the
    function's output `f = fn(y, args)[0]` (residuals, F(y) or g(y)) and its aux."""

    y: Any
    f: Any
    aux: Any


def evaluate_point(fn, y, args) -> Point:
    f, aux = fn(y, args)
    return Point(y, f, aux)


class AbstractIterativeSolver(eqx.Module):
    """Base class of the least-squares, root-finding and fixed-point solvers.

    `fn(y, args)` returns `(f, aux)`. Unlike minimizers, these solvers own their stopping test
    (least squares stop on MINPACK's relative rules, root finders on ‖F‖, fixed-point
    iterations on ‖g(y) − y‖), so `init` and `step` report `done` themselves; the shared loop
    (`_iterate.run_solver`) adds the non-finite check, the step budget and the callback.

    `confirm_by_step`: whether a `done` reported by the solver must also pass the step test of
    `_stopping.py` (root finders and fixed-point solvers; not least squares, whose MINPACK
    tests already include a step test, nor bracketing, whose bracket width is an error bound).
    """

    confirm_by_step: ClassVar[bool] = True
    # Whether each step is itself an error estimate (a Newton step −J⁻¹F, or the fixed-point
    # step g(y) − y): then a converged error estimate certifies a root by itself, even where
    # the residual test relative to ‖F₀‖ sits below F's round-off (`_stopping.py`).
    steps_estimate_error: ClassVar[bool] = False
    supports_half_precision: ClassVar[bool] = False  # as in AbstractMinimizer
    forms_dense_matrix: ClassVar[bool] = False
    # Whether `rtol`/`atol` bound a bracket (Bisection) rather than the residual max|F|.
    tolerance_on_bracket: ClassVar[bool] = False
    # The step budget of `least_squares`/`root_find`/`fixed_point` when the user passes no
    # `max_steps`: Newton-type and Gauss–Newton steps converge fast and need few; linearly
    # convergent solvers (fixed-point iteration, Anderson, Broyden) override it.
    default_max_steps: ClassVar[int] = 256

    def __new__(cls, *args, **kwargs):
        check_solver_keywords(cls, kwargs)  # as in AbstractMinimizer
        new = super().__new__
        return new(cls) if new is object.__new__ else new(cls, *args, **kwargs)

    def convert_objective(self, fn, y0, args):
        """`fn` with the arrays it closes over made explicit inputs (as the minimizers'
        `convert_objective`); a solver with a `MixedPrecision` as its `precision` also gets
        the copy of `fn` converted at the low dtype (`MixedPrecision.wrap_objective`)."""
        full = eqx.filter_closure_convert(fn, y0, args)
        wrap = getattr(getattr(self, "precision", None), "wrap_objective", None)
        return full if wrap is None else wrap(fn, full, y0, args)

    def step_fraction(self, state) -> jax.Array:
        """The fraction t ∈ (0, 1] of its full step that the last step took (a line search's
        step size; 1 without one). A step cut to t estimates the error only as the full step
        it came from, ‖Δy‖/t (`steps_estimate_error`): on y² + 1 the cut steps shrink
        geometrically at y ≈ 0 while the full Newton steps are huge."""
        del state
        return jnp.ones(())

    @abc.abstractmethod
    def init(self, fn, point: Point, args) -> tuple[Any, Counts, jax.Array, RESULTS]:
        """`(state, counts, done, result)` at the starting point (`point.f` is already
        evaluated and counted). `done` is True if `point` already solves the problem."""

    @abc.abstractmethod
    def step(self, fn, point: Point, args, state
             ) -> tuple[Point, Any, Counts, jax.Array, RESULTS]:
        """One iteration: `(point, state, counts, done, result)`. `done` with
        `RESULTS.successful` means converged; any other result stops the loop with it."""


class AbstractLeastSquaresSolver(AbstractIterativeSolver):
    """Solvers for `jaxopt2.least_squares`: minimize ½‖r(y)‖² over y."""

    confirm_by_step: ClassVar[bool] = False


class AbstractRootFinder(AbstractIterativeSolver):
    """Solvers for `jaxopt2.root_find`: find y with F(y) = 0 (F maps y's pytree to itself).
    Also accepted by `jaxopt2.fixed_point`, which hands them F(y) = g(y) − y."""


class AbstractFixedPointSolver(AbstractIterativeSolver):
    """Solvers for `jaxopt2.fixed_point`: find y with g(y) = y. `point.f` holds g(y)."""


def default_root_rtol(dtype) -> float:
    """Relative residual tolerance of root finders and fixed-point solvers when the user gives
    none: √eps (1.5e-8 in float64, 3.5e-4 in float32). Unlike a minimizer's line search,
    ‖F‖ itself is resolved to about eps·scale, so no square-root floor applies to it; √eps
    leaves Newton-type methods one quadratic step from full precision."""
    return float(jnp.finfo(dtype).eps) ** 0.5


def residual_converged(norm, norm0, rtol, atol, dtype):
    """‖F(y)‖∞ ≤ atol + rtol·‖F(y₀)‖∞, with `rtol=None` meaning `default_root_rtol`."""
    rtol = default_root_rtol(dtype) if rtol is None else rtol
    return norm <= atol + rtol * norm0


def newton_root_outcome(solver, point: Point, new: Point, f_norm0, ls_ok, solved):
    """How a Newton-type root finder's step from `point` to `new` ends, given whether its
    line search succeeded (`ls_ok`) and whether the linear solve gave a usable direction
    (`solved`): `(done, result)`. A failed solve reports `linear_solve_failed` (it outranks
    the line search, which then searched along a zero direction), a failed search
    `line_search_failed`; either ends the solve, as does ‖F(new)‖∞ ≤ atol + rtol·‖F(y₀)‖∞
    (`residual_converged` with the solver's tolerances)."""
    result = RESULTS.where(ls_ok, RESULTS.successful, RESULTS.line_search_failed)
    result = RESULTS.where(solved, result, RESULTS.linear_solve_failed)
    converged = residual_converged(tree_inf_norm(new.f), f_norm0, solver.rtol, solver.atol,
                                   result_dtype(point.y))
    return converged | ~ls_ok | ~solved, result
