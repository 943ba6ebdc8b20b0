"""Side-by-side benchmark of jaxopt2's minimizers against jaxopt, optimistix, SciPy and
scikit-learn on L2-regularized logistic and softmax regression, in float64, single-threaded.

    python benchmarks/run_all.py                 # full run (~10 min), writes benchmarks/RESULTS.md
    python benchmarks/run_all.py --quick         # smoke run (~1 min), writes outputs/
    python benchmarks/run_all.py --problems synthetic softmax_digits --solvers LBFGS jaxopt.LBFGS

Every solver runs to |grad f(x)|_inf <= 1e-8 |grad f(0)|_inf, checked afterwards with one
common `jax.grad`. See harness.py for how compile and run times are taken.
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
from single_thread import PINNED_CPU, THREAD_ENV
# isort: on

import argparse
import datetime  # noqa: E402
import json  # noqa: E402
import os
import platform  # noqa: E402
import sys
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import anchors  # noqa: E402
import harness  # noqa: E402
import ours  # noqa: E402
import problems  # noqa: E402
import report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: only the synthetic problem, smaller (n=2000, d=100), "
                        "1 timed repeat (add --problems to run others)")
    p.add_argument("--problems", nargs="+", default=None, metavar="NAME",
                   help=f"subset of {', '.join(problems.PROBLEMS)}")
    p.add_argument("--solvers", nargs="+", default=None, metavar="NAME",
                   help="subset of solver names (jaxopt2 names such as LBFGS, NewtonCG, or "
                        "anchors such as jaxopt.LBFGS, 'scipy L-BFGS-B'); substring match")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steady-state runs per solver (default 3, quick 1)")
    p.add_argument("--budget", type=float, default=None,
                   help="wall seconds of timed calls allowed per solver; slower solvers get "
                        "fewer than --repeats calls (default 8, quick 3)")
    p.add_argument("--cpu", type=int, default=None,
                   help="pin the process to this core (default: the first allowed one)")
    p.add_argument("--no-pin", action="store_true", help="do not pin to one core")
    p.add_argument("--out", default=None,
                   help="markdown output (default benchmarks/RESULTS.md; quick: "
                        "outputs/RESULTS_quick.md); the raw results go to the same name with "
                        ".json under outputs/")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="do not run anything: re-write the markdown from a saved .json")
    p.add_argument("--notes", default=None, metavar="MD",
                   help="markdown file of hand-written observations to include")
    return p.parse_args(argv)


def selected(names, wanted):
    """Names matching each wanted item exactly (case-insensitive), else as a substring."""
    if not wanted:
        return list(names)
    keep = set()
    for w in wanted:
        exact = [n for n in names if n.lower() == w.lower()]
        keep.update(exact or [n for n in names if w.lower() in n.lower()])
    return [n for n in names if n in keep]


def warm_up():
    """Compile and run one tiny solve of each JAX family, so one-time costs (first tracing of
    common primitives, library start-up) are not charged to whichever solver runs first."""
    import jax.numpy as jnp
    import jaxopt
    import optimistix as optx

    import jaxopt2

    f = lambda p, a: jnp.sum((p["x"] - a) ** 2)
    p0, a = {"x": jnp.zeros(3)}, jnp.ones(3)
    jax.jit(lambda a: jaxopt2.minimize(f, p0, a, solver=jaxopt2.GradientDescent()).params)(a)
    jax.jit(lambda a: jaxopt.LBFGS(fun=f).run(p0, a).params)(a)
    jax.jit(lambda a: optx.minimise(f, optx.BFGS(rtol=1e-6, atol=1e-6), p0, a).value)(a)


def write(out, all_results, infos, meta, notes_path):
    notes = open(notes_path).read() if notes_path else None
    text = report.markdown(all_results, infos, meta, notes)
    if os.path.abspath(out) == harness.RESULTS_MD:
        harness.write_section("minimize", text)  # the other scripts own the other sections
        return
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        fh.write(text)


def render(args, out):
    with open(args.render) as fh:
        saved = json.load(fh)
    results = {k: [harness.Result(**r) for r in v] for k, v in saved["results"].items()}
    write(out, results, saved["problems"], saved["meta"], args.notes)
    print(f"wrote {os.path.relpath(out)} from {args.render}")


def main(argv=None):
    args = parse(argv)
    cfg = harness.Config(repeats=args.repeats or (1 if args.quick else 3),
                         budget_s=args.budget or (3.0 if args.quick else 8.0), quick=args.quick)
    out = args.out or (os.path.join(HERE, "..", "outputs", "RESULTS_quick.md") if args.quick
                       else os.path.join(HERE, "RESULTS.md"))
    if args.render:
        return render(args, out)
    raw = os.path.join(HERE, "..", "outputs",
                       os.path.splitext(os.path.basename(out))[0] + ".json")
    ours_available = ours.available()
    missing = [n for n in ours.VARIANTS if n not in ours_available]
    runners = {n: ("jaxopt2", ours.runner(n)) for n in ours_available}
    runners.update({n: ("anchor", r) for n, r in anchors.ANCHORS.items()})
    solver_names = (selected(runners, args.solvers) if args.solvers
                    else [n for n in runners if n not in ours.OPTIONAL])
    # The quick smoke run covers every solver on the small synthetic problem only: compiling
    # ~20 solvers takes most of a minute by itself.
    problem_names = selected(problems.PROBLEMS,
                             args.problems or (["synthetic"] if args.quick else None))
    if not solver_names or not problem_names:
        sys.exit(f"nothing selected: problems {problem_names}, solvers {solver_names}")

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    print(f"jaxopt2 solvers available: {', '.join(ours_available)}"
          + (f" (missing: {', '.join(missing)})" if missing else ""), flush=True)
    warm_up()
    all_results = {}
    infos = {}
    for pname in problem_names:
        t0 = time.perf_counter()
        problem = problems.build(pname, quick=args.quick)
        checker = harness.Checker(problem)
        costs = harness.eval_costs(problem)
        infos[pname] = dict(title=problem.title, n=problem.n, d=problem.d, cond=problem.cond,
                            null_dim=problem.null_dim, g0=checker.g0, costs=costs)
        print(f"\n== {problem.title}: {problem.d} parameters, Hessian cond at 0 = "
              f"{problem.cond:.3g}, |g0|_inf = {checker.g0:.3g}; per eval: f "
              f"{costs['fun'] * 1e3:.3f} ms, f+grad {costs['grad'] * 1e3:.3f} ms, HVP "
              f"{costs['hvp'] * 1e3:.3f} ms, Hessian {costs['hess'] * 1e3:.1f} ms (setup "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
        rows = []
        for sname in solver_names:
            family, run = runners[sname]
            t1 = time.perf_counter()
            res = harness.guarded(lambda: run(problem, checker, cfg), sname, family)  # noqa: B023
            res.solver = sname
            rows.append(res)
            print("  " + report.progress_line(res) + f"  [{time.perf_counter() - t1:.1f} s]",
                  flush=True)
        all_results[pname] = rows
    total = time.perf_counter() - t_start
    meta = machine_info(args, cfg, total, missing, load_start)
    write(out, all_results, infos, meta, args.notes)
    os.makedirs(os.path.dirname(os.path.abspath(raw)), exist_ok=True)
    with open(raw, "w") as fh:
        json.dump(dict(meta=meta, problems=infos,
                       results={k: [vars(r) for r in v] for k, v in all_results.items()}),
                  fh, indent=1, default=str)
    print(f"\nwrote {os.path.relpath(out)} and {os.path.relpath(raw)} (total {total:.0f} s)")
    print(report.targets_text(all_results, infos))


def machine_info(args, cfg, total, missing, load_start) -> dict:
    cpu = harness.cpu_name()
    from importlib.metadata import version

    return dict(
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        cpu=cpu, cores=os.cpu_count(), python=platform.python_version(),
        versions={k: version(m) for k, m in (("jax", "jax"), ("jaxlib", "jaxlib"),
                                             ("jaxopt", "jaxopt"), ("optimistix", "optimistix"),
                                             ("scipy", "scipy"), ("sklearn", "scikit-learn"))},
        load=dict(start=load_start, end=os.getloadavg()),
        threads={k: os.environ.get(k) for k in THREAD_ENV}, pinned_cpu=PINNED_CPU,
        quick=args.quick, repeats=cfg.repeats, budget_s=cfg.budget_s, total_s=total,
        missing=missing, command="python benchmarks/run_all.py " + " ".join(sys.argv[1:]),
    )


if __name__ == "__main__":
    main()
