"""Timing and verification shared by every solver in the benchmark.

- JAX solvers are a function `solve(data) -> (params, info)`, timed the same way:
  compile = `jax.jit(solve).trace(data).lower().compile()` (trace + lower + XLA compile); run =
  median of calls of the compiled executable, each ended by `block_until_ready`.
- Host solvers (SciPy, scikit-learn) are timed as a plain call; their JAX callbacks are compiled
  before timing and that compile time is reported.
- How many calls: a first call; if it took less than `Config.long_s` it is a warm-up and is
  dropped, else it counts. Then more calls up to `Config.repeats` timed calls in all, as long as
  they fit in `Config.budget_s` seconds. Both wall-clock and process CPU time are recorded.
- Every final point is checked with one jitted `jax.grad` of the problem's objective, whatever
  the library reported: reached = |grad f(x)|_inf <= RTOL * |grad f(x0)|_inf.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

RTOL = 1e-8


@dataclasses.dataclass
class Result:
    solver: str
    family: str                     # "jaxopt2" or "anchor"
    reached: bool = False
    rel_grad: float = float("nan")  # |grad f(x)|_inf / |grad f(x0)|_inf, by the common check
    iters: int | None = None
    n_fun: int | None = None        # objective-only evaluations
    n_grad: int | None = None       # value-and-gradient evaluations
    n_hvp: int | None = None        # Hessian-vector products
    n_hess: int | None = None       # dense Hessians formed
    compile_s: float | None = None
    compile_parts: dict | None = None  # trace / lower / xla seconds, cpu, hlo_ops
    run_s: float | None = None      # median wall-clock seconds
    run_cpu_s: float | None = None  # median process CPU seconds of the same calls
    runs: int = 0
    status: str = ""
    note: str = ""
    error: str = ""


@dataclasses.dataclass
class Config:
    repeats: int = 3        # timed calls wanted per solver
    budget_s: float = 8.0   # wall seconds of timed calls allowed per solver (fewer if slower)
    long_s: float = 1.0     # a first call longer than this is kept as a measurement
    quick: bool = False


class Checker:
    """The common gradient check, compiled once per problem."""

    def __init__(self, problem):
        self._grad = jax.jit(jax.grad(problem.fun))
        self.problem = problem
        self.g0 = self.inf_norm(problem.params0)

    def inf_norm(self, params) -> float:
        g = self._grad(params, self.problem.data)
        return float(max(np.max(np.abs(np.asarray(leaf))) for leaf in jax.tree.leaves(g)))

    def rel(self, params) -> float:
        return self.inf_norm(params) / self.g0

    @property
    def target(self) -> float:
        """The absolute target on |grad f|_inf."""
        return RTOL * self.g0


# -------------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timed:
    out: Any
    wall: float
    cpu: float


def timed(call: Callable[[], Any]) -> Timed:
    c0, t0 = time.process_time(), time.perf_counter()
    out = jax.block_until_ready(call())
    return Timed(out, time.perf_counter() - t0, time.process_time() - c0)


@dataclasses.dataclass
class Times:
    out: Any
    wall: list
    cpu: list
    compile_s: float | None = None
    compile_parts: dict | None = None


def measure(call: Callable[[], Any], cfg: Config, first: Timed | None = None) -> Times:
    """Time `call` as described in the module docstring. `first`: an already timed call of
    the same thing (e.g. the last calibration run), used as the first call."""
    first = first if first is not None else timed(call)
    kept = [first] if first.wall >= cfg.long_s else []
    per_call = max(first.wall, 1e-9)
    n = max(0 if kept else 1,
            min(cfg.repeats - len(kept), int(cfg.budget_s / per_call) - len(kept)))
    runs = kept + [timed(call) for _ in range(n)]
    return Times(runs[-1].out, [r.wall for r in runs], [r.cpu for r in runs])


def compile_jax(solve: Callable, *args):
    """(compiled executable, seconds to trace + lower + compile `jax.jit(solve)` for `args`,
    dict of the parts: trace, lower, xla, cpu = process CPU time of the whole, hlo_ops)."""
    c0, t0 = time.process_time(), time.perf_counter()
    traced = jax.jit(solve).trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    parts = dict(trace=t1 - t0, lower=t2 - t1, xla=t3 - t2, cpu=time.process_time() - c0)
    # Size of the optimized program: a machine-independent proxy for the XLA compile cost.
    try:
        parts["hlo_ops"] = sum(1 for line in compiled.as_text().splitlines() if " = " in line)
    except Exception:  # noqa: BLE001 - diagnostic only
        parts["hlo_ops"] = None
    return compiled, t3 - t0, parts


def time_jax(solve: Callable, data, cfg: Config) -> Times:
    """Compile `solve` for `data`, then time calls of the executable."""
    compiled, compile_s, parts = compile_jax(solve, data)
    times = measure(lambda: compiled(data), cfg)
    times.compile_s, times.compile_parts = compile_s, parts
    return times


def eval_costs(problem, k: int = 30) -> dict[str, float]:
    """CPU seconds per objective, value-and-gradient and (linearized) Hessian-vector product,
    measured inside one jitted loop of `k` dependent calls, so without dispatch overhead: the
    cost a solver's while-loop pays per evaluation; and per dense Hessian (`jax.hessian`)."""
    from jax import lax

    f, p0, data = problem.fun, problem.params0, problem.data
    step = lambda p, g: jax.tree.map(lambda a, b: a - 1e-9 * b, p, g)

    def fun_loop(p, data):
        return lax.fori_loop(0, k, lambda i, p: jax.tree.map(lambda a: a + 1e-9 * f(p, data),
                                                             p), p)

    def grad_loop(p, data):
        return lax.fori_loop(0, k, lambda i, p: step(p, jax.value_and_grad(f)(p, data)[1]), p)

    def hvp_loop(p, data):
        _, hvp = jax.linearize(lambda q: jax.grad(f)(q, data), p)
        return lax.fori_loop(0, k, lambda i, v: step(v, hvp(v)), p)

    flat0, unravel = ravel_pytree(p0)
    k_hess = 3

    def hess_loop(x, data):  # dense Hessians, `jax.hessian` of the flattened objective
        hess = jax.hessian(lambda y: f(unravel(y), data))
        return lax.fori_loop(0, k_hess, lambda i, y: y - 1e-9 * jnp.sum(hess(y), axis=0), x)

    out = {}
    for name, loop, x, reps in (("fun", fun_loop, p0, k), ("grad", grad_loop, p0, k),
                                ("hvp", hvp_loop, p0, k), ("hess", hess_loop, flat0, k_hess)):
        compiled = jax.jit(loop).lower(x, data).compile()
        timed(lambda: compiled(x, data))  # noqa: B023
        out[name] = min(timed(lambda: compiled(x, data)).cpu  # noqa: B023
                        for _ in range(2)) / reps
    return out


