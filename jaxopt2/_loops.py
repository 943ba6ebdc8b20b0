"""The while loop every solver loop goes through.

Normally `jax.lax.while_loop`. Under `UnrolledAdjoint` the solver is traced inside
`unrolled_loops(checkpoints)`, and every loop becomes a bounded, checkpointed loop
(`equinox.internal.while_loop`), which reverse-mode autodiff can differentiate through. Every
call states its static bound `max_steps` (the step budget, the line search's trials, the inner
solver's iterations), so the unrolled loop has a fixed length.
"""

from __future__ import annotations

import contextlib
import contextvars

import equinox.internal as eqxi
from jax import lax

_UNROLLED: contextvars.ContextVar = contextvars.ContextVar("jaxopt2_unrolled", default=None)


@contextlib.contextmanager
def unrolled_loops(checkpoints: int | None):
    token = _UNROLLED.set(("unrolled", checkpoints))
    try:
        yield
    finally:
        _UNROLLED.reset(token)


def is_unrolled() -> bool:
    return _UNROLLED.get() is not None


def while_loop(cond, body, init, *, max_steps: int):
    """`lax.while_loop(cond, body, init)`, or, when unrolling, a checkpointed loop of at most
    `max_steps` iterations (with `checkpoints` ≈ √max_steps unless given)."""
    mode = _UNROLLED.get()
    if mode is None:
        return lax.while_loop(cond, body, init)
    checkpoints = mode[1]
    if checkpoints is None:
        checkpoints = max(1, int(max(max_steps, 1) ** 0.5))
    return eqxi.while_loop(cond, body, init, max_steps=max(int(max_steps), 1),
                           kind="checkpointed", checkpoints=min(checkpoints, max(max_steps, 1)))
