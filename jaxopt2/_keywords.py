"""Errors that translate the keywords jaxopt, optimistix and SciPy users reach for.

`jaxopt2.LBFGS(tol=1e-6, maxiter=100)` or `jaxopt2.minimize(..., maxiter=100)` would otherwise
fail with Python's bare "unexpected keyword argument". The solver base classes call
`check_solver_keywords` before construction and the front doors are wrapped in
`check_front_door_keywords`; both raise a `TypeError` that says which of our keywords to use.
Nothing here runs for a call whose keywords are all accepted, beyond one set difference.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable

_BUDGET = ("maxiter", "max_iter", "maxiters", "max_iters", "max_iterations", "maxfev",
           "max_nfev", "maxfun", "num_steps", "n_iter", "max_steps")
_LINE_SEARCH_BUDGET = ("maxls", "max_ls", "max_linesearch", "linesearch_maxiter",
                       "max_linesearch_steps", "max_backtracks", "max_backtracking_steps")
_TOLERANCES = ("rtol", "atol", "ftol", "xtol", "gtol")
_START = ("init_params", "params0", "x0", "y0", "init", "params", "initial_params")
_FUNCTION = ("fun", "fn", "f", "residual_fun", "residual_fn", "optimality_fun",
             "fixed_point_fun", "value_and_grad", "has_aux", "objective", "loss")
_ADJOINT = ("implicit_diff", "implicit_diff_solve", "adjoint", "unroll")
_ALIASES = {"stepsize": "step_size", "learning_rate": "step_size", "history_size": "history",
            "memory_size": "history", "maxcor": "history"}

# The door each solver family is passed to, and a solver to show in front-door messages.
_DOOR_EXAMPLES = {
    "minimize": "jaxopt2.LBFGS(rtol=..., atol=...)",
    "least_squares": "jaxopt2.LevenbergMarquardt(ftol=..., xtol=..., gtol=...)",
    "root_find": "jaxopt2.NewtonKrylov(rtol=..., atol=...)",
    "fixed_point": "jaxopt2.Anderson(rtol=..., atol=...)",
}


@functools.cache
def _accepted(func) -> frozenset[str] | None:
    """Keyword names `func` accepts; None if it takes `**kwargs` (anything goes)."""
    params = inspect.signature(func).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _ordered(func) -> list[str]:
    return [p.name for p in inspect.signature(func).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]


def _names(names) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _door_of(cls) -> str:
    from ._base import (
        AbstractFixedPointSolver,
        AbstractLeastSquaresSolver,
        AbstractMinimizer,
        AbstractRootFinder,
    )
    for base, door in ((AbstractMinimizer, "minimize"),
                       (AbstractLeastSquaresSolver, "least_squares"),
                       (AbstractRootFinder, "root_find"),
                       (AbstractFixedPointSolver, "fixed_point")):
        if issubclass(cls, base):
            return door
    return "minimize"


def _solver_advice(cls, name: str, accepted: list[str]) -> str:
    door = f"jaxopt2.{_door_of(cls)}"
    start = "params0" if door in ("jaxopt2.minimize", "jaxopt2.least_squares") else "y0"
    cname = cls.__name__
    if name == "tol":
        tols = [t for t in _TOLERANCES if t in accepted]
        if not tols:
            return f"{cname} has no tolerance keyword."
        text = f"`tol` is jaxopt's spelling: {cname}'s tolerances are {_names(tols)}."
        if "atol" in tols and "rtol" in tols:
            text += (" jaxopt stops on an absolute test, so `tol=t` is closest to "
                     "`atol=t, rtol=0.0` (ours use the max-norm).")
        return text
    if name in _BUDGET:
        return (f"The iteration budget is an argument of the front door, not of the solver: "
                f"{door}(..., solver=jaxopt2.{cname}(...), max_steps=N).")
    if name in _LINE_SEARCH_BUDGET:
        budget = [a for a in accepted if "backtrack" in a or "linesearch" in a]
        if budget:
            return f"{cname}'s line-search budget is {_names(budget)}."
        return f"{cname} has no line-search budget to set."
    if name in _START:
        return (f"The starting point is an argument of the front door: "
                f"{door}(fun, {start}, args, solver=jaxopt2.{cname}(...)).")
    if name in _FUNCTION:
        return (f"The function is an argument of the front door, not of the solver: "
                f"{door}(fun, {start}, args, solver=jaxopt2.{cname}(...)); pass "
                "`has_aux=True` there if it returns (output, aux).")
    if name in ("verbose", "callback", "throw"):
        return f"`{name}` is an argument of the front door: {door}(..., {name}=...)."
    if name in _ADJOINT:
        return (f"How the solution is differentiated is chosen at the front door: "
                f"{door}(..., adjoint=jaxopt2.ImplicitAdjoint()) (the default) or "
                "adjoint=jaxopt2.UnrolledAdjoint() to differentiate through the iterations.")
    if name == "jit":
        return ("Nothing in jaxopt2 compiles itself: wrap the call to the front door in "
                "`jax.jit` (or `eqx.filter_jit`).")
    return _close_match(name, accepted)


def _close_match(name: str, accepted: list[str]) -> str:
    alias = _ALIASES.get(name)
    if alias in accepted:
        return f"Did you mean `{alias}`?"
    close = difflib.get_close_matches(name, accepted, n=2, cutoff=0.6)
    return f"Did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else ""


def check_solver_keywords(cls, kwargs) -> None:
    """Raise a `TypeError` naming our keyword for each keyword `cls(...)` does not accept."""
    accepted = _accepted(cls.__init__)
    if accepted is None or not kwargs.keys() - accepted:
        return
    names = _ordered(cls.__init__)
    unknown = [k for k in kwargs if k not in accepted]
    lines = [f"jaxopt2.{cls.__name__} got unexpected keyword argument"
             f"{'s' if len(unknown) > 1 else ''} {_names(unknown)}."]
    lines += [advice for k in unknown if (advice := _solver_advice(cls, k, names))]
    lines.append(f"{cls.__name__} accepts: {_names(names) or 'no keywords'}.")
    raise TypeError("\n".join(lines))


def _door_advice(door: str, name: str, accepted: list[str]) -> str:
    example = _DOOR_EXAMPLES[door]
    start = accepted[1] if len(accepted) > 1 else "params0"
    if name in _TOLERANCES or name == "tol":
        return f"Tolerances belong to the solver: jaxopt2.{door}(..., solver={example})."
    if name in _BUDGET and name != "max_steps":
        return f"`{name}` is spelled `max_steps` here: jaxopt2.{door}(..., max_steps=N)."
    if name in _LINE_SEARCH_BUDGET:
        return "The line-search budget belongs to the solver (e.g. `max_backtracks`)."
    if name in _START:
        return f"The starting point is the second positional argument, `{start}`."
    if name == "method":
        return f"Pass a solver object instead of a name: solver={example}."
    if name == "options":
        return (f"Set the budget here with `max_steps=` and tolerances on the solver: "
                f"solver={example}.")
    if name in ("jac", "hess", "hessp", "grad", "jacobian"):
        return ("Derivatives come from JAX automatically; pick a solver that uses the "
                "curvature you want (e.g. jaxopt2.NewtonCG() for Hessian-vector products).")
    if name in ("implicit_diff", "implicit_diff_solve", "unroll"):
        return ("Choose the differentiation with `adjoint=jaxopt2.ImplicitAdjoint()` (the "
                "default) or `adjoint=jaxopt2.UnrolledAdjoint()`.")
    if name == "jit":
        return "Nothing in jaxopt2 compiles itself: wrap the call in `jax.jit`."
    return _close_match(name, accepted)


def check_front_door_keywords(door: Callable) -> Callable:
    """Wrap the front door `door` so that a keyword it does not take raises a `TypeError`
    naming the keyword to use instead (its signature and docstring are kept)."""
    accepted = _accepted(door)
    names = _ordered(door)

    @functools.wraps(door)
    def wrapper(*args, **kwargs):
        if accepted is not None and kwargs.keys() - accepted:
            unknown = [k for k in kwargs if k not in accepted]
            lines = [f"jaxopt2.{door.__name__} got unexpected keyword argument"
                     f"{'s' if len(unknown) > 1 else ''} {_names(unknown)}."]
            lines += [a for k in unknown if (a := _door_advice(door.__name__, k, names))]
            lines.append(f"jaxopt2.{door.__name__} accepts: {_names(names)}.")
            raise TypeError("\n".join(lines))
        return door(*args, **kwargs)

    return wrapper
