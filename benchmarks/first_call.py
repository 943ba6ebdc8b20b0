"""First call at the prompt: a front door called without `jax.jit`, as a user trying a
solver does, against optimistix's own front doors called the same way (issue 20), float64.

    python benchmarks/first_call.py            # writes its RESULTS.md section
    python benchmarks/first_call.py --quick    # one process per row, prints only

Each row runs in fresh Python processes (so nothing is cached in memory; JAX's persistent
compilation cache is off), pinned to one core, and times, after the imports and the data:
the first call (everything it traces and compiles, and the solve, until the result is ready),
a second call with new values of the same shapes, and the number of XLA programs each
compiled. jaxopt2 is measured twice: as it runs by default (a top-level call compiles the whole
solve as one cached program, `jaxopt2._compiled`) and with `JAXOPT2_EAGER=1` (operation by
operation, how every top-level call ran before). The best of `--repeats` processes is kept.
The problems and solver settings are `compile_time.py`'s.
"""

from __future__ import annotations

# isort: off
from single_thread import PINNED_CPU, THREAD_ENV  # noqa: F401  (first: one thread, one core)
# isort: on

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from harness import cpu_name, write_section

ROWS = [  # (problem, solver); the problems and solvers of compile_time.py
    ("logistic (569×31)", "optimistix.BFGS"),
    ("logistic (569×31)", "jaxopt2.NewtonCG"),
    ("logistic (569×31)", "jaxopt2.LBFGS"),
    ("logistic (569×31)", "jaxopt2.Newton"),
    ("Rosenbrock 4-D", "optimistix.BFGS"),
    ("Rosenbrock 4-D", "jaxopt2.NewtonCG"),
    ("Rosenbrock 4-D", "jaxopt2.LBFGS"),
    ("exp. fit (40×3)", "optimistix.LevenbergMarquardt"),
    ("exp. fit (40×3)", "jaxopt2.LevenbergMarquardt"),
    ("Bratu (100)", "optimistix.Newton"),
    ("Bratu (100)", "jaxopt2.NewtonKrylov"),
]


def child(problem: str, solver: str) -> None:
    """Run in a fresh process: time two top-level calls and print a JSON line."""
    import jax
    from jax import monitoring

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_compilation_cache_dir", None)
    import compile_time as ct

    compiles = []
    monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: compiles.append(seconds)
        if event.endswith("backend_compile_duration") else None)
    kind, fun, x0, data = ct.problems()[problem]
    solve = {**ct.anchors(kind), **ct.ours(kind)}[solver]
    # the second call's values: the same shapes, other numbers
    x1 = jax.tree_util.tree_map(lambda v: v * 0.9 + 0.01, x0)
    jax.block_until_ready((x0, x1, data))
    out = []
    for start in (x0, x1):
        n0 = len(compiles)
        t0 = time.perf_counter()
        sol = solve(fun, start, data)
        jax.block_until_ready(ct.essentials(sol))
        out.append(dict(seconds=time.perf_counter() - t0, compiles=len(compiles) - n0,
                        status=ct.status(ct.essentials(sol), solver.startswith("jaxopt2"))))
    print("RESULT " + json.dumps(out))


def run_row(problem: str, solver: str, eager: bool, repeats: int):
    env = {**os.environ, **THREAD_ENV}
    env.pop("JAXOPT2_EAGER", None)
    if eager:
        env["JAXOPT2_EAGER"] = "1"
    best = None
    for _ in range(repeats):
        cmd = [sys.executable, __file__, "--child", problem, solver, "--no-pin"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                              cwd=os.path.dirname(os.path.abspath(__file__)))
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            raise RuntimeError(f"{problem} {solver}: {proc.stderr[-2000:]}")
        first, second = json.loads(line[0][7:])
        if best is None or first["seconds"] < best[0]["seconds"]:
            best = (first, second)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--child", nargs=2)
    parser.add_argument("--cpu", type=int)  # read by single_thread
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if PINNED_CPU is not None:  # the children inherit the pinning
        os.sched_setaffinity(0, {PINNED_CPU})
    repeats = args.repeats or (1 if args.quick else 2)
    start = time.perf_counter()
    results = {}
    for problem, solver in ROWS:
        modes = [False, True] if solver.startswith("jaxopt2") else [False]
        for eager in modes:
            first, second = run_row(problem, solver, eager, repeats)
            results[problem, solver, eager] = (first, second)
            print(f"{problem:20s} {solver:32s} {'eager' if eager else 'default':8s} first "
                  f"{first['seconds']:6.2f}s ({first['compiles']} programs) second "
                  f"{second['seconds']:6.3f}s ({second['compiles']}) {first['status']}",
                  flush=True)
    rows = ["| problem | solver | first call s | programs compiled | second call s | "
            "programs compiled | first call vs anchor | first call, op by op (before) s | "
            "programs, op by op | second call, op by op s | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for problem, solver in ROWS:
        first, second = results[problem, solver, False]
        anchor = min(v[0]["seconds"] for (p, s, _), v in results.items()
                     if p == problem and s.startswith("optimistix"))
        if solver.startswith("jaxopt2"):
            e1, e2 = results[problem, solver, True]
            eager = f"{e1['seconds']:.2f} | {e1['compiles']} | {e2['seconds']:.3f}"
        else:
            eager = "n/a | n/a | n/a"
        rows.append(f"| {problem} | {solver} | {first['seconds']:.2f} | {first['compiles']} | "
                    f"{second['seconds']:.3f} | {second['compiles']} | "
                    f"{first['seconds'] / anchor:.2f}× | {eager} | {first['status']} |")
    total = time.perf_counter() - start
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import jax
    import optimistix as optx

    machine = (f"{cpu_name()}, one pinned core (cpu {PINNED_CPU}), {platform.system()}, jax "
               f"{jax.__version__}, optimistix {optx.__version__}; best of {repeats} fresh "
               f"processes per row; load average {load:.1f} at the end; total {total:.0f} s")
    text = "\n\n".join([
        "## First call at the prompt: front doors without `jax.jit` (`first_call.py`, issue 20)",
        f"Machine: {machine}.",
        "Each front door called as a user at the prompt calls it, without `jax.jit`, in a "
        "fresh process: the first call (trace, every compile, the solve) and a second call "
        "with new values of the same shapes, with the number of XLA programs each compiled. "
        "jaxopt2 by default compiles a top-level call's whole solve as one program cached "
        "for the next call; `op by op (before)` is the same call with `JAXOPT2_EAGER=1`, how "
        "every top-level call ran before (each operation outside the loops its own program, "
        "the loops recompiled at every call). `vs anchor` = the ratio to the optimistix "
        "solver's first call on the same problem. Default settings and `throw=False` for "
        "jaxopt2; optimistix with rtol = atol = 1e-8.",
        "\n".join(rows)])
    print("\n" + text)
    if not args.quick:
        write_section("first_call", text)


if __name__ == "__main__":
    main()
