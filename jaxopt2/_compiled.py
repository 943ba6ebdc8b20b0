"""Front doors called outside any JAX transformation compile their whole solve as one program.

A front door is Python that builds a solve out of JAX operations. Called inside `jax.jit`
(or `vmap`, `grad`) it is traced once into the caller's program. Called eagerly, as a user
trying a solver at the prompt does, JAX would run it operation by operation: every
operation outside the solver's loops compiled as its own tiny program (about 60 of them for
a Newton-CG solve, each tens of milliseconds) and the loops themselves recompiled on every
call, since each call traces them afresh. `compiled_at_top_level` instead runs such a call
through one `equinox.filter_jit` program, cached on the function, the solver's settings,
the keywords and the shapes and dtypes of the arrays, so a first call pays one compile and
a repeated call none (issue 20: first-call time). The doors: `minimize`, `least_squares`,
`root_find`, `fixed_point`, `minimize_constrained`, `qp.solve_qp`, `ot.sinkhorn`,
`ot.sinkhorn_newton_sparse` and `ot.sinkhorn_points`.

What an eager call promised is kept:

- Checks of concrete values (NaN in the start or the data, lower > upper) still raise
  `ValueError` before anything compiles: each door names its own `precheck`, which runs on
  the concrete inputs at every call.
- `throw=True` raises the same `RuntimeError`, with the same message, as the eager solve
  did: the compiled solve runs with `throw=False` (so it holds no host callback, and JAX's
  persistent compilation cache can store it) and the status is checked afterwards.
- Anything that is not a JAX or NumPy array is part of the cache key and compiled in as a
  constant (as `equinox.filter_jit` does): Python scalars in `args` that change from call
  to call recompile, as every eager call did before; pass them as arrays to avoid it.
- Arrays that the functions reach outside their arguments (closure cells, the module
  globals their code names, and so on through the plain functions they reach, a few levels
  deep) are compiled in as constants too, so they are part of the key by identity (and kept
  alive with it, so that an id is never reused): rebinding a global `X = new_data` between
  two calls compiles anew instead of reusing the old data. What the key cannot see is an
  in-place change of a NumPy array or a value reached some other way (an attribute of an
  object that is not a pytree); pass data that changes through `args`.

Calls that cannot be cached (an unhashable non-array in the inputs) and calls made inside a
transformation run the door as before. `JAXOPT2_EAGER=1` in the environment turns the
compiled path off (to debug a door with prints or a debugger, op by op).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os

import equinox as eqx
import jax.tree_util as jtu

# Where `_front.finish` leaves the failure detail (steps taken, how far from the tolerance)
# of the solve traced inside `_run`, for the message of a failure raised after it.
_DETAIL: contextvars.ContextVar = contextvars.ContextVar("jaxopt2_detail", default=None)


def note_detail(detail) -> None:
    """Called by `_front.finish`: keep the `detail` of the door's own solve (the last one
    to finish: a door traced inside another's solve runs with the box cleared)."""
    box = _DETAIL.get()
    if box is not None:
        box[:] = [detail]


def _top_level() -> bool:
    """True when no JAX transformation (jit, vmap, grad, ...) is being traced."""
    try:
        from jax._src import core

        return bool(core.trace_state_clean())
    except (ImportError, AttributeError):  # an internal that moved: run the door as before
        return False


def _hashable(static) -> bool:
    try:
        hash(tuple(jtu.tree_leaves(static)))
    except TypeError:
        return False
    return True


class _Same:
    """A cache-key entry equal only to itself: hashed by identity, and holding its object
    (so that Python cannot reuse the id for another object while the key lives)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Same) and other.obj is self.obj


def _reached_arrays(roots, depth: int = 3) -> tuple:
    """The arrays that the callables in `roots` reach outside their arguments: closure
    cells, module globals named by their code (and by the code of functions defined in
    it), the fields of a bound method's pytree `self` and a `functools.partial`'s
    arguments, following the plain functions found that way `depth` levels down."""
    found, seen = [], set()
    stack = [(f, depth) for f in roots if callable(f)]
    while stack:
        f, d = stack.pop()
        if id(f) in seen or isinstance(f, type) or inspect.ismodule(f):
            continue
        seen.add(id(f))
        values = []
        if isinstance(f, functools.partial):
            values += [f.func, *f.args, *f.keywords.values()]
        if inspect.ismethod(f):
            values += [f.__self__]
            f = f.__func__
        code = getattr(f, "__code__", None)
        if code is not None:
            values += [c.cell_contents for c in (f.__closure__ or ())
                       if _filled(c)]
            names, codes = set(), [code]
            while codes:
                c = codes.pop()
                names.update(c.co_names)
                codes += [k for k in c.co_consts if inspect.iscode(k)]
            g = getattr(f, "__globals__", {})
            values += [g[name] for name in names if name in g]
        for value in values:
            if inspect.ismodule(value) or isinstance(value, type):
                continue
            for leaf in jtu.tree_leaves(value):
                if eqx.is_array(leaf):
                    found.append(_Same(leaf))
                elif callable(leaf) and d > 0:
                    stack.append((leaf, d - 1))
    return tuple(found)


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # an empty cell (a name assigned after the closure was made)
        return False
    return True


@eqx.filter_jit
def _run(door, arguments, reached):
    del reached  # only part of the cache key
    box = []
    token = _DETAIL.set(box)
    try:
        solution = door(**arguments)
    finally:
        _DETAIL.reset(token)
    return solution, (box[0] if box else None)


def compiled_at_top_level(precheck, hint: str | None = None):
    """Decorator for a front door with a `throw` keyword that returns an object with a
    `status` and raises its failures with `_front.raise_if_failed` (with `hint`, or its
    default; a door that calls `_front.finish` also gets its failure detail into the
    message). `precheck(arguments)` gets the call's arguments by name (defaults filled in)
    and raises on bad concrete values, as the door itself would eagerly."""

    def decorate(door):
        signature = inspect.signature(door)

        @functools.wraps(door)
        def wrapper(*args, **kwargs):
            if os.environ.get("JAXOPT2_EAGER", "") not in ("", "0") or not _top_level():
                token = _DETAIL.set(None)  # a door inside another's trace keeps its detail
                try:
                    return door(*args, **kwargs)
                finally:
                    _DETAIL.reset(token)
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return door(*args, **kwargs)  # the door reports the bad call
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            if not _hashable(eqx.filter(arguments, eqx.is_array, inverse=True)):
                return door(*args, **kwargs)
            precheck(arguments)
            throw = arguments["throw"]
            arguments["throw"] = False
            reached = _reached_arrays([v for v in jtu.tree_leaves(arguments)
                                       if callable(v) and not eqx.is_array(v)])
            solution, detail = _run(door, arguments, reached)
            if throw:
                from ._front import raise_if_failed

                extra = {} if hint is None else {"hint": hint}
                raise_if_failed(None, solution.status, detail=detail, **extra)
            return solution

        return wrapper

    return decorate
