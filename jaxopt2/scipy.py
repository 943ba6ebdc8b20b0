"""`jaxopt2.scipy`: SciPy's solvers next to ours, fed by JAX and differentiable like ours.

`minimize`, `least_squares` and `root` call `scipy.optimize.minimize`,
`scipy.optimize.least_squares` and `scipy.optimize.root` with what JAX computes well:
compiled value-and-gradient, Hessian-vector products (`Newton-CG`, `trust-ncg`,
`trust-krylov`, `trust-constr`), dense Hessians (`dogleg`, `trust-exact`) and Jacobians
(forward mode when the Jacobian is tall, reverse mode when it is wide). Parameters are any
pytree (flattened with `ravel_pytree` for SciPy and rebuilt afterwards); the result is a
`jaxopt2.Solution` with a status, counts and implicit derivatives with respect to `args`,
arrays `fun` closes over, and the bounds.

**How it runs.** SciPy runs on the host CPU, inside a `jax.pure_callback`, and so do the
function evaluations it asks for (compiled for JAX's CPU backend, whatever the default device):

- `jax.jit` works (the callback is compiled into the program; each call of the compiled
  function runs SciPy again on the host), and the derivative rules run on the device as
  ordinary JAX code, since they only need the optimality condition at the solution;
- outside `jit` each call compiles the evaluations anew (about a second); under `jax.jit`
  they are compiled once, on the first run;
- `jax.vmap` works but runs the problems one after the other (the callback's
  `vmap_method="sequential"`), each with its own status: no parallelism across a batch;
- SciPy computes in float64. Function values and derivatives are evaluated in the dtype of
  `params0` and the solution is returned in that dtype, so float32 parameters give SciPy
  float32-accurate gradients and line searches that may stop early: float64
  (`jax.config.update("jax_enable_x64", True)`) is recommended.

**Statuses.** A solve is `successful` only if SciPy reports success **and** jaxopt2's own check
of the solution passes, computed in JAX at the returned point:

- `minimize`: ‖pg(x)‖∞ ≤ atol + rtol·‖pg(x₀)‖∞, with pg(x) = x − P(x − ∇f(x)) the projected
  gradient (the gradient without bounds; P the projection onto the box), x₀ the start
  projected onto the bounds;
- `least_squares`: the scaled gradient of MINPACK: |pgᵢ| ≤ atol + rtol·‖Jᵢ‖·‖r(x₀)‖ for every
  column i of the Jacobian, pg the projected gradient of ½‖r‖² (so an exact fit passes, and a
  noisy one passes at a stationary point, whatever the scale of r);
- `root`: ‖F(y)‖∞ ≤ atol + rtol·‖F(y₀)‖∞, or a Newton step from y below √eps relative to
  max(‖y‖∞, 1) as `jaxopt2.custom_root` checks (‖F‖ ≤ √eps·‖J‖·max(‖y‖∞, 1), eps of the
  dtype of `y0`), which also passes a start at the root.

`rtol` defaults to 1e-6 in float64 and 3·√eps in lower precision, `atol` to 0. Where the method
has a gradient tolerance (`gtol` of L-BFGS-B, BFGS, CG, TNC, the trust-region methods) and
neither `tol` nor `options["gtol"]` is given, SciPy is asked for the same gradient tolerance
(and L-BFGS-B's relative-reduction test `ftol`, unless given, is set to 10·eps so that it does
not stop first).
SciPy's own failures map to `max_steps_reached` (its iteration or evaluation limit),
`line_search_failed` (line search or precision loss), `linear_solve_failed` (Newton-CG's inner
CG) and `nonfinite`; an error SciPy raises once it has started (e.g. `krylov`'s "Jacobian
inversion yielded zero vector") becomes `linear_solve_failed` or `line_search_failed` for that
problem, its message a `RuntimeWarning`, so one problem cannot end a batch. A SciPy
"success" that fails jaxopt2's check (e.g. L-BFGS-B stopping on a loose `ftol` with the
gradient still large) is `max_steps_reached`: SciPy stopped before the tolerance was met;
tighten `tol`/`options` or loosen `rtol`/`atol`.
`Solution.state` holds SciPy's `success` flag, its `status` code and the final optimality
measure (`optimality`) for each problem.

**Derivatives.** By the implicit function theorem (`ImplicitAdjoint`, as for every front door)
on the optimality condition: ∇f(x, args) = 0 for `minimize`, J(x)ᵀr(x) = 0 for
`least_squares`, F(y, args) = 0 for `root`; with bounds, the fixed point of the projected
gradient step, x − P(x − ∇f(x, args)) = 0, whose Jacobian reduces the system to the free
variables (the box projection's derivative is 0 on active bounds and 1 elsewhere), and which
is also differentiable with respect to the bounds themselves. SciPy is never differentiated.

Reference: Virtanen et al., "SciPy 1.0: fundamental algorithms for scientific computing in
Python", Nature Methods 17 (2020).

```python
import jax, jax.numpy as jnp
import jaxopt2.scipy

fun = lambda p, a: jnp.sum((p["w"] - a) ** 2) + (p["b"] - 1.0) ** 2
sol = jaxopt2.scipy.minimize(fun, {"w": jnp.zeros(3), "b": jnp.ones(())}, jnp.arange(3.0),
                             bounds=({"w": 0.5, "b": None}, None))
print(sol.params["w"], sol.status)                        # [0.5 1. 2.]
print(jax.grad(lambda a: jaxopt2.scipy.minimize(
    fun, {"w": jnp.zeros(3), "b": jnp.ones(())}, a, bounds=({"w": 0.5, "b": None}, None)
).params["w"].sum())(jnp.arange(3.0)))                    # [0. 1. 1.]: w₀ sits on its bound
```
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np

from ._adjoint import AbstractAdjoint, ImplicitAdjoint, attach_tangent
from ._base import default_rtol
from ._checks import check_objective, check_vector_output
from ._composite import Composite, make_bounds
from ._front import DERIVATIVE_HINT, adjoint_for, guard_derivatives, prepare, raise_if_failed
from ._results import RESULTS
from ._solution import Solution
from ._tree import ravel, result_dtype, tree_all_finite, tree_inf_norm
from .implicit import _root_status

__all__ = ["least_squares", "minimize", "root"]

# SciPy's methods, lower-cased as SciPy compares them.
MINIMIZE_METHODS = ("nelder-mead", "powell", "cg", "bfgs", "newton-cg", "l-bfgs-b", "tnc",
                    "cobyla", "cobyqa", "slsqp", "trust-constr", "dogleg", "trust-ncg",
                    "trust-exact", "trust-krylov")
LEAST_SQUARES_METHODS = ("trf", "dogbox", "lm")
ROOT_METHODS = ("hybr", "lm", "broyden1", "broyden2", "anderson", "linearmixing",
                "diagbroyden", "excitingmixing", "krylov", "df-sane")
_BOUNDED = ("nelder-mead", "powell", "l-bfgs-b", "tnc", "slsqp", "trust-constr", "cobyla",
            "cobyqa")
_DERIVATIVE_FREE = ("nelder-mead", "powell", "cobyla", "cobyqa")
_HESSP = ("newton-cg", "trust-ncg", "trust-krylov", "trust-constr")
_HESS = ("dogleg", "trust-exact")
_GTOL = ("l-bfgs-b", "bfgs", "cg", "tnc", "trust-constr", "dogleg", "trust-ncg",
         "trust-exact", "trust-krylov")
_ROOT_JAC = ("hybr", "lm")  # the others are Jacobian-free in SciPy

# What the host reports about SciPy's stop (mapped to a RESULTS item in JAX).
_OK, _LIMIT, _LINE_SEARCH, _LINEAR, _NONFINITE = range(5)

_HINT = ("jaxopt2.scipy: SciPy ran on the host; `max_steps_reached` also means SciPy stopped "
         "on its own test before jaxopt2's (tighten `tol` or `options`, or loosen "
         "`rtol`/`atol`). Pass throw=False to return the status instead of raising.")


def minimize(fun: Callable, params0: Any, args: Any = None, *, method: str = "L-BFGS-B",
             bounds: tuple[Any, Any] | None = None, tol: float | None = None,
             options: dict | None = None, hessp: bool | None = None, rtol: float | None = None,
             atol: float = 0.0, adjoint: AbstractAdjoint = ImplicitAdjoint(),
             throw: bool = True) -> Solution:
    """Minimize `fun(params, args)` with `scipy.optimize.minimize`, on the host (see the
    module docstring for `jit`, `vmap`, dtypes, statuses and derivatives).

    **Arguments:**

    - `fun`: `fun(params, args) -> scalar`, written in JAX.
    - `params0`: the start, any pytree of floating-point arrays; the solution keeps its dtypes.
    - `args`: any pytree passed unchanged to `fun`; the solution is differentiable in it.
    - `method`: any of SciPy's methods (case-insensitive); default `"L-BFGS-B"`.
    - `bounds`: `(lower, upper)`, each a pytree matching `params0`, a scalar, or None
      (unbounded); a leaf may be None; ±inf allowed. Only for SciPy's bounded methods
      (L-BFGS-B, TNC, SLSQP, trust-constr, Powell, Nelder-Mead, COBYLA, COBYQA). A start
      outside the bounds is projected onto them.
    - `tol`, `options`: passed to SciPy (`options` is SciPy's per-method dict, e.g.
      `{"maxiter": 500}`).
    - `hessp`: give SciPy Hessian-vector products (default None: for Newton-CG, trust-ncg,
      trust-krylov and trust-constr). `False` lets Newton-CG and trust-constr approximate
      them instead. dogleg and trust-exact get the dense Hessian from `jax.hessian`.
    - `rtol`, `atol`: jaxopt2's own test of the solution, ‖pg(x)‖∞ ≤ atol + rtol·‖pg(x₀)‖∞
      (module docstring).
    - `adjoint`, `throw`: as in `jaxopt2.minimize` (`adjoint` an `ImplicitAdjoint`: SciPy's
      iterations cannot be unrolled).

    **Returns** a `Solution`: `value` is f at the solution, `stats` counts SciPy's iterations
    (`num_steps`) and the evaluations it asked for (`num_fun` objective only, `num_grad`
    value and gradient, `num_hvp`, `num_hessian`).

    **Example:**

    ```python
    import jax.numpy as jnp, jaxopt2.scipy
    rosen = lambda x, a: jnp.sum(a * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    sol = jaxopt2.scipy.minimize(rosen, jnp.zeros(5), 100.0, method="trust-ncg")
    print(sol.params, sol.stats["num_hvp"])
    ```
    """
    method = _method(method, MINIMIZE_METHODS, "minimize")
    if bounds is not None and method not in _BOUNDED:
        raise ValueError(f"SciPy's method {method!r} does not take bounds; use one of "
                         f"{', '.join(_BOUNDED)} (e.g. method='L-BFGS-B').")
    if hessp is False and method in ("trust-ncg", "trust-krylov"):
        raise ValueError(f"SciPy's {method!r} needs Hessian-vector products; pass "
                         "hessp=None (or True), or choose another method.")
    options = _options(options)
    pb = _Problem.make(fun, params0, args, bounds, rtol, check_objective, "params0")
    params0, inputs, static, dtype, rtol, unravel = (pb.params0, pb.inputs, pb.static, pb.dtype,
                                                     pb.rtol, pb.unravel)
    # SciPy's gradient tolerance is set to ours unless the user chose SciPy's.
    set_gtol = method in _GTOL and tol is None and "gtol" not in options

    def f_flat(x, inputs):
        fn, args, _, _ = inputs
        return fn(unravel(x), args)[0]

    def hvp(x, v, inputs):
        return jax.jvp(lambda y: jax.grad(f_flat)(y, inputs), (x,), (v,))[1]

    # Compiled once per trace of this call, then run by SciPy as often as it likes.
    value = _compile(f_flat, static)
    value_grad = _compile(jax.value_and_grad(f_flat), static)
    hvp = _compile(hvp, static)
    hess = _compile(jax.hessian(f_flat), static)

    def host(x0, target, dynamic):
        import scipy.optimize

        ev = _Evaluations(dtype, dynamic)
        kwargs = dict(method=method, tol=tol, options=dict(options))
        if method in _DERIVATIVE_FREE:
            def objective(x):
                return float(ev("fun", value, x))
        else:
            def objective(x):
                v, g = ev("grad", value_grad, x)
                return float(v), np.asarray(g, np.float64)

            kwargs["jac"] = True
        if method in _HESSP and hessp is not False:
            kwargs["hessp"] = lambda x, v: np.asarray(ev("hvp", hvp, x, v), np.float64)
        if method in _HESS:
            kwargs["hess"] = lambda x: np.asarray(ev("hessian", hess, x), np.float64)
        if set_gtol:
            kwargs["options"]["gtol"] = float(target)
            if method == "l-bfgs-b" and "ftol" not in options:
                # Otherwise its relative-reduction test (ftol = 2.2e-9) usually stops it first,
                # short of the gradient test, and the solve would report a failure.
                kwargs["options"]["ftol"] = 10 * np.finfo(np.float64).eps
        if bounds is not None:
            kwargs["bounds"] = scipy.optimize.Bounds(_flat(dynamic[2]), _flat(dynamic[3]))
        res = _run(scipy.optimize.minimize, objective, x0, kwargs, ev)
        return _report(res, res.fun, getattr(res, "nit", 0), ev, dtype)

    def measure(params, inputs):
        fn, args, lower, upper = inputs
        g = jax.grad(lambda p: fn(p, args)[0])(params)
        return _projected(params, g, lower, upper)

    def primal(params0, inputs):
        _, _, lower, upper = inputs
        start = _project(params0, lower, upper)
        target = atol + rtol * tree_inf_norm(measure(start, inputs))
        x, _, info = _callback(host, pb.size, dtype, ravel(start)[0], target, inputs)
        params = unravel(x)
        pg = tree_inf_norm(measure(params, inputs))
        f = f_flat(x, inputs)
        finite = tree_all_finite(params) & jnp.isfinite(f)
        return params, _Out(f, _status(info, pg <= target, finite), info, pg)

    return _solve(primal, measure, params0, inputs, _symmetric(bounds), adjoint, throw)


def least_squares(residual_fn: Callable, params0: Any, args: Any = None, *,
                  method: str = "trf", bounds: tuple[Any, Any] | None = None,
                  options: dict | None = None, rtol: float | None = None, atol: float = 0.0,
                  adjoint: AbstractAdjoint = ImplicitAdjoint(),
                  throw: bool = True) -> Solution:
    """Minimize ½‖r(params, args)‖² with `scipy.optimize.least_squares`, on the host (see the
    module docstring), the Jacobian from `jax.jacfwd` when it has at least as many rows as
    columns and from `jax.jacrev` otherwise.

    **Arguments:**

    - `residual_fn`: `residual_fn(params, args) -> residuals`, any pytree of arrays.
    - `params0`, `args`, `bounds`, `adjoint`, `throw`: as in `minimize` (`method="lm"` takes
      no bounds).
    - `method`: `"trf"` (default), `"dogbox"` or `"lm"`.
    - `options`: keyword arguments for SciPy's `least_squares` (`ftol`, `xtol`, `gtol`,
      `x_scale`, `max_nfev`, `tr_solver`, ...). `loss` must stay `"linear"`: a robust loss
      changes the optimality condition the derivatives are taken from.
    - `rtol`, `atol`: jaxopt2's own test, MINPACK's scaled gradient
      |pgᵢ| ≤ atol + rtol·‖Jᵢ‖·‖r(x₀)‖ for every column i (module docstring).

    **Returns** a `Solution` whose `value` is the residual pytree at the solution and whose
    `stats` count SciPy's residual (`num_fun`) and Jacobian (`num_jac`) evaluations
    (`num_steps`: SciPy's `nfev`, one per iteration).

    **Example:**

    ```python
    import jax.numpy as jnp, jaxopt2.scipy
    t = jnp.linspace(0.0, 1.0, 20)
    y = 2.0 * jnp.exp(-3.0 * t)
    fit = lambda p, a: p["A"] * jnp.exp(-p["k"] * a[0]) - a[1]
    sol = jaxopt2.scipy.least_squares(fit, {"A": 1.0, "k": 1.0}, (t, y))
    print(sol.params)                                   # A = 2, k = 3
    ```
    """
    method = _method(method, LEAST_SQUARES_METHODS, "least_squares")
    if bounds is not None and method == "lm":
        raise ValueError("SciPy's method 'lm' does not take bounds; use method='trf' or "
                         "'dogbox'.")
    options = _options(options)
    for key in ("jac", "bounds", "method", "args", "kwargs", "fun", "x0"):
        if key in options:
            raise ValueError(f"`options[{key!r}]` is set by jaxopt2.scipy.least_squares "
                             "itself; pass it as its own argument or drop it.")
    if options.get("loss", "linear") != "linear":
        raise ValueError(f"`loss={options['loss']!r}` is not supported: the derivatives use "
                         "the optimality condition of the plain sum of squares. Use "
                         "loss='linear' (or write the robust loss into `residual_fn`).")
    pb = _Problem.make(residual_fn, params0, args, bounds, rtol, _check_residual, "params0")
    params0, inputs, static, dtype, rtol, unravel = (pb.params0, pb.inputs, pb.static, pb.dtype,
                                                     pb.rtol, pb.unravel)
    fn, args = inputs[:2]
    m = sum(x.size for x in jtu.tree_leaves(jax.eval_shape(fn, params0, args)[0]))
    if method == "lm" and m < pb.size:
        raise ValueError(f"SciPy's method 'lm' needs at least as many residuals as parameters; "
                         f"got {m} residuals for {pb.size} parameters. Use method='trf'.")

    def r_flat(x, inputs):
        fn, args, _, _ = inputs
        return ravel(fn(unravel(x), args)[0])[0]

    # n columns by forward mode, m rows by reverse mode: whichever is fewer.
    jac_flat = jax.jacfwd(r_flat) if pb.size <= m else jax.jacrev(r_flat)
    residual, jacobian = _compile(r_flat, static), _compile(jac_flat, static)

    def host(x0, target, dynamic):
        import scipy.optimize

        del target
        ev = _Evaluations(dtype, dynamic)
        kwargs = dict(options, method=method,
                      jac=lambda x: np.asarray(ev("jac", jacobian, x), np.float64))
        if bounds is not None:
            kwargs["bounds"] = (_flat(dynamic[2]), _flat(dynamic[3]))
        res = _run(scipy.optimize.least_squares,
                   lambda x: np.asarray(ev("fun", residual, x), np.float64), x0, kwargs, ev)
        return _report(res, res.cost, res.nfev, ev, dtype)

    def gradient(params, inputs):
        fn, args, lower, upper = inputs
        r, vjp = jax.vjp(lambda p: fn(p, args)[0], params)
        return _projected(params, vjp(r)[0], lower, upper)

    def primal(params0, inputs):
        fn, args, lower, upper = inputs
        start = _project(params0, lower, upper)
        x, _, info = _callback(host, pb.size, dtype, ravel(start)[0],
                               jnp.zeros((), dtype), inputs)
        params = unravel(x)
        # MINPACK's scaled gradient: each column of J against ‖r(x₀)‖.
        columns = jnp.sqrt(jnp.sum(jac_flat(x, inputs) ** 2, axis=0))
        r0 = jnp.sqrt(jnp.sum(r_flat(ravel(start)[0], inputs) ** 2))
        pg = jnp.abs(ravel(gradient(params, inputs))[0])
        ok = jnp.all(pg <= atol + rtol * columns * r0)
        r = fn(params, args)[0]
        finite = tree_all_finite(params) & tree_all_finite(r)
        return params, _Out(r, _status(info, ok, finite), info, jnp.max(pg))

    return _solve(primal, gradient, params0, inputs, _symmetric(bounds), adjoint, throw)


def root(fn: Callable, y0: Any, args: Any = None, *, method: str = "hybr",
         tol: float | None = None, options: dict | None = None, rtol: float | None = None,
         atol: float = 0.0, adjoint: AbstractAdjoint = ImplicitAdjoint(),
         throw: bool = True) -> Solution:
    """Find `y` with `fn(y, args) = 0` by `scipy.optimize.root`, on the host (see the module
    docstring). `hybr` and `lm` get the dense Jacobian from `jax.jacfwd`; SciPy's other
    methods are Jacobian-free.

    **Arguments:**

    - `fn`: `fn(y, args) -> F` with the pytree structure and shapes of `y` (a square system).
    - `y0`, `args`, `adjoint`, `throw`: as in `jaxopt2.root_find`.
    - `method`: any of SciPy's root methods (default `"hybr"`, MINPACK's Powell hybrid).
    - `tol`, `options`: passed to SciPy.
    - `rtol`, `atol`: jaxopt2's own test (module docstring).

    **Returns** a `Solution` whose `value` is F at the root; `stats["num_fun"]` and
    `stats["num_jac"]` count SciPy's evaluations.

    **Example:**

    ```python
    import jax.numpy as jnp, jaxopt2.scipy
    F = lambda y, a: jnp.stack([y[0] ** 2 + y[1] ** 2 - a, y[0] - y[1]])
    sol = jaxopt2.scipy.root(F, jnp.array([1.0, 0.5]), 2.0)
    print(sol.params)                                   # [1. 1.]
    ```
    """
    method = _method(method, ROOT_METHODS, "root")
    options = _options(options)
    pb = _Problem.make(fn, y0, args, None, rtol, _check_square, "y0")
    y0, inputs, static, dtype, rtol, unravel = (pb.params0, pb.inputs, pb.static, pb.dtype,
                                                pb.rtol, pb.unravel)

    def F_flat(y, inputs):
        fn, args, _, _ = inputs
        return ravel(fn(unravel(y), args)[0])[0]

    F = _compile(F_flat, static)
    FJ = _compile(lambda y, i: (F_flat(y, i), jax.jacfwd(F_flat)(y, i)), static)

    def host(x0, target, dynamic):
        import scipy.optimize

        del target
        ev = _Evaluations(dtype, dynamic)

        def f_and_jac(y):
            ev.counts["fun"] += 1
            f, J = ev("jac", FJ, y)
            return np.asarray(f, np.float64), np.asarray(J, np.float64)

        kwargs = dict(method=method, tol=tol, options=dict(options))
        if method in _ROOT_JAC:
            fun, kwargs["jac"] = f_and_jac, True
        else:
            fun = lambda y: np.asarray(ev("fun", F, y), np.float64)  # noqa: E731
        res = _run(scipy.optimize.root, fun, x0, kwargs, ev)
        steps = getattr(res, "nit", None) or getattr(res, "nfev", 0)
        return _report(res, 0.0, steps, ev, dtype)

    optimality = _value

    def primal(y0, inputs):
        x, _, info = _callback(host, pb.size, dtype, ravel(y0)[0], jnp.zeros((), dtype),
                               inputs)
        y = unravel(x)
        Fy = optimality(y, inputs)
        F0 = tree_inf_norm(optimality(y0, inputs))
        ok = (_root_status(optimality, y, inputs) == RESULTS.successful) | (
            tree_inf_norm(Fy) <= atol + rtol * F0)
        finite = tree_all_finite(y) & tree_all_finite(Fy)
        return y, _Out(Fy, _status(info, ok, finite), info, tree_inf_norm(Fy))

    return _solve(primal, optimality, y0, inputs, (), adjoint, throw)


class _Problem(NamedTuple):
    """What the three front doors share before SciPy runs: the start, `inputs` =
    (fn, args, lower, upper) with `fn` closure-converted so that the arrays it closes over
    are differentiable inputs, `static` (the non-array part of `inputs`, bound into the
    compiled evaluations), the dtype, the resolved `rtol`, and the flattening."""

    params0: Any
    inputs: tuple
    static: Any
    dtype: Any
    rtol: Any
    size: int
    unravel: Callable

    @classmethod
    def make(cls, fun, x0, args, bounds, rtol, check, root):
        x0, fn, args = prepare(fun, x0, args, False, root)
        # Python floats in `args` become (weakly typed) arrays: the adjoint differentiates
        # them, so the closure-converted `fn` must take them as inputs rather than constants.
        args = jtu.tree_map(lambda a: jnp.asarray(a) if isinstance(a, (float, complex)) else a,
                            args)
        check(fn, x0, args)
        fn = eqx.filter_closure_convert(fn, x0, args)
        lower, upper = (None, None) if bounds is None else make_bounds(bounds, x0)
        dtype = result_dtype(x0)
        flat0, unravel = ravel(x0)
        inputs = (fn, args, lower, upper)
        return cls(x0, inputs, eqx.partition(inputs, eqx.is_array)[1], dtype,
                   default_rtol(dtype) if rtol is None else rtol, flat0.size, unravel)


def _check_residual(fn, x0, args):
    check_vector_output(fn, x0, args, "residual_fn", square=False)


def _check_square(fn, y0, args):
    check_vector_output(fn, y0, args, "fn", square=True)


def _value(params, inputs):
    """The user's function at `params` (f, the residuals, or F): a solve's `value`."""
    fn, args = inputs[:2]
    return fn(params, args)[0]


def _symmetric(bounds):
    """The adjoint's tags: without bounds the optimality condition's Jacobian is a Hessian
    (or JᵀJ), symmetric positive semidefinite; the projected one is not symmetric."""
    return (lx.symmetric_tag, lx.positive_semidefinite_tag) if bounds is None else ()


class _Out(eqx.Module):
    value: Any
    status: RESULTS
    info: jax.Array  # int32[9]: see `_report`
    optimality: jax.Array


class _Evaluations:
    """Host-side: calls the compiled functions in the problem's dtype and counts them.

    Everything runs on JAX's CPU backend, next to SciPy: the callback already holds its
    inputs in host memory, each evaluation would otherwise be a round trip to an accelerator,
    and JAX work launched on an accelerator from inside a callback that the accelerator is
    waiting on has been reported to hang."""

    def __init__(self, dtype, dynamic):
        self.cpu = jax.devices("cpu")[0]
        self.dtype, self.dynamic = dtype, jax.device_put(dynamic, self.cpu)
        self.counts = dict.fromkeys(("fun", "grad", "hvp", "hessian", "jac"), 0)

    def __call__(self, name, f, *xs):
        self.counts[name] += 1
        xs = (jax.device_put(np.asarray(x).astype(self.dtype), self.cpu) for x in xs)
        return f(*xs, self.dynamic)


def _run(solve, fun, x0, kwargs, ev: _Evaluations):
    """Call SciPy; a numerical failure it raises once it has started evaluating (e.g.
    "Jacobian inversion yielded zero vector" in `krylov`) becomes a failed status for this
    problem, with SciPy's message as a warning, instead of an error that would end a whole
    `vmap`ped batch. What it raises before any evaluation (a bad option) is raised."""
    import scipy.optimize

    x0 = np.asarray(x0, np.float64)
    try:
        with np.errstate(all="ignore"):
            return solve(fun, x0, **kwargs)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as e:
        if not any(ev.counts.values()):
            raise
        warnings.warn(f"jaxopt2.scipy: SciPy raised {type(e).__name__}: {e}", RuntimeWarning,
                      stacklevel=2)
        res = scipy.optimize.OptimizeResult(x=x0, success=False, status=-1, message=str(e),
                                            fun=np.nan, cost=np.nan, nit=0, nfev=0)
        res.kind = _LINEAR if "jacobian" in str(e).lower() or "singular" in str(e).lower() \
            else _LINE_SEARCH
        return res


def _report(res, value, steps, ev: _Evaluations, dtype):
    """What the host hands back: x, the value, and int32[9] = (kind of stop, SciPy's status,
    SciPy's success, steps, then the counts of fun, grad, hvp, hessian, jac)."""
    x = np.asarray(res.x, np.float64)
    kind = res.kind if "kind" in res else _kind(res, x, value)
    info = [kind, _code(res), bool(res.success), int(steps or 0),
            *ev.counts.values()]
    return x.astype(dtype), np.asarray(value, dtype), np.asarray(info, np.int32)


def _compile(f, static):
    """`f(*xs, inputs)` compiled as `g(*xs, dynamic)`, the static part of `inputs` bound."""
    return jax.jit(lambda *a: f(*a[:-1], eqx.combine(a[-1], static)))


def _callback(host, n, dtype, x0, target, inputs):
    """SciPy on the host. Under `vmap` the problems run one after the other."""
    shapes = (jax.ShapeDtypeStruct((n,), dtype), jax.ShapeDtypeStruct((), dtype),
              jax.ShapeDtypeStruct((9,), jnp.int32))
    dynamic = eqx.filter(inputs, eqx.is_array)
    return jax.pure_callback(host, shapes, x0, target.astype(dtype), dynamic,
                             **_CALLBACK_KWARGS)


_CALLBACK_KWARGS = ({"vmap_method": "sequential"}
                    if "vmap_method" in inspect.signature(jax.pure_callback).parameters
                    else {})


def _method(method, methods, door):
    if not isinstance(method, str) or method.lower() not in methods:
        raise ValueError(f"Unknown method {method!r} for scipy.optimize.{door}; SciPy's "
                         f"methods are {', '.join(methods)} (case-insensitive).")
    return method.lower()


def _options(options):
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"`options` must be a dict of SciPy options; got "
                        f"{type(options).__name__}.")
    return dict(options)


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jtu.tree_leaves(tree)])


