"""Field validators shared by every solver's `__check_init__` (and the optimizer / sketch
factories): one wording per kind of field, so a message always names the field, the valid
range and the value received.

Values that are JAX tracers (a solver built inside `jit` or `vmap` from traced
hyperparameters) cannot be inspected and are let through; everything else is checked at
construction, where a mistake is cheapest to report.
"""

from __future__ import annotations

import math
import numbers

import jax
import numpy as np


def _is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def _as_real(value):
    """`value` as a Python float if it is a real, non-boolean number (a Python or NumPy
    scalar, or a concrete 0-d array), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, jax.Array)) and getattr(value, "shape", None) == ():
        kind = np.dtype(value.dtype).kind
        if kind in "fiu":
            return float(value)
    return None


def _interval(low, high, low_open, high_open) -> str:
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{lo}, {hi}{right}"


def check_number(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
                 allow_none: bool = False, none_means: str | None = None):
    """A finite real number in the interval given (either bound may be open or missing).

    Raises ValueError naming `name`, the interval and the value otherwise; `None` passes only
    with `allow_none` (`none_means` says what None stands for, for the message)."""
    if value is None and allow_none:
        return
    if _is_traced(value):
        return
    x = _as_real(value)
    ok = x is not None and math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        interval = _interval(low, high, low_open, high_open)
        alt = ""
        if allow_none:
            alt = f" (or None{': ' + none_means if none_means else ''})"
        raise ValueError(f"`{name}` must be a finite number in {interval}{alt}; "
                         f"got {value!r}.")


def check_tolerance(name: str, value, *, allow_none: bool = False, below_one: bool = False):
    """A tolerance: a finite number ≥ 0 (< 1 with `below_one`, for relative tolerances of an
    inner solve). `allow_none`: None selects the solver's default."""
    check_number(name, value, low=0.0, high=1.0 if below_one else None, high_open=below_one,
                 allow_none=allow_none, none_means="the default" if allow_none else None)


def check_positive(name: str, value, *, allow_none: bool = False):
    """A finite number > 0."""
    check_number(name, value, low=0.0, low_open=True, allow_none=allow_none)


def check_unit_interval(name: str, value, *, low_open: bool = True, high_open: bool = True):
    """A finite number in (0, 1) (either end may be closed)."""
    check_number(name, value, low=0.0, high=1.0, low_open=low_open, high_open=high_open)


def check_budget(name: str, value, *, allow_none: bool = False, low: int = 1):
    """An iteration or trial budget: a Python int ≥ `low` (it sets a static loop bound, so a
    traced or float value cannot be used). `allow_none`: None selects the default."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        alt = " (or None for the default)" if allow_none else ""
        raise ValueError(f"`{name}` must be a Python int ≥ {low}{alt}; got {value!r}.")


def check_hessian_block(solver: str, value):
    """`hessian_block`: None or a function (params, args, index) -> H[index][:, index]."""
    if value is not None and not callable(value):
        raise TypeError(f"{solver}: `hessian_block` must be a function "
                        "(params, args, index) -> H[index][:, index]; got "
                        f"{type(value).__name__}.")


def check_choice(name: str, value, choices):
    """One of `choices`."""
    if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
        raise ValueError(f"`{name}` must be one of {tuple(choices)!r}; got {value!r}.")


def renamed_fields(**old_to_new: str):
    """Class decorator: constructing the class with an old keyword raises a TypeError that
    names the new one (instead of Python's bare "unexpected keyword argument"). The check
    runs in `__new__`, before the solver base classes' generic keyword check."""
    def decorate(cls):
        new = cls.__new__

        def __new__(klass, *args, **kwargs):
            for old, name in old_to_new.items():
                if old in kwargs:
                    raise TypeError(f"{klass.__name__}: the keyword `{old}` is now `{name}`; "
                                    f"pass {name}={kwargs[old]!r} instead.")
            if new is object.__new__:
                return new(klass)
            return new(klass, *args, **kwargs)

        cls.__new__ = __new__
        return cls

    return decorate


def check_tolerances(solver, *names: str):
    """`rtol` (None: the default), `atol` and any further tolerance fields of `solver`
    (None allowed: the default)."""
    check_tolerance("rtol", solver.rtol, allow_none=True)
    check_tolerance("atol", solver.atol)
    for name in names:
        check_tolerance(name, getattr(solver, name), allow_none=True)


def check_inexact_newton(solver):
    """The fields of an inexact Newton minimizer with an inner CG solve: `rtol` and `atol`,
    `cg_rtol` (a relative tolerance < 1; None: the adaptive Eisenstat–Walker choice) and
    `cg_max_steps` (None: the default budget)."""
    check_tolerances(solver)
    check_tolerance("cg_rtol", solver.cg_rtol, allow_none=True, below_one=True)
    check_budget("cg_max_steps", solver.cg_max_steps, allow_none=True)


def check_line_search(solver, *, budget: str = "max_backtracks"):
    """`c1` in (0, 1) and the trial budget of a backtracking line search."""
    check_unit_interval("c1", solver.c1)
    check_budget(budget, getattr(solver, budget))


def check_line_search_solver(solver):
    """The four fields every solver with a tolerance test and a backtracking line search
    has: `rtol`, `atol` (`check_tolerances`), `c1` and `max_backtracks`
    (`check_line_search`)."""
    check_tolerances(solver)
    check_line_search(solver)
