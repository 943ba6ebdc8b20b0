"""Root finding benchmark: jaxopt2.NewtonKrylov against optimistix's Newton (tridiagonal-tagged
and dense), SciPy's newton_krylov and jaxopt's Broyden, in float64, single-threaded.

    python benchmarks/root_find.py            # writes outputs/root_find.md
    python benchmarks/root_find.py --repeats 3

Problems: the 1-D Bratu problem −u'' = eᵘ (λ = 1, centred differences, u = 0 start) at
n = 1,000 and 10,000, and the Broyden tridiagonal function (MGH 30, x = −1 start) at n = 1,000.
"Solved" means max|F| ≤ 1e-8 at the returned point, checked afterwards with one common F.
Compile time = first call − steady-state run time; run time = median of `--repeats` calls.
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
import single_thread  # noqa: F401
# isort: on

import argparse
import os
import statistics  # noqa: E402
import sys
import time  # noqa: E402

import jax  # noqa: E402

# Single-threaded and pinned, as in run_all.py; must happen before jax/NumPy are imported.

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
import scipy.optimize  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jaxopt2  # noqa: E402

TOL = 1e-8


def bratu(u, lam):
    n = u.shape[0]
    h = 1.0 / (n + 1)
    up = jnp.concatenate([jnp.zeros(1, u.dtype), u, jnp.zeros(1, u.dtype)])
    return (2 * u - up[:-2] - up[2:]) / h**2 - lam * jnp.exp(u)


def broyden_tridiagonal(x, args):
    xp = jnp.concatenate([jnp.zeros(1, x.dtype), x, jnp.zeros(1, x.dtype)])
    return (3 - 2 * x) * x - xp[:-2] - 2 * xp[2:] + 1


PROBLEMS = {
    "bratu n=1000": (bratu, 1000, 0.0, 1.0),
    "bratu n=10000": (bratu, 10000, 0.0, 1.0),
    "broyden-tridiagonal n=1000": (broyden_tridiagonal, 1000, -1.0, None),
}


def time_jitted(solve, y0, repeats):
    """(output, compile seconds, run seconds) of a jitted `solve(y0)`."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(solve(y0))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(solve(y0))
        runs.append(time.perf_counter() - t0)
    run = statistics.median(runs)
    return out, max(first - run, 0.0), run


def run_jaxopt2(fn, y0, args, repeats):
    solver = jaxopt2.NewtonKrylov()
    solve = jax.jit(lambda y: jaxopt2.root_find(fn, y, args, solver=solver, throw=False))
    sol, comp, run = time_jitted(solve, y0, repeats)
    evals = (f"{int(sol.stats['num_jvp'])} jvp, {int(sol.stats['num_fun'])} F")
    return sol.params, int(sol.stats["num_steps"]), evals, comp, run


def run_optx(fn, y0, args, repeats, tridiagonal):
    kw = dict(linear_solver=lx.Tridiagonal()) if tridiagonal else {}
    tags = frozenset({lx.tridiagonal_tag}) if tridiagonal else frozenset()
    # Cauchy termination: max|Δy| ≤ atol + rtol·|y| and max|F| ≤ atol, so atol = TOL
    solver = optx.Newton(rtol=TOL, atol=TOL, **kw)
    solve = jax.jit(lambda y: optx.root_find(fn, solver, y, args, tags=tags, throw=False,
                                             max_steps=256))
    sol, comp, run = time_jitted(solve, y0, repeats)
    steps = int(sol.stats["num_steps"])
    # Newton forms the Jacobian once per step: 3 jvps (colouring) when tagged tridiagonal,
    # a dense jacfwd (n jvps) otherwise.
    evals = f"{steps} Jacobians ({'3 jvp' if tridiagonal else 'dense'} each)"
    return sol.value, steps, evals, comp, run


def run_scipy(fn, y0, args, repeats):
    f_jit = jax.jit(lambda y: fn(y, args))
    count = [0]

    def f_np(x):
        count[0] += 1
        return np.asarray(f_jit(jnp.asarray(x)))

    def once():
        count[0] = 0
        try:
            x = scipy.optimize.newton_krylov(f_np, np.asarray(y0), f_tol=TOL, maxiter=100)
            note = ""
        except scipy.optimize.NoConvergence as e:
            x, note = e.args[0], " (NoConvergence at maxiter=100)"
        return x, note

    f_np(np.asarray(y0))  # compile F outside the timing
    t0 = time.perf_counter()
    x, note = once()
    run = time.perf_counter() - t0
    return x, None, f"{count[0]} F (jvps by differences){note}", 0.0, run


def run_jaxopt_broyden(fn, y0, args, repeats):
    import jaxopt

    solver = jaxopt.Broyden(fun=fn, maxiter=500, tol=TOL, history_size=20)
    solve = jax.jit(lambda y: solver.run(y, args))
    out, comp, run = time_jitted(solve, y0, repeats)
    steps = int(out.state.iter_num)
    return out.params, steps, f"~{steps} F + line search", comp, run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--problems", nargs="*", default=list(PROBLEMS))
    opts = p.parse_args(argv)
    rows = []
    for name in opts.problems:
        fn, n, start, args = PROBLEMS[name]
        y0 = jnp.full(n, start)
        check = jax.jit(lambda y, fn=fn, args=args: jnp.max(jnp.abs(fn(y, args))))
        runners = [("jaxopt2.NewtonKrylov", run_jaxopt2, ()),
                   ("optimistix.Newton (tridiagonal tag)", run_optx, (True,))]
        if n <= 1000:
            runners.append(("optimistix.Newton (dense)", run_optx, (False,)))
        runners.append(("scipy newton_krylov", run_scipy, ()))
        if n <= 1000:
            runners.append(("jaxopt.Broyden", run_jaxopt_broyden, ()))
        results = []
        for solver, runner, extra in runners:
            try:
                y, steps, evals, comp, run = runner(fn, y0, args, opts.repeats, *extra)
                res = float(check(jnp.asarray(y)))
                results.append((solver, res, steps, evals, comp, run))
            except Exception as e:  # noqa: BLE001 - report and go on
                results.append((solver, float("nan"), None, f"error: {type(e).__name__}: "
                                f"{str(e)[:80]}", float("nan"), float("nan")))
            print(name, results[-1], flush=True)
        ref = next(r[5] for r in results if r[0].endswith("(tridiagonal tag)"))
        for solver, res, steps, evals, comp, run in results:
            rows.append(f"| {name} | {solver} | {'yes' if res <= TOL else 'NO'} | {res:.1e} | "
                        f"{steps if steps is not None else '-'} | {evals} | {comp:.2f} | "
                        f"{run * 1e3:.1f} | {run / ref:.2f} |")
    table = "\n".join([
        "| problem | solver | solved | max abs F | Newton steps | evaluations | compile s | "
        "run ms | run / optx tridiagonal |",
        "|---|---|---|---|---|---|---|---|---|", *rows])
    print(table)
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "outputs")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "root_find.md"), "w") as f:
        f.write("# Root finding benchmark (float64, one thread)\n\n" + table + "\n")
    if set(opts.problems) == set(PROBLEMS):  # a full run owns RESULTS.md's section
        from harness import write_section

        write_section("root_find", "## Root finding (float64, one thread)\n\n" + table)


if __name__ == "__main__":
    main()
