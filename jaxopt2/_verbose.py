"""`verbose=True` on the front doors: one printed line per step, built on the loop's callback.

The front door wraps the user's `callback` (or `None`) in a `Verbose`; the loop hands every
step to `report_step`, which prints through `jax.debug.print` (so it works under `jit`, and
under `vmap` prints one line per problem) and then calls the user's callback as before. With
`verbose=False` nothing is wrapped and the traced program is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._tree import tree_inf_norm, tree_sub

# What each front door's callback reports after `(step, params)`, as printed labels.
_LABELS = {
    "minimize": ("f", "|grad|"),
    "least_squares": ("cost",),
    "root_find": ("|F|",),
    "fixed_point": ("|g(y) - y|",),
}


class Verbose:
    """The user's callback (or `None`) plus a request to print each step."""

    def __init__(self, callback: Callable | None, name: str, labels: tuple[str, ...]):
        self.callback = callback
        self.name = name
        self.labels = labels


def with_verbose(callback: Callable | None, verbose: bool, solver: Any, door: str):
    """What the front door passes to the loop as its callback: `callback` itself unless
    `verbose` is True."""
    if not isinstance(verbose, bool):
        raise TypeError(f"`verbose` for jaxopt2.{door} must be True or False; got "
                        f"{verbose!r}. (Unlike optimistix, jaxopt2 has no per-field selection: "
                        "True prints the step, the objective or residual norm, the gradient "
                        "norm, the step length and the solver's step size where it has one.)")
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` for jaxopt2.{door} must be callable or None; got "
                        f"{type(callback).__name__}.")
    if not verbose:
        return callback
    return Verbose(callback, type(solver).__name__, _LABELS[door])


def report_step(callback, step, prev_params, params, metrics: tuple, state) -> None:
    """Called by the loop after every step when `callback` is not None: print the step if
    `callback` is a `Verbose`, then call the user's callback as
    `callback(step, params, *metrics)` on the host."""
    if isinstance(callback, Verbose):
        pieces = [f"{callback.name} step {{step}}:"]
        values = dict(step=step)
        for i, (label, metric) in enumerate(zip(callback.labels, metrics, strict=True)):
            pieces.append(f"{label} = {{m{i}:.6e}}" if i == 0 else f"{label} = {{m{i}:.3e}}")
            values[f"m{i}"] = metric
        pieces.append("|dx| = {dx:.3e}")
        values["dx"] = tree_inf_norm(tree_sub(params, prev_params))
        step_size = getattr(state, "step_size", None)
        if step_size is not None and jnp.ndim(step_size) == 0:
            pieces.append("step size = {t:.3e}")
            values["t"] = step_size
        jax.debug.print(", ".join(pieces).replace(":,", ":"), **values)
        callback = callback.callback
    if callback is not None:
        jax.debug.callback(callback, step, params, *metrics)
