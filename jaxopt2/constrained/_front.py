"""`jaxopt2.minimize_constrained`: the front door for general constrained problems."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu

from .._adjoint import AbstractAdjoint, ImplicitAdjoint, attach_tangent
from .._checks import check_objective
from .._compiled import compiled_at_top_level
from .._composite import make_bounds
from .._front import adjoint_for, check_concrete_inputs, check_max_steps, finish, prepare
from .._solution import Solution
from ._base import AbstractConstrainedSolver
from ._problem import Problem, bound_multiplier, kkt_residuals, optimality, tree_of


class ConstrainedSolution(Solution):
    """The result of `jaxopt2.minimize_constrained`: a `jaxopt2.Solution` (`params`,
    `value` = f(params), `status`, `stats`, `state`) with the multipliers.

    - `multipliers`: a dict with `"eq"` (λ, shaped like the output of `eq`; None without
      equalities), `"ineq"` (μ ≥ 0, shaped like the output of `ineq`; None without
      inequalities) and `"bounds"` (ν, shaped like `params`: ≤ 0 at an active lower bound,
      ≥ 0 at an active upper one, 0 elsewhere; None without bounds), such that
      ∇f + J_eqᵀλ + J_ineqᵀμ + ν = 0 at a solution. Differentiable like `params`.
    - `stats` adds to the step counts (`num_steps`: outer steps) the KKT residuals at the
      solution, in the max-norm: `kkt_stationarity` (the projected gradient of the
      Lagrangian), `kkt_feasibility` (the largest constraint or bound violation) and
      `kkt_complementarity` (max |min(μᵢ, −ineqᵢ)|), with the solver's own (e.g. `penalty`).
    """

    multipliers: dict | None = None


def _output_struct(fn, params0, args, what: str, dtype):
    """The output of a constraint function as ShapeDtypeStructs, checked: a non-empty pytree
    of floating arrays of the parameters' dtype."""
    try:
        out = jax.eval_shape(fn, params0, args)
    except Exception as e:
        raise ValueError(f"Calling `{what}(params0, args)` failed while tracing: "
                         f"{type(e).__name__}: {e}\nCheck that `{what}` takes (params, args) "
                         "like `fun` and returns a pytree of arrays.") from e
    leaves = jtu.tree_leaves_with_path(out)
    if not leaves or all(leaf.size == 0 for _, leaf in leaves):
        raise ValueError(f"`{what}` returned no constraint values; return at least one, or "
                         f"pass {what}=None.")
    for path, leaf in leaves:
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            raise ValueError(f"`{what}` output{jtu.keystr(path)} is a {type(leaf).__name__}; "
                             "it must be a JAX array computed from `params` with jax.numpy.")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(
                f"`{what}` output{jtu.keystr(path)} has dtype {leaf.dtype}; constraint values "
                "must be real floating point (a boolean test such as `x > 0` is not a "
                f"constraint: return the value, e.g. `-x` for x ≥ 0 as {what} ≤ 0).")
        if leaf.dtype != dtype:
            raise ValueError(
                f"`{what}` output{jtu.keystr(path)} has dtype {leaf.dtype} but the parameters "
                f"are {dtype}; return the parameters' dtype (a float64 constant or a NumPy "
                "scalar probably promoted it: cast the output or the constants).")
    return out


def _size(struct) -> int:
    return sum(leaf.size for leaf in jtu.tree_leaves(struct))


def _precheck(arguments) -> None:
    """The checks of concrete values, for a top-level call (`jaxopt2._compiled`)."""
    check_concrete_inputs(arguments, "params0")
    if arguments["bounds"] is not None:
        make_bounds(arguments["bounds"], arguments["params0"])