def _kind(res, x, f) -> int:
    """SciPy's stop, from its success flag and message, as one of _OK ... _NONFINITE."""
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(f))):
        return _NONFINITE
    if res.success:
        return _OK
    message = str(getattr(res, "message", "")).lower()
    if any(w in message for w in ("maximum", "limit", "exceeded", "max_nfev", "too many",
                                  "number of calls")):
        return _LIMIT
    if "nan" in message:
        return _NONFINITE
    if "cg iterations" in message or "singular" in message:
        return _LINEAR
    return _LINE_SEARCH


def _code(res) -> int:
    try:
        return int(getattr(res, "status", 0))
    except (TypeError, ValueError):
        return 0


def _status(info, ok, finite) -> RESULTS:
    kind = info[0]
    failure = RESULTS.where(
        (kind == _NONFINITE) | ~finite, RESULTS.nonfinite,
        RESULTS.where(kind == _LINE_SEARCH, RESULTS.line_search_failed,
                      RESULTS.where(kind == _LINEAR, RESULTS.linear_solve_failed,
                                    RESULTS.max_steps_reached)))
    solved = (kind == _OK) & (info[2] == 1) & ok & finite
    return RESULTS.where(solved, RESULTS.successful, failure)


def _project(params, lower, upper):
    if lower is None:
        return params
    return Composite(lower=lower, upper=upper).project(params)


