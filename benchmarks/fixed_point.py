"""Fixed-point solvers side by side: jaxopt2 Anderson and FixedPointIteration against
jaxopt.AndersonAcceleration, jaxopt.FixedPointIteration and optimistix.FixedPointIteration
(optimistix 0.1 has no Anderson), in float64, single-threaded, in one process.

    python benchmarks/fixed_point.py            # writes outputs/fixed_point.md
    python benchmarks/fixed_point.py --quick    # smaller problems, one timed repeat

Problems: y = A y + b with A symmetric, spectrum spread over [0, 0.95] (plain iteration
contracts by 0.95 per step), n = 200 and 2,000; and a deep-equilibrium layer
y = tanh(W y + U x), ‖W‖₂ = 0.95, n = 500. Every solver is asked for the same target,
max|g(y) − y| ≤ 1e-8 · max|g(y₀) − y₀| (jaxopt's absolute l2 tolerance and optimistix's step
tolerance are set so that they imply it), and every final point is checked with one common
jitted g. Timing as in harness.py: compile = trace + lower + XLA compile of the jitted solve;
run = median wall time of the compiled executable, ended by `block_until_ready`.
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
import single_thread  # noqa: F401
# isort: on

import argparse
import os
import re
import statistics  # noqa: E402
import sys
from importlib.metadata import version  # noqa: E402

import jax  # noqa: E402

# Single thread and one pinned core, as in run_all.py: must happen before jax is imported.

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jaxopt  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import harness  # noqa: E402

import jaxopt2  # noqa: E402

RTOL = 1e-8
MAX_STEPS = 3000


def affine_problem(n, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (q * np.linspace(0.0, 0.95, n)) @ q.T
    data = (jnp.asarray(a), jnp.asarray(rng.normal(size=n)))
    return f"affine n={n}", lambda y, d: d[0] @ y + d[1], data, jnp.zeros(n)


def deq_problem(n, d_in=100, seed=1):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    w = (q * np.linspace(0.0, 0.95, n)) @ q.T
    u = rng.normal(size=(n, d_in)) / np.sqrt(d_in)
    x = 0.5 * rng.normal(size=d_in)
    data = (jnp.asarray(w), jnp.asarray(u @ x))
    return f"deq tanh n={n}", lambda y, d: jnp.tanh(d[0] @ y + d[1]), data, jnp.zeros(n)


def solvers(g, y0, r0):
    """name -> solve(data) returning (y, iterations, g evaluations). r0 = max|g(y0) − y0|."""
    tol_abs = RTOL * r0

    def ours(solver):
        def solve(data):
            sol = jaxopt2.fixed_point(g, y0, data, solver=solver, max_steps=MAX_STEPS,
                                      throw=False)
            return sol.params, sol.stats["num_steps"], sol.stats["num_fun"]
        return solve

    def jaxopt_(cls, **kw):
        def solve(data):
            # ‖r‖₂ ≤ tol implies max|r| ≤ tol.
            y, state = cls(fixed_point_fun=g, maxiter=MAX_STEPS, tol=tol_abs, jit=True,
                           **kw).run(y0, data)
            return y, state.iter_num, state.num_fun_eval
        return solve

    def optx_fpi(data):
        # Stops when max|y_{k+1} − y_k| = max|g(y_k) − y_k| < atol; the point returned is
        # y_{k+1} = g(y_k), whose residual is smaller still.
        sol = optx.fixed_point(g, optx.FixedPointIteration(rtol=0.0, atol=tol_abs), y0, data,
                               max_steps=MAX_STEPS, throw=False)
        steps = sol.stats["num_steps"]
        return sol.value, steps, steps

    return {
        "jaxopt2.Anderson": ours(jaxopt2.Anderson(rtol=RTOL)),
        "jaxopt2.FixedPointIteration": ours(jaxopt2.FixedPointIteration(rtol=RTOL)),
        "jaxopt.AndersonAcceleration": jaxopt_(jaxopt.AndersonAcceleration),
        # jaxopt's ridge is absolute: its default 1e-5 swamps the Gram matrix of small
        # residuals and degrades the mixing to near-averaging, so also run it tuned.
        "jaxopt.AndersonAcceleration(ridge=1e-10)": jaxopt_(jaxopt.AndersonAcceleration,
                                                             ridge=1e-10),
        "jaxopt.FixedPointIteration": jaxopt_(jaxopt.FixedPointIteration),
        "optimistix.FixedPointIteration": optx_fpi,
    }


def run_problem(problem, cfg):
    name, g, data, y0 = problem
    residual = jax.jit(lambda y, d: jnp.max(jnp.abs(g(y, d) - y)))
    r0 = float(residual(y0, data))
    rows = []
    for solver, solve in solvers(g, y0, r0).items():
        try:
            compiled, compile_s, _ = harness.compile_jax(solve, data)
            times = harness.measure(lambda: compiled(data), cfg)  # noqa: B023
            y, iters, nfun = times.out
            rel = float(residual(y, data)) / r0
            rows.append(dict(problem=name, solver=solver, solved=rel <= RTOL, rel=rel,
                             iters=int(iters), nfun=int(nfun), compile_s=compile_s,
                             run_s=statistics.median(times.wall), runs=len(times.wall)))
        except Exception as e:  # noqa: BLE001 - one failing solver must not end the run
            rows.append(dict(problem=name, solver=solver, error=f"{type(e).__name__}: {e}"[:120]))
        print(_row(rows[-1]), flush=True)
    return rows


HEADER = ("| problem | solver | solved | rel. residual | iterations | g evals | compile (s) "
          "| run (ms) |\n|---|---|---|---|---|---|---|---|")


def _row(r):
    if "error" in r:
        return f"| {r['problem']} | {r['solver']} | error | {r['error']} | | | | |"
    return (f"| {r['problem']} | {r['solver']} | {'yes' if r['solved'] else 'NO'} | "
            f"{r['rel']:.1e} | {r['iters']} | {r['nfun']} | {r['compile_s']:.2f} | "
            f"{1e3 * r['run_s']:.2f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller problems, one timed repeat")
    p.add_argument("--out", default=os.path.join(HERE, "..", "outputs", "fixed_point.md"))
    args = p.parse_args(argv)
    cfg = harness.Config(repeats=1 if args.quick else 5, budget_s=2.0 if args.quick else 5.0)
    sizes = (100, 400, 200) if args.quick else (200, 2000, 500)
    problems = [affine_problem(sizes[0]), affine_problem(sizes[1]), deq_problem(sizes[2])]
    print(HEADER)
    rows = [r for prob in problems for r in run_problem(prob, cfg)]
    text = (f"# Fixed-point solvers (float64, 1 thread, jax {jax.__version__}, "
            f"jaxopt {version('jaxopt')}, optimistix {version('optimistix')})\n\n"
            f"Target: max|g(y) − y| ≤ {RTOL:g} · max|g(y0) − y0|, checked with one common g. "
            "compile = trace + lower + XLA compile; run = median wall time of "
            f"{cfg.repeats} calls (fewer if slow).\n\n" + HEADER + "\n"
            + "\n".join(_row(r) for r in rows) + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    if not args.quick:
        harness.write_section("fixed_point", re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M))
    print(f"\nwrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