@compiled_at_top_level(_precheck)
def minimize_constrained(
    fun: Callable,
    params0: Any,
    args: Any = None,
    *,
    eq: Callable | None = None,
    ineq: Callable | None = None,
    bounds: Any = None,
    solver: AbstractConstrainedSolver | None = None,
    max_steps: int = 100,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
) -> ConstrainedSolution:
    """Minimize `fun(params, args)` subject to `eq(params, args) = 0`, `ineq(params, args) ≤ 0`
    and `lower ≤ params ≤ upper`, from `params0`.

    **Arguments:**

    - `fun`: `fun(params, args) -> scalar`, smooth.
    - `params0`: the start, any pytree of floating-point arrays (dtypes kept). It need not be
      feasible; a start outside `bounds` is projected onto them.
    - `args`: any pytree of data and hyperparameters, passed to `fun`, `eq` and `ineq`.
    - `eq`, `ineq`: `(params, args) -> pytree` of floating arrays of the parameters' dtype,
      the equality constraints (= 0) and the inequality constraints (≤ 0), or None.
    - `bounds`: `(lower, upper)` as for `jaxopt2.minimize`: None, scalars or pytrees like
      `params0`, ±inf allowed.
    - `solver`: `jaxopt2.AugmentedLagrangian()` (default; everything), or
      `jaxopt2.SketchedSQP()` / `jaxopt2.DenseSQP()` (equality constraints only), with the
      KKT tolerances `rtol`, `atol`.
    - `max_steps`: the budget of outer steps (static).
    - `adjoint`: `ImplicitAdjoint()` differentiates the solution and the multipliers with
      respect to `args`, the arrays the functions close over and the bounds, by the implicit
      function theorem on the KKT conditions of the active set (inequalities with μ > 0,
      bounds that hold with equality), never through the iterations. Needs LICQ and strict
      complementarity at the solution.
    - `throw`: raise on failure with a message saying what to try (never under `vmap`); with
      False only `Solution.status` reports it.

    Statuses: `successful` (every KKT residual within the tolerance), `max_steps_reached`,
    `primal_infeasible` (the penalty reached its cap without progress towards feasibility:
    the point is a local minimizer of the infeasibility), `line_search_failed` /
    `linear_solve_failed` (SQP), `nonfinite`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxopt2
    fun = lambda x, a: jnp.sum((x - a) ** 2)           # the point of a closest to ...
    eq = lambda x, a: jnp.sum(x) - 1.0                 # ... the plane Σx = 1
    sol = jaxopt2.minimize_constrained(fun, jnp.zeros(3), jnp.array([1.0, 2.0, 3.0]), eq=eq)
    print(sol.params, sol.multipliers["eq"])           # [-2/3, 1/3, 4/3], 10/3
    jax.jacobian(lambda a: jaxopt2.minimize_constrained(fun, jnp.zeros(3), a, eq=eq).params)(
        jnp.array([1.0, 2.0, 3.0]))                    # I − 11ᵀ/3
    ```
    """
    if solver is None:
        from ._augmented_lagrangian import AugmentedLagrangian

        solver = AugmentedLagrangian()
    if not isinstance(solver, AbstractConstrainedSolver):
        raise TypeError("`solver` for jaxopt2.minimize_constrained must be a constrained "
                        "solver such as jaxopt2.AugmentedLagrangian() or "
                        f"jaxopt2.SketchedSQP(); got {type(solver).__name__}.")
    check_max_steps(max_steps)
    for name, f in (("fun", fun), ("eq", eq), ("ineq", ineq)):
        if f is not None and not callable(f):
            raise TypeError(f"`{name}` must be a function (params, args) -> ...; got "
                            f"{type(f).__name__}.")
    params0, fn, args = prepare(fun, params0, args, False, "params0")
    x0, unravel = jax.flatten_util.ravel_pytree(params0)
    dtype = x0.dtype
    # Python floats in `args` become arrays of the parameters' dtype: the inner solves and
    # the derivative rules pass `args` through transformations that turn them into arrays,
    # which the closure-converted functions (built here) must then also have seen.
    args = jtu.tree_map(lambda v: jnp.asarray(v, dtype) if type(v) is float else v, args)
    check_objective(fn, params0, args)
    n = x0.size
    eq_struct = None if eq is None else _output_struct(eq, params0, args, "eq", dtype)
    in_struct = None if ineq is None else _output_struct(ineq, params0, args, "ineq", dtype)
    m = 0 if eq is None else _size(eq_struct)
    p = 0 if ineq is None else _size(in_struct)
    if m > n:
        raise ValueError(
            f"`eq` returns {m} equality constraints for {n} parameters: more equations than "
            "unknowns, so they are inconsistent unless some are redundant, and the KKT "
            "system is singular either way. Remove the redundant equations.")
    name = type(solver).__name__
    if p and not solver.supports_inequality:
        raise ValueError(f"{name} takes equality constraints only; use "
                         "jaxopt2.AugmentedLagrangian() for `ineq`.")
    if m == 0 and getattr(solver, "needs_equality", False):
        raise ValueError(f"{name} solves equality-constrained problems and `eq` is None; "
                         "use jaxopt2.minimize for an unconstrained problem.")
    if bounds is not None and not solver.supports_bounds:
        raise ValueError(f"{name} does not take `bounds`; use jaxopt2.AugmentedLagrangian(), "
                         "or write them as `ineq`.")
    if bounds is not None:
        lower, upper = make_bounds(bounds, params0)
        lower = jax.flatten_util.ravel_pytree(lower)[0].astype(dtype)
        upper = jax.flatten_util.ravel_pytree(upper)[0].astype(dtype)
    else:
        lower, upper = jnp.full((n,), -jnp.inf, dtype), jnp.full((n,), jnp.inf, dtype)
    # Closure-converted, so that arrays the functions close over are differentiable inputs.
    fn = eqx.filter_closure_convert(fn, params0, args)
    eq_c = None if eq is None else eqx.filter_closure_convert(eq, params0, args)
    in_c = None if ineq is None else eqx.filter_closure_convert(ineq, params0, args)
    inputs = (args, fn, eq_c, in_c, lower, upper)
    bounded = bounds is not None

    def problem_of(inputs):
        _, fn, eq_c, in_c, lower, upper = inputs
        return Problem(fn, eq_c, in_c, lower, upper, unravel, bounded, n, m, p)

    def primal(root0, inputs):
        problem = problem_of(inputs)
        args = inputs[0]
        x0 = jnp.clip(root0[0], problem.lower, problem.upper)
        out = solver.run(problem, x0, args, max_steps)
        gl = problem.lagrangian_grad(out.x, out.lam, out.mu, args)
        nu = bound_multiplier(problem, out.x, gl)
        return (out.x, out.lam, out.mu, nu), out

    def optimality_fn(root, inputs):
        return optimality(problem_of, root, inputs)

    root0 = (x0, jnp.zeros((m,), dtype), jnp.zeros((p,), dtype), jnp.zeros((n,), dtype))
    adjoint = adjoint_for(adjoint, throw)
    root, out = adjoint.apply(primal, optimality_fn, root0, inputs, ())
    status = out.result
    root = finish(root, status, adjoint, throw)
    x, lam, mu, nu = root
    problem = problem_of(inputs)
    kkt = jax.lax.stop_gradient(kkt_residuals(problem, out.x, out.lam, out.mu, inputs[0]))
    value = problem.f(out.x, inputs[0])
    value = attach_tangent(value, x, inputs, fn=lambda x, i: problem_of(i).f(x, i[0]))
    multipliers = dict(eq=tree_of(lam, eq_struct), ineq=tree_of(mu, in_struct),
                       bounds=unravel(nu) if bounded else None)
    stats = dict(num_steps=out.num_steps, **out.stats,
                 kkt_stationarity=kkt.stationarity, kkt_feasibility=kkt.feasibility,
                 kkt_complementarity=kkt.complementarity)
    return ConstrainedSolution(params=unravel(x), value=value, status=status, stats=stats,
                               state=None, aux=None, multipliers=multipliers)