def _projected(params, grad, lower, upper):
    """The projected gradient x − P(x − ∇f) (∇f itself without bounds): zero exactly at the
    solutions of the box-constrained problem, with derivative 0 along active bounds."""
    if lower is None:
        return grad
    return Composite(lower=lower, upper=upper).stationarity(params, grad)


def _solve(primal, optimality, params0, inputs, tags, adjoint, throw) -> Solution:
    """The implicit adjoint around `primal`, the failure checks, and the `Solution`."""
    if not isinstance(adjoint, ImplicitAdjoint):
        raise TypeError("jaxopt2.scipy differentiates the solution by the implicit function "
                        "theorem only (SciPy's iterations run on the host and cannot be "
                        f"unrolled): pass an ImplicitAdjoint(...); got {type(adjoint).__name__}.")
    adjoint = adjoint_for(adjoint, throw)
    params, out = adjoint.apply(primal, optimality, params0, inputs, tags)
    if throw:
        params = raise_if_failed(params, out.status, hint=_HINT)
    unconverged = getattr(adjoint, "differentiate_unconverged", False)
    params = guard_derivatives(params, out.status, throw=throw, hint=DERIVATIVE_HINT,
                               unconverged=unconverged)
    return _solution(params, attach_tangent(out.value, params, inputs, fn=_value), out)


def _solution(params, value, out: _Out) -> Solution:
    info = out.info
    zero = jnp.zeros((), jnp.int32)
    stats = dict(num_steps=info[3], num_fun=info[4], num_grad=info[5], num_hvp=info[6],
                 num_jvp=zero, num_vjp=zero, num_hessian=info[7], num_jac=info[8])
    return Solution(params=params, value=value, status=out.status, stats=stats,
                    state=dict(success=info[2] == 1, status=info[1],
                               optimality=out.optimality))