# ------------------------------------------------------------------------------- results


def calibrate(call_with_tol: Callable[[float], Any], params_of: Callable[[Any], Any],
              checker: Checker, ladder) -> tuple[float, Timed]:
    """Run with each tolerance of `ladder` (loosest first) until the target is reached; stop
    early once three tighter tolerances in a row leave the final gradient unchanged (the
    solver has stalled above the target). Returns the tolerance and its timed run."""
    best_rel, stalls, run = np.inf, 0, None
    for tol in ladder:
        run = timed(lambda: call_with_tol(tol))  # noqa: B023
        rel = checker.rel(params_of(run.out))
        if rel <= RTOL:
            return tol, run
        stalls = stalls + 1 if rel >= 0.99 * best_rel else 0
        best_rel = min(best_rel, rel)
        if stalls >= 3:
            break
    return tol, run


def finish(res: Result, checker: Checker, params, times: Times) -> Result:
    res.rel_grad = checker.rel(params)
    res.reached = bool(res.rel_grad <= RTOL)
    res.run_s = statistics.median(times.wall)
    res.run_cpu_s = statistics.median(times.cpu)
    res.runs = len(times.wall)
    if times.compile_s is not None:
        res.compile_s, res.compile_parts = times.compile_s, times.compile_parts
    return res


def guarded(fn: Callable[[], Result], solver: str, family: str) -> Result:
    """Run one benchmark entry; an exception becomes a row saying what failed."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - one failing solver must not end the run
        print(traceback.format_exc(limit=4))
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return Result(solver, family, error=msg[:200], status="error")


RESULTS_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def write_section(name: str, text: str, path: str = RESULTS_MD) -> None:
    """Replace the section `name` of RESULTS.md (between `<!-- section:name -->` and
    `<!-- /section:name -->`) with `text`, or append it: each benchmark script owns its
    section, and hand-written text outside the markers survives a re-run."""
    begin, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = open(path).read() if os.path.exists(path) else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    with open(path, "w") as fh:
        fh.write(new)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo ("unknown" elsewhere), for the machine line."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
