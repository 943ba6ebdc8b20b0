"""Nonlinear least squares side by side on the Moré-Garbow-Hillstrom set (benchmarks/mgh.py):
SciPy (MINPACK lm, trf), optimistix, jaxopt and jaxopt2, in float64, single-threaded.

    python benchmarks/least_squares.py                    # all 35 problems, all solvers
    python benchmarks/least_squares.py --quick            # a few problems, one timed repeat
    python benchmarks/least_squares.py --problems 1 10 Osborne --solvers "scipy lm" jaxopt2
    python benchmarks/least_squares.py --large            # only the matrix-free large problem

Tolerances (comparable, not identical: every library has its own stopping test):

- SciPy lm (MINPACK lmder) and trf: ftol = xtol = 1e-10; gtol = machine epsilon for lm (its
  smallest allowed value, so the gradient test practically never fires first) and disabled
  (None) for trf; max_nfev = 2000. Exact Jacobians from `jax.jacfwd`, compiled once; the
  compile time of the two callbacks is reported as the solver's compile time.
- optimistix LevenbergMarquardt, GaussNewton, Dogleg: rtol = atol = 1e-10 (its Cauchy test on
  the step and on the change in f).
- jaxopt LevenbergMarquardt: stop_criterion="madsen-nielsen", xtol = 1e-10, gtol = 1e-15,
  dense Jacobian (materialize_jac=True) with a Cholesky solve; jaxopt GaussNewton: tol = 1e-10
  on the step 2-norm.
- jaxopt2 LevenbergMarquardt, GaussNewton: as SciPy lm (ftol = xtol = 1e-10, gtol = machine
  epsilon) where the constructor has these MINPACK-style tolerances, else rtol = atol = 1e-10
  (the JSON records what was passed).
- every JAX solver: at most 1000 steps, no exception on failure (throw=False).

Classification of the final sum of squares f = sum(r**2) (recomputed here from the returned
parameters, whatever the library reports): "solved" if f <= f* (1 + 1e-6) for f* > 0, or
f <= 1e-10 for f* = 0; "local" if f is within relative 1e-6 (absolute 1e-10) of a local value
the paper documents (`Problem.local_f`); "failed" otherwise (including non-finite f).

Counts: residual evaluations and Jacobians are as the library reports them where it does
(SciPy: nfev and njev, no step count, MINPACK evaluates one Jacobian per outer iteration;
jaxopt2: its stats). optimistix and jaxopt report only the number of steps; each of
their steps linearises the residual once at the trial point, so their Jacobian count is
given as steps (+1 for jaxopt's initial Jacobian), marked "~" in the table.

Timing (benchmarks/harness.py): compile = trace + lower + XLA compile of `jax.jit(solve)`;
run = median wall time of calls of the compiled program (`block_until_ready`). SciPy's run
time is the whole `least_squares` call, its callbacks already compiled.

Large problem (--large): r_i(x) = tanh(a_i^T x) - b_i, 100,000 residuals, 1,000 parameters,
A dense float32 (400 MB), x float32, solved by jaxopt2 LevenbergMarquardt(linear_solver="cg")
from x = 0, matrix-free (jvp/vjp only); reports the compiled program's temporary memory and
the process's peak RSS next to the data size.
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
from single_thread import PINNED_CPU, THREAD_ENV
# isort: on

import argparse
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os
import platform  # noqa: E402
import re
import resource  # noqa: E402
import statistics  # noqa: E402
import sys
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import mgh  # noqa: E402
import numpy as np  # noqa: E402
from harness import Config, compile_jax, cpu_name, measure, timed  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUTS = os.path.join(HERE, "..", "outputs")

TOL = 1e-10
MAX_STEPS = 1000
SCIPY_MAX_NFEV = 2000
CLASS_RTOL = 1e-6
CLASS_ATOL = 1e-10
QUICK_PROBLEMS = (1, 2, 10, 13, 19, 24)
REFERENCE_RUN = "scipy lm"  # run times are compared with this solver
REFERENCE_COMPILE = "optimistix.LevenbergMarquardt"  # compile times with this one


@dataclasses.dataclass
class Row:
    solver: str
    problem: int
    name: str
    n: int
    m: int
    f: float = float("nan")
    cls: str = "failed"
    steps: int | None = None
    n_fun: int | None = None
    n_jac: int | None = None
    n_jvp: int | None = None
    n_vjp: int | None = None
    counts_estimated: bool = False  # Jacobians derived from the step count, not reported
    compile_s: float | None = None
    run_s: float | None = None
    runs: int = 0
    status: str = ""
    error: str = ""


def classify(problem: mgh.Problem, f: float) -> str:
    """'solved', 'local' or 'failed', as in the module docstring."""
    if not np.isfinite(f):
        return "failed"
    if problem.f_star == 0.0:
        if f <= CLASS_ATOL:
            return "solved"
    elif f <= problem.f_star * (1.0 + CLASS_RTOL):
        return "solved"
    for v in problem.local_f:
        if abs(f - v) <= (CLASS_ATOL if v == 0.0 else CLASS_RTOL * v):
            return "local"
    return "failed"


def sum_sq(problem: mgh.Problem, x) -> float:
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        return float("nan")
    return float(np.sum(np.asarray(problem.residual(jnp.asarray(x), None)) ** 2))


# --------------------------------------------------------------------------------- solvers
# A JAX solver is `make(problem) -> solve(x0) -> (params, info dict of scalars)`; a host
# solver is `run(problem, cfg) -> Row fields`.


def _optx(kind):
    def make(problem):
        import optimistix as optx

        solver = getattr(optx, kind)(rtol=TOL, atol=TOL)

        def solve(x0):
            sol = optx.least_squares(problem.residual, solver, x0, None, max_steps=MAX_STEPS,
                                     throw=False)
            return sol.value, dict(steps=sol.stats["num_steps"], code=sol.result._value)

        return solve

    return make


def _jaxopt(kind):
    def make(problem):
        import jaxopt

        if kind == "LevenbergMarquardt":
            solver = jaxopt.LevenbergMarquardt(
                residual_fun=problem.residual, maxiter=MAX_STEPS,
                stop_criterion="madsen-nielsen", xtol=TOL, gtol=1e-15,
                materialize_jac=True, solver="cholesky", implicit_diff=False)
        else:
            solver = jaxopt.GaussNewton(residual_fun=problem.residual, maxiter=MAX_STEPS,
                                        tol=TOL, implicit_diff=False)

        def solve(x0):
            params, state = solver.run(x0, None)
            # jaxopt has no status: -1 marks "maxiter reached", 0 "stopped on its test".
            code = jnp.where(state.iter_num >= MAX_STEPS, -1, 0)
            return params, dict(steps=state.iter_num, code=code)

        return solve

    return make


def _jaxopt2_kwargs(cls) -> dict:
    """The MINPACK-style tolerances of scipy lm (ftol = xtol = TOL, gtol = eps), or rtol =
    atol = TOL, whichever the constructor has."""
    params = inspect.signature(cls.__init__).parameters
    wanted = dict(ftol=TOL, xtol=TOL, gtol=float(np.finfo(np.float64).eps), rtol=TOL, atol=TOL)
    return {k: v for k, v in wanted.items() if k in params}


def _jaxopt2(kind):
    def make(problem):
        import jaxopt2

        cls = getattr(jaxopt2, kind)
        solver = cls(**_jaxopt2_kwargs(cls))

        def solve(x0):
            sol = jaxopt2.least_squares(problem.residual, x0, None, solver=solver,
                                        max_steps=MAX_STEPS, throw=False)
            info = {k: sol.stats[k] for k in ("num_steps", "num_fun", "num_jac", "num_jvp",
                                              "num_vjp") if k in sol.stats}
            info["code"] = sol.status._value
            return sol.params, info

        return solve

    return make


def _scipy(method):
    def run(problem, cfg):
        from scipy.optimize import least_squares

        x0 = jnp.asarray(problem.x0)
        c0 = time.perf_counter()
        fun = jax.jit(lambda x: problem.residual(x, None)).lower(x0).compile()
        jac = jax.jit(jax.jacfwd(lambda x: problem.residual(x, None))).lower(x0).compile()
        compile_s = time.perf_counter() - c0
        tols = (dict(ftol=TOL, xtol=TOL, gtol=np.finfo(float).eps) if method == "lm"
                else dict(ftol=TOL, xtol=TOL, gtol=None))

        def call():
            return least_squares(lambda x: np.asarray(fun(x)), problem.x0,
                                 jac=lambda x: np.asarray(jac(x)), method=method,
                                 max_nfev=SCIPY_MAX_NFEV, **tols)

        times = measure(call, cfg)
        res = times.out
        # MINPACK reports evaluations, not iterations: one Jacobian per outer iteration.
        return dict(x=res.x, steps=None, n_fun=int(res.nfev),
                    n_jac=int(res.njev) if res.njev is not None else None,
                    compile_s=compile_s, run_s=statistics.median(times.wall),
                    runs=len(times.wall), status=f"status {res.status}")

    return run


JAX_SOLVERS = {
    "optimistix.LevenbergMarquardt": _optx("LevenbergMarquardt"),
    "optimistix.GaussNewton": _optx("GaussNewton"),
    "optimistix.Dogleg": _optx("Dogleg"),
    "jaxopt.LevenbergMarquardt": _jaxopt("LevenbergMarquardt"),
    "jaxopt.GaussNewton": _jaxopt("GaussNewton"),
    "jaxopt2.LevenbergMarquardt": _jaxopt2("LevenbergMarquardt"),
    "jaxopt2.GaussNewton": _jaxopt2("GaussNewton"),
}
HOST_SOLVERS = {"scipy lm": _scipy("lm"), "scipy trf": _scipy("trf")}
SOLVERS = ["scipy lm", "scipy trf", *JAX_SOLVERS]


_JAXOPT2_FILES = {"jaxopt2.LevenbergMarquardt": "levenberg_marquardt.py",
                  "jaxopt2.GaussNewton": "gauss_newton.py"}


def jaxopt2_ready(sname: str) -> bool:
    """A jaxopt2 solver is still a stub while its source file says PLACEHOLDER."""
    fname = _JAXOPT2_FILES.get(sname)
    if fname is None:
        return True
    with open(os.path.join(HERE, "..", "jaxopt2", "_solver", fname)) as fh:
        return "PLACEHOLDER" not in fh.read()


def run_one(sname: str, problem: mgh.Problem, cfg: Config) -> Row:
    row = Row(sname, problem.number, problem.name, problem.n, problem.m)
    try:
        if sname in HOST_SOLVERS:
            out = HOST_SOLVERS[sname](problem, cfg)
            x = out.pop("x")
            for k, v in out.items():
                setattr(row, k, v)
        else:
            solve = JAX_SOLVERS[sname](problem)
            x0 = jnp.asarray(problem.x0)
            compiled, row.compile_s, _ = compile_jax(solve, x0)
            times = measure(lambda: compiled(x0), cfg)
            row.run_s, row.runs = statistics.median(times.wall), len(times.wall)
            x, info = times.out
            info = {k: int(v) for k, v in info.items()}
            code = info.pop("code")
            row.status = {0: "successful", -1: "maxiter reached"}.get(code,
                                                                    f"result code {code}")
            if sname.startswith("jaxopt2"):
                row.steps = info.get("num_steps")
                row.n_fun, row.n_jac = info.get("num_fun"), info.get("num_jac")
                row.n_jvp, row.n_vjp = info.get("num_jvp"), info.get("num_vjp")
            else:
                row.steps = info["steps"]
                row.n_jac = row.steps + (1 if sname.startswith("jaxopt.") else 0)
                row.counts_estimated = True
        row.f = sum_sq(problem, x)
        row.cls = classify(problem, row.f)
    except Exception as e:  # noqa: BLE001 - one failing solver must not end the run
        print(traceback.format_exc(limit=3))
        row.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        row.cls = "failed"
    return row


def warm_up():
    """One tiny solve per JAX library, so one-time start-up costs (first tracing of common
    primitives) are not charged to whichever solver happens to run first."""
    p = mgh.get(1)
    for sname in JAX_SOLVERS:
        if not jaxopt2_ready(sname):
            continue
        try:
            jax.block_until_ready(jax.jit(JAX_SOLVERS[sname](p))(jnp.asarray(p.x0)))
        except Exception:  # noqa: BLE001 - the real run reports the error
            pass


# --------------------------------------------------------------------------------- summary


def summarize(rows: list[Row], solvers: list[str]) -> dict:
    by = {s: [r for r in rows if r.solver == s] for s in solvers}
    ref_run = {r.problem: r.run_s for r in by.get(REFERENCE_RUN, []) if r.run_s}
    ref_compile = sum(r.compile_s or 0.0 for r in by.get(REFERENCE_COMPILE, []))
    out = {}
    for s, rs in by.items():
        if not rs:
            continue
        runs = [r.run_s for r in rs if r.run_s is not None]
        jacs = [r.n_jac for r in rs if r.n_jac is not None]
        total_compile = sum(r.compile_s or 0.0 for r in rs)
        ratios = [r.run_s / ref_run[r.problem] for r in rs
                  if r.run_s is not None and ref_run.get(r.problem)]
        out[s] = dict(
            problems=len(rs),
            solved=sum(r.cls == "solved" for r in rs),
            local=sum(r.cls == "local" for r in rs),
            failed=sum(r.cls == "failed" for r in rs),
            median_jac=statistics.median(jacs) if jacs else None,
            jac_estimated=any(r.counts_estimated for r in rs),
            total_compile_s=total_compile,
            total_run_s=sum(runs) if runs else None,
            median_run_s=statistics.median(runs) if runs else None,
            run_ratio_median=statistics.median(ratios) if ratios else None,
            run_ratio_total=(sum(runs) / sum(ref_run[r.problem] for r in rs
                                              if r.run_s is not None and ref_run.get(r.problem))
                             if ratios else None),
            compile_ratio=total_compile / ref_compile if ref_compile and s != "scipy lm"
            and s != "scipy trf" else None,
        )
    return out


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def markdown(rows, summary, meta, large=None) -> str:
    lines = ["# Nonlinear least squares: the Moré–Garbow–Hillstrom set", "",
             f"{meta['date']}, {meta['cpu']}, pinned CPU {meta['pinned_cpu']}, load "
             f"{meta['load']['start'][0]:.1f} → {meta['load']['end'][0]:.1f}; jax "
             f"{meta['versions']['jax']}, optimistix {meta['versions']['optimistix']}, jaxopt "
             f"{meta['versions']['jaxopt']}, scipy {meta['versions']['scipy']}; repeats "
             f"{meta['repeats']}; `{meta['command']}`", "",
             "Tolerances, classification and counts: see the docstring of "
             "benchmarks/least_squares.py. Jacobians marked ~ are one per step (the library "
             "reports steps only). Run ratio: median over problems of run time / "
             f"{REFERENCE_RUN}'s; compile ratio: total compile / {REFERENCE_COMPILE}'s.", "",
             "## Summary", "",
             "| solver | solved | local | failed | median Jacobians | total compile (s) | "
             "compile ratio | total run (ms) | median run (ms) | run ratio (median) | "
             "run ratio (total) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, v in summary.items():
        jac = _fmt(v["median_jac"], "g")
        if v["jac_estimated"] and v["median_jac"] is not None:
            jac = "~" + jac
        lines.append(
            f"| {s} | {v['solved']} | {v['local']} | {v['failed']} | {jac} | "
            f"{v['total_compile_s']:.2f} | {_fmt(v['compile_ratio'], '.2f')} | "
            f"{_fmt(v['total_run_s'] and v['total_run_s'] * 1e3, '.1f')} | "
            f"{_fmt(v['median_run_s'] and v['median_run_s'] * 1e3, '.3f')} | "
            f"{_fmt(v['run_ratio_median'], '.2f')} | {_fmt(v['run_ratio_total'], '.2f')} |")
    lines += ["", "## Per problem", "",
              "| # | problem | n | m | solver | f = Σr² | class | steps | residuals | "
              "Jacobians | jvp/vjp | compile (s) | run (ms) | status |",
              "|---:|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r.problem, SOLVERS.index(r.solver))):
        jac = _fmt(r.n_jac, "d")
        if r.counts_estimated and r.n_jac is not None:
            jac = "~" + jac
        jv = "–" if r.n_jvp is None and r.n_vjp is None else f"{r.n_jvp}/{r.n_vjp}"
        lines.append(
            f"| {r.problem} | {r.name} | {r.n} | {r.m} | {r.solver} | {r.f:.6e} | {r.cls} | "
            f"{_fmt(r.steps, 'd')} | {_fmt(r.n_fun, 'd')} | {jac} | {jv} | "
            f"{_fmt(r.compile_s, '.2f')} | {_fmt(r.run_s and r.run_s * 1e3, '.3f')} | "
            f"{r.error or r.status} |")
    if large:
        lines += ["", "## Large matrix-free problem", "", "```",
                  json.dumps(large, indent=1), "```"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ large


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def run_large(m: int = 100_000, n: int = 1_000, max_steps: int = 50) -> dict:
    """r(x) = tanh(A x) - b with a dense float32 A, solved matrix-free by jaxopt2 LM + CG."""
    import jaxopt2

    rss0 = _rss_mb()
    rng = np.random.default_rng(0)
    # Entries N(0, 1/n) so that a_i^T x is O(1) for x = O(1): tanh is neither saturated nor
    # linear, and the problem is genuinely nonlinear. Filled in row blocks so that generating
    # A needs no full-size temporaries, and the peak RSS below reflects the data and the
    # solve rather than the random number generator.
    a_np = np.empty((m, n), np.float32)
    block = 10_000
    for i in range(0, m, block):
        a_np[i:i + block] = rng.standard_normal((min(block, m - i), n), np.float32)
    a_np *= np.float32(1.0 / np.sqrt(n))
    a = jnp.asarray(a_np)
    del a_np  # jnp.asarray may copy; keep only one 400 MB array alive
    x_true = jnp.asarray(rng.standard_normal(n, np.float32))
    b = jnp.tanh(a @ x_true) + 0.01 * jnp.asarray(rng.standard_normal(m, np.float32))
    jax.block_until_ready((a, b))
    rss_data = _rss_mb()
    data_mb = (a.nbytes + b.nbytes) / 2**20

    def residual(x, args):
        a, b = args
        return jnp.tanh(a @ x) - b

    # The solver's default tolerances: 1e-10 would be below what float32 resolves.
    solver = jaxopt2.LevenbergMarquardt(linear_solver="cg")

    def solve(x0, args):
        sol = jaxopt2.least_squares(residual, x0, args, solver=solver, max_steps=max_steps,
                                    throw=False)
        return sol.params, sol.value, sol.status._value, sol.stats

    x0 = jnp.zeros((n,), jnp.float32)
    compiled, compile_s, parts = compile_jax(solve, x0, (a, b))
    mem = compiled.memory_analysis()
    first = timed(lambda: compiled(x0, (a, b)))
    x, r, code, stats = first.out
    rss1 = _rss_mb()
    f = float(jnp.sum(r.astype(jnp.float64) ** 2))
    f0 = float(jnp.sum(residual(x0, (a, b)).astype(jnp.float64) ** 2))
    return dict(
        m=m, n=n, dtype="float32", data_mb=round(data_mb, 1),
        compiled_temp_mb=round(mem.temp_size_in_bytes / 2**20, 1) if mem else None,
        compiled_argument_mb=round(mem.argument_size_in_bytes / 2**20, 1) if mem else None,
        compiled_output_mb=round(mem.output_size_in_bytes / 2**20, 1) if mem else None,
        peak_rss_mb=dict(start=round(rss0, 1), after_data=round(rss_data, 1),
                         after_solve=round(rss1, 1)),
        f0=f0, f=f, noise_floor=0.01 ** 2 * m, status_code=int(code),
        stats={k: int(v) for k, v in stats.items()},
        x_error=float(jnp.linalg.norm(x - x_true) / jnp.linalg.norm(x_true)),
        compile_s=round(compile_s, 2), run_s=round(first.wall, 2), max_steps=max_steps,
        note="peak_rss_mb is a high-water mark: after_solve == after_data means the solve "
             "stayed below the peak of building the data (host copies of A); the solve's own "
             "working memory is compiled_temp_mb",
    )


# --------------------------------------------------------------------------------- main


def selected_problems(wanted) -> list[mgh.Problem]:
    if not wanted:
        return list(mgh.PROBLEMS)
    out = []
    for w in wanted:
        if w.isdigit():
            out.append(mgh.get(int(w)))
        else:
            out += [p for p in mgh.PROBLEMS if w.lower() in p.name.lower()]
    return sorted({p.number: p for p in out}.values(), key=lambda p: p.number)


def selected_solvers(wanted) -> list[str]:
    if not wanted:
        return list(SOLVERS)
    keep = set()
    for w in wanted:
        exact = [s for s in SOLVERS if s.lower() == w.lower()]
        keep.update(exact or [s for s in SOLVERS if w.lower() in s.lower()])
    return [s for s in SOLVERS if s in keep]


def machine_info(args, cfg, total, load_start) -> dict:
    cpu = cpu_name()
    from importlib.metadata import version

    return dict(
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), cpu=cpu,
        cores=os.cpu_count(), python=platform.python_version(),
        versions={m: version(m) for m in ("jax", "jaxlib", "jaxopt", "optimistix", "scipy")},
        load=dict(start=load_start, end=os.getloadavg()),
        threads={k: os.environ.get(k) for k in THREAD_ENV}, pinned_cpu=PINNED_CPU,
        quick=args.quick, repeats=cfg.repeats, budget_s=cfg.budget_s, total_s=total,
        tol=TOL, max_steps=MAX_STEPS,
        jaxopt2_kwargs={s: _jaxopt2_kwargs(getattr(__import__('jaxopt2'), s.split('.')[1]))
                        for s in _JAXOPT2_FILES if jaxopt2_ready(s)},
        command="python benchmarks/least_squares.py " + " ".join(sys.argv[1:]),
    )


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"problems {', '.join(map(str, QUICK_PROBLEMS))} only, 1 timed repeat")
    p.add_argument("--problems", nargs="+", default=None, metavar="P",
                   help="MGH numbers or name substrings")
    p.add_argument("--solvers", nargs="+", default=None, metavar="S",
                   help=f"subset of {', '.join(SOLVERS)} (exact, else substring)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steady-state runs per solver and problem (default 5, quick 1)")
    p.add_argument("--large", action="store_true",
                   help="run only the large matrix-free problem (100,000 x 1,000)")
    p.add_argument("--out", default=os.path.join(OUTPUTS, "least_squares.json"),
                   help="raw results (JSON); the markdown goes next to it with .md")
    p.add_argument("--cpu", type=int, default=None, help="pin to this core")
    p.add_argument("--no-pin", action="store_true", help="do not pin to one core")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    cfg = Config(repeats=args.repeats or (1 if args.quick else 5),
                 budget_s=2.0 if args.quick else 5.0, long_s=1.0, quick=args.quick)
    out_json = os.path.abspath(args.out)
    out_md = os.path.splitext(out_json)[0] + ".md"
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    t_start, load_start = time.perf_counter(), os.getloadavg()

    if args.large:
        large = run_large()
        print(json.dumps(large, indent=1))
        meta = machine_info(args, cfg, time.perf_counter() - t_start, load_start)
        with open(out_json, "w") as fh:
            json.dump(dict(meta=meta, large=large), fh, indent=1)
        print(f"wrote {os.path.relpath(out_json)}")
        return

    problems = selected_problems(args.problems or (
        [str(k) for k in QUICK_PROBLEMS] if args.quick else None))
    solvers = selected_solvers(args.solvers)
    dropped = [s for s in solvers if not jaxopt2_ready(s)]
    solvers = [s for s in solvers if jaxopt2_ready(s)]
    if dropped:
        print(f"not written yet (PLACEHOLDER), skipped: {', '.join(dropped)}")
    if not problems or not solvers:
        sys.exit(f"nothing selected: problems {problems}, solvers {solvers}")
    warm_up()
    rows = []
    for p in problems:
        print(f"\n== {p.number} {p.name} (n={p.n}, m={p.m}, f*={p.f_star:.6g})", flush=True)
        for s in solvers:
            r = run_one(s, p, cfg)
            rows.append(r)
            run_ms = _fmt(r.run_s and r.run_s * 1e3, ".3f")
            print(f"  {s:31s} f={r.f:.6e} {r.cls:6s} steps={r.steps} res={r.n_fun} "
                  f"jac={r.n_jac} compile={_fmt(r.compile_s, '.2f')}s run={run_ms}ms "
                  f"{r.error or r.status}", flush=True)
    summary = summarize(rows, solvers)
    meta = machine_info(args, cfg, time.perf_counter() - t_start, load_start)
    with open(out_json, "w") as fh:
        json.dump(dict(meta=meta, summary=summary, rows=[vars(r) for r in rows]), fh, indent=1,
                  default=str)
    with open(out_md, "w") as fh:
        fh.write(markdown(rows, summary, meta))
    if not args.quick and not args.problems and not args.solvers:
        from harness import write_section

        md = re.sub(r"^(#+) ", r"#\1 ", markdown(rows, summary, meta), flags=re.M)
        write_section("least_squares", md)  # headings one level down inside RESULTS.md
    print("\n" + "\n".join(markdown(rows, summary, meta).splitlines()[6:8 + len(summary) + 2]))
    print(f"\nwrote {os.path.relpath(out_json)} and {os.path.relpath(out_md)} "
          f"({meta['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
