"""Re-run of the minimization (`run_all.py`), Moré–Garbow–Hillstrom (`least_squares.py`) and
hypergradient (`hypergradient.py`) benchmarks with the jaxopt2 solvers only, before and after
the stopping-rule change of issue 13 (`jaxopt2/_stopping.py`, commit 8263548 and after).

    git worktree add --detach /tmp/bench_old 7d859f1      # the last commit before the change
    python benchmarks/stopping_rerun.py --old /tmp/bench_old              # all three, ~25 min
    python benchmarks/stopping_rerun.py --old /tmp/bench_old --benches mgh --tag rerun
    python benchmarks/stopping_rerun.py --table                # re-render from saved JSON lines
    python benchmarks/stopping_rerun.py --table --write-results      # ... into RESULTS.md

For each benchmark the driver starts two worker processes back to back, first with
`PYTHONPATH=<old checkout>` and then with `PYTHONPATH=<this checkout>`; each worker checks which
jaxopt2 it imported (`jaxopt2.__file__`), runs the benchmark's own problem definitions and
solver settings (`problems.py` + `ours.py`, `mgh.py` + `least_squares.py`, `hypergradient.py`)
with the jaxopt2 solvers only (the anchors do not change with jaxopt2's stopping rules), and
writes one JSON line per solver × problem to `outputs/stopping_rerun/<label>_<bench><tag>.jsonl`.
The driver then writes `outputs/stopping_rerun/stopping_rerun<tag>.md` (and, with
`--write-results`, the "stopping_rerun" section of RESULTS.md).

Timing is that of the benchmarks themselves: one thread, the process pinned to one core
(`single_thread.py`; `--cpu N` picks it), compile = trace + lower + XLA compile, run = median of
the compiled program's calls (`harness.py`); the hypergradient rows are timed interleaved, as in
`hypergradient.py`, by process CPU time. Step and evaluation counts are exact and do not depend
on the machine's load; times do.
"""

from __future__ import annotations

# isort: off
from single_thread import PINNED_CPU  # noqa: F401  (one thread, one core: before jax)
# isort: on

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
OUT_DIR = os.path.join(ROOT, "outputs", "stopping_rerun")
BENCHES = ("minimize", "mgh", "hyper")
MGH_SOLVERS = ("jaxopt2.LevenbergMarquardt", "jaxopt2.GaussNewton")


def emit(fh, row):
    fh.write(json.dumps(row, default=float) + "\n")
    fh.flush()
    print(json.dumps(row, default=float), flush=True)


# ------------------------------------------------------------------------------ workers


def worker_minimize(args, fh):
    import harness
    import ours
    import problems

    import jaxopt2

    cfg = harness.Config(repeats=args.repeats or 3, budget_s=8.0)
    import jax.numpy as jnp

    f = lambda p, a: jnp.sum((p["x"] - a) ** 2)  # noqa: E731
    p0, a = {"x": jnp.zeros(3)}, jnp.ones(3)
    import jax
    jax.jit(lambda a: jaxopt2.minimize(f, p0, a, solver=jaxopt2.GradientDescent()).params)(a)
    names = [n for n in ours.available() if n not in ours.OPTIONAL]
    if args.solvers:
        names = [n for n in names if n in args.solvers]
    wanted = [q for q in args.problems or () if q in problems.PROBLEMS]
    for pname in wanted or ([] if args.problems else problems.PROBLEMS):
        problem = problems.build(pname)
        checker = harness.Checker(problem)
        for sname in names:
            t0 = time.perf_counter()
            res = harness.guarded(lambda: ours.runner(sname)(problem, checker, cfg),  # noqa: B023
                                  sname, "jaxopt2")
            parts = res.compile_parts or {}
            emit(fh, dict(bench="minimize", problem=pname, solver=sname, status=res.status,
                          steps=res.iters, n_fun=res.n_fun, n_grad=res.n_grad, n_hvp=res.n_hvp,
                          n_hess=res.n_hess, rel_grad=res.rel_grad, reached=res.reached,
                          compile_s=res.compile_s, hlo_ops=parts.get("hlo_ops"),
                          run_s=res.run_s, run_cpu_s=res.run_cpu_s, runs=res.runs,
                          error=res.error, wall_total_s=time.perf_counter() - t0))


def worker_mgh(args, fh):
    import jax
    import jax.numpy as jnp
    import least_squares as ls
    import numpy as np
    from harness import Config, compile_jax, measure

    import jaxopt2

    def status_name(code):
        for name in jaxopt2.RESULTS._name_to_item:
            if getattr(jaxopt2.RESULTS, name)._value == code:
                return name
        return str(code)

    cfg = Config(repeats=args.repeats or 5, budget_s=5.0, long_s=1.0)
    ls.warm_up()
    wanted = [q for q in args.problems or () if q.isdigit()]
    solvers = [s for s in MGH_SOLVERS if not args.solvers or s in args.solvers]
    for p in ls.selected_problems(wanted) if wanted or not args.problems else []:
        half_ss = jax.jit(jax.grad(lambda x: 0.5 * jnp.sum(p.residual(x, None) ** 2)))  # noqa: B023
        g0 = float(np.max(np.abs(half_ss(jnp.asarray(p.x0)))))
        for sname in solvers:
            row = dict(bench="mgh", problem=f"{p.number} {p.name}", solver=sname)
            try:
                solve = ls.JAX_SOLVERS[sname](p)
                x0 = jnp.asarray(p.x0)
                compiled, row["compile_s"], parts = compile_jax(solve, x0)
                times = measure(lambda: compiled(x0), cfg)  # noqa: B023
                x, info = times.out
                info = {k: int(v) for k, v in info.items()}
                row.update(status=status_name(info.pop("code")), steps=info.get("num_steps"),
                           n_fun=info.get("num_fun"), n_jac=info.get("num_jac"),
                           n_jvp=info.get("num_jvp"), n_vjp=info.get("num_vjp"),
                           hlo_ops=parts.get("hlo_ops"), run_s=statistics.median(times.wall),
                           run_cpu_s=statistics.median(times.cpu), runs=len(times.wall))
                row["f"] = ls.sum_sq(p, x)
                row["cls"] = ls.classify(p, row["f"])
                g = float(np.max(np.abs(half_ss(jnp.asarray(x))))) if np.all(
                    np.isfinite(np.asarray(x))) else float("nan")
                row.update(grad_inf=g, rel_grad=g / g0 if g0 else float("nan"))
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                print(traceback.format_exc(limit=3))
                row.update(status="error", error=f"{type(e).__name__}: {e}"[:200])
            emit(fh, row)


def worker_hyper(args, fh):
    import harness
    import hypergradient as hg  # after jaxopt2: its sys.path insert must not shadow PYTHONPATH
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxopt2

    def method(kind, sname, solver, aname, make_adjoint):
        adjoint = make_adjoint()

        def solve(theta, data):
            w0 = jnp.zeros(theta.shape, theta.dtype)
            inner = lambda w, a: hg.inner_loss(w, jnp.exp(a[0]), a[1], kind)  # noqa: E731
            sol = jaxopt2.minimize(inner, w0, (theta, data), solver=solver, adjoint=adjoint,
                                   max_steps=hg.MAX_STEPS, throw=False)
            g = jax.grad(inner)(jax.lax.stop_gradient(sol.params),
                                jax.lax.stop_gradient((theta, data)))
            return sol.params, dict(steps=sol.stats["num_steps"], n_fun=sol.stats["num_fun"],
                                    n_grad=sol.stats["num_grad"], n_hvp=sol.stats["num_hvp"],
                                    code=sol.status._value, grad_inf=jnp.max(jnp.abs(g)))

        return f"{sname} + {aname}", solve

    n, d, n_val = args.n or 5000, args.d or 500, args.n_val or 1000
    repeats = args.repeats or 3
    wanted = [q for q in args.problems or () if q in ("ridge", "logistic")]
    for kind in wanted or ([] if args.problems else ("ridge", "logistic")):
        p = hg.build_problem(kind, n, d, n_val)
        print(f"{kind}: n={n} d={d} n_val={n_val}; reference: {p.ref_note}", flush=True)
        solvers = [("NewtonCG", jaxopt2.NewtonCG(rtol=hg.INNER_RTOL)),
                   ("NewtonCG(Jacobi-64)", jaxopt2.NewtonCG(
                       rtol=hg.INNER_RTOL, preconditioner=hg.jacobi_preconditioner())),
                   ("Newton", jaxopt2.Newton(rtol=hg.INNER_RTOL))]
        entries = []
        for sname, solver in solvers:
            for aname, make in hg.JAXOPT2_ADJOINTS:
                if sname != "NewtonCG" and "CG 1e-12" in aname:
                    continue  # as in hypergradient.methods_for
                if args.solvers and not any(s in f"{sname} + {aname}" for s in args.solvers):
                    continue
                name, solve = method(kind, sname, solver, aname, make)
                row = dict(bench="hyper", problem=f"{kind} (n={n}, d={d})", solver=name,
                           fwd=[], fb=[], fb_wall=[])
                try:
                    loss, vg = hg.hyper_fns(solve, kind)
                    targs = (p.theta, p.data)
                    fwd, row["fwd_compile_s"], _ = harness.compile_jax(loss, *targs)
                    fb, row["compile_s"], parts = harness.compile_jax(vg, *targs)
                    row["hlo_ops"] = parts.get("hlo_ops")
                    jax.block_until_ready(fwd(*targs))
                    (L, info), g = jax.block_until_ready(fb(*targs))
                    g = np.asarray(g)
                    info = {k: float(v) for k, v in info.items()}
                    code = int(info.pop("code"))
                    status = next((k for k in jaxopt2.RESULTS._name_to_item
                                   if getattr(jaxopt2.RESULTS, k)._value == code), str(code))
                    row.update(status=status, steps=int(info["steps"]),
                               n_fun=int(info["n_fun"]), n_grad=int(info["n_grad"]),
                               n_hvp=int(info["n_hvp"]), grad_inf=info["grad_inf"],
                               rel_err=float(np.linalg.norm(g - p.g_ref)
                                             / np.linalg.norm(p.g_ref)))
                    entries.append((row, (lambda c=fwd, t=targs: c(*t)),
                                    (lambda c=fb, t=targs: c(*t))))
                    print(f"  {name}: {row['steps']} steps, rel err {row['rel_err']:.1e}",
                          flush=True)
                except Exception as e:  # noqa: BLE001 - reported, not hidden
                    print(traceback.format_exc(limit=4))
                    row.update(status="error", error=f"{type(e).__name__}: {e}"[:200])
                    entries.append((row, None, None))
        for r in range(repeats):  # interleaved rounds, as hypergradient.run_problem
            for row, fwd, fb in entries:
                if fwd is None or (r > 0 and sum(row["fwd"]) + sum(row["fb_wall"]) > 30.0):
                    continue
                row["fwd"].append(harness.timed(fwd).cpu)
                t = harness.timed(fb)
                row["fb"].append(t.cpu)
                row["fb_wall"].append(t.wall)
        for row, _, _ in entries:
            med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
            row.update(fwd_cpu_s=med(row["fwd"]), run_cpu_s=med(row["fb"]),
                       run_s=med(row["fb_wall"]), runs=len(row["fb"]))
            row["bwd_cpu_s"] = row["run_cpu_s"] - row["fwd_cpu_s"]
            emit(fh, row)


def worker(args):
    import jaxopt2

    path = os.path.abspath(jaxopt2.__file__)
    if args.expect and not path.startswith(os.path.abspath(args.expect) + os.sep):
        sys.exit(f"imported {path}, expected a jaxopt2 under {args.expect}")
    print(f"[{args.label}] jaxopt2 from {path}", flush=True)
    import jax

    jax.config.update("jax_enable_x64", True)
    os.makedirs(OUT_DIR, exist_ok=True)
    out = os.path.join(OUT_DIR, f"{args.label}_{args.worker}{args.tag}.jsonl")
    root = os.path.dirname(os.path.dirname(path))
    git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    with open(out, "w") as fh:
        emit(fh, dict(meta=True, label=args.label, jaxopt2=path, cpu=PINNED_CPU,
                      commit=git("rev-parse", "--short", "HEAD"),
                      dirty=git("status", "--short", "--", "jaxopt2").splitlines(),
                      load_start=os.getloadavg(), argv=sys.argv[1:]))
        t0 = time.perf_counter()
        {"minimize": worker_minimize, "mgh": worker_mgh, "hyper": worker_hyper}[args.worker](
            args, fh)
        emit(fh, dict(meta=True, end=True, total_s=time.perf_counter() - t0,
                      load_end=os.getloadavg()))


# ------------------------------------------------------------------------------- driver


def load(label, bench, tag):
    path = os.path.join(OUT_DIR, f"{label}_{bench}{tag}.jsonl")
    if not os.path.exists(path):
        return None, {}
    meta, rows = {}, {}
    for line in open(path):
        r = json.loads(line)
        if r.get("meta"):
            meta.update(r)
        else:
            rows[(r["problem"], r["solver"])] = r
    return meta, rows


def _g(x, spec=".3g"):
    return "—" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def _ratio(a, b):
    if a is None or b is None or not a or a != a or b != b:
        return None
    return b / a


def _cell(a, b, spec="d", flag=True):
    """'a → b', bold when b is more than 10% above a."""
    if a is None and b is None:
        return "—"
    if a == b:
        return _g(a, spec)
    r = _ratio(a, b)
    s = f"{_g(a, spec)} → {_g(b, spec)}"
    return f"**{s}**" if flag and r is not None and r > 1.1 else s


def _tcell(a, b):
    """time 'a → b (r×)', bold ratio when above 1.1."""
    r = _ratio(a, b)
    if r is None:
        return f"{_g(a)} → {_g(b)}"
    rs = f"{r:.2f}×"
    return f"{_g(a)} → {_g(b)} ({'**' + rs + '**' if r > 1.1 else rs})"


def table_minimize(old, new):
    lines = ["| problem | solver | status old → new | steps | f evals | grad evals | HVPs | "
             "‖∇f‖∞/‖∇f₀‖∞ | HLO ops | compile s | run s (wall) | run CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, b in new.items():
        a = old.get(key)
        if a is None:
            continue
        lines.append(
            f"| {key[0]} | {key[1]} | {a['status']} → {b['status']} | "
            f"{_cell(a['steps'], b['steps'])} | {_cell(a['n_fun'], b['n_fun'])} | "
            f"{_cell(a['n_grad'], b['n_grad'])} | {_cell(a['n_hvp'], b['n_hvp'])} | "
            f"{_g(a['rel_grad'], '.1e')} → {_g(b['rel_grad'], '.1e')} | "
            f"{_cell(a['hlo_ops'], b['hlo_ops'], flag=False)} | "
            f"{_tcell(a['compile_s'], b['compile_s'])} | {_tcell(a['run_s'], b['run_s'])} | "
            f"{_tcell(a['run_cpu_s'], b['run_cpu_s'])} |")
    return "\n".join(lines)


def table_mgh(old, new):
    lines = ["| problem | solver | status old → new | class | steps | residual evals | "
             "Jacobians | ‖Jᵀr‖∞/‖Jᵀr₀‖∞ | compile s | run ms (wall) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    same, n, tot = 0, 0, {"old": [0, 0, 0.0, 0.0], "new": [0, 0, 0.0, 0.0]}
    cls_change = []
    for key, b in new.items():
        a = old.get(key)
        if a is None or "error" in a or "error" in b:
            continue
        n += 1
        for lab, r in (("old", a), ("new", b)):
            t = tot[lab]
            t[0] += r["steps"] or 0
            t[1] += (r["n_fun"] or 0)
            t[2] += r["run_s"] or 0.0
            t[3] += r["compile_s"] or 0.0
        if a["cls"] != b["cls"]:
            cls_change.append(f"{key[0]} ({key[1]}): {a['cls']} → {b['cls']}")
        identical = all(a[k] == b[k] for k in ("steps", "n_fun", "n_jac", "status", "cls"))
        if identical:
            same += 1
            continue
        lines.append(
            f"| {key[0]} | {key[1].replace('jaxopt2.', '')} | {a['status']} → {b['status']} | "
            f"{a['cls']} → {b['cls']} | {_cell(a['steps'], b['steps'])} | "
            f"{_cell(a['n_fun'], b['n_fun'])} | {_cell(a['n_jac'], b['n_jac'])} | "
            f"{_g(a['rel_grad'], '.1e')} → {_g(b['rel_grad'], '.1e')} | "
            f"{_tcell(a['compile_s'], b['compile_s'])} | "
            f"{_tcell(a['run_s'] * 1e3, b['run_s'] * 1e3)} |")
    run_ratios = [b["run_s"] / old[k]["run_s"] for k, b in new.items()
                  if k in old and b.get("run_s") and old[k].get("run_s")]
    comp_ratios = [b["compile_s"] / old[k]["compile_s"] for k, b in new.items()
                   if k in old and b.get("compile_s") and old[k].get("compile_s")]
    o, w = tot["old"], tot["new"]
    head = (f"{n} solver × problem pairs; {same} identical in status, class, steps, residual "
            f"evaluations and Jacobians (not listed below). Totals old → new: steps {o[0]} → "
            f"{w[0]}, residual evaluations {o[1]} → {w[1]}, run time {o[2]:.3f} → {w[2]:.3f} s, "
            f"compile time {o[3]:.0f} → {w[3]:.0f} s. Median per-pair ratio new/old: run "
            f"{statistics.median(run_ratios):.2f}×, compile {statistics.median(comp_ratios):.2f}×."
            + (" Class changes: " + "; ".join(cls_change) + "." if cls_change
               else " No class (solved/local/failed) changed."))
    return head + ("\n\n" + "\n".join(lines) if len(lines) > 2 else "")


def table_hyper(old, new):
    lines = ["| problem | method | status old → new | inner steps | grad evals | HVPs | "
             "inner ‖∇f‖∞ | rel err dL/dθ | HLO ops (fwd+bwd) | compile s (fwd+bwd) | fwd CPU s | "
             "fwd+bwd CPU s | bwd CPU s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, b in new.items():
        a = old.get(key)
        if a is None or "error" in a or "error" in b:
            continue
        lines.append(
            f"| {key[0]} | {key[1]} | {a['status']} → {b['status']} | "
            f"{_cell(a['steps'], b['steps'])} | {_cell(a['n_grad'], b['n_grad'])} | "
            f"{_cell(a['n_hvp'], b['n_hvp'])} | {_g(a['grad_inf'], '.1e')} → "
            f"{_g(b['grad_inf'], '.1e')} | {_g(a['rel_err'], '.1e')} → {_g(b['rel_err'], '.1e')} | "
            f"{_cell(a['hlo_ops'], b['hlo_ops'], flag=False)} | "
            f"{_tcell(a['compile_s'], b['compile_s'])} | "
            f"{_tcell(a['fwd_cpu_s'], b['fwd_cpu_s'])} | "
            f"{_tcell(a['run_cpu_s'], b['run_cpu_s'])} | "
            f"{_tcell(a['bwd_cpu_s'], b['bwd_cpu_s'])} |")
    return "\n".join(lines)


TITLES = {"minimize": "Minimization, logistic and softmax regression (`run_all.py` problems "
                      "and solver settings, rtol = 1e-8)",
          "mgh": "Moré–Garbow–Hillstrom least squares (`least_squares.py` settings)",
          "hyper": "Hypergradients (`hypergradient.py`, jaxopt2 rows)"}


def render_text(tag, level="###"):
    parts = []
    for bench in BENCHES:
        mo, old = load("old", bench, tag)
        mn, new = load("new", bench, tag)
        if not old or not new:
            continue
        fn = {"minimize": table_minimize, "mgh": table_mgh, "hyper": table_hyper}[bench]
        runs = "; ".join(
            f"{lab}: jaxopt2 from `{os.path.dirname(m.get('jaxopt2', '?'))}`"
            + (f" (commit {m['commit']}" + (", with uncommitted changes in "
                                            + ", ".join(d.split()[-1] for d in m["dirty"])
                                            if m.get("dirty") else "") + ")"
               if m.get("commit") else "")
            + f", {m.get('total_s', float('nan')):.0f} s, load "
            f"{'/'.join(f'{x:.1f}' for x in m.get('load_start', []))} → "
            f"{'/'.join(f'{x:.1f}' for x in m.get('load_end', []))}"
            for lab, m in (("old", mo), ("new", mn)))
        parts.append(f"{level} {TITLES[bench]}{' — ' + tag.strip('_') if tag else ''}\n\n"
                     f"{runs}. Bold: new more than 10% above old.\n\n" + fn(old, new))
    return "\n\n".join(parts)


HEADING = "## Stopping-rule change: benchmark re-run (issue 13)"


def render(tags, write_results=False):
    texts = [t for t in (render_text(tag) for tag in tags) if t]
    text = "\n\n".join(texts)
    os.makedirs(OUT_DIR, exist_ok=True)
    out = os.path.join(OUT_DIR, f"stopping_rerun{'_'.join(t for t in tags if t)}.md")
    with open(out, "w") as fh:
        fh.write(text + "\n")
    print(text)
    print(f"\nwrote {os.path.relpath(out)}")
    if write_results:
        from harness import write_section

        intro = (f"{HEADING}\n\nGenerated by `python benchmarks/stopping_rerun.py --table "
                 f"--tags {' '.join(repr(t) for t in tags)} --write-results` from the JSON lines "
                 "of the runs (`outputs/stopping_rerun/`); old = commit 7d859f1 (the last before "
                 "`_stopping.py`), new = main. The hand-written observations follow the "
                 "tables.\n\n")
        write_section("stopping_rerun", intro + text)
        print("updated the stopping_rerun section of benchmarks/RESULTS.md")


def drive(args):
    passthrough = []
    for flag in ("problems", "solvers"):
        if getattr(args, flag):
            passthrough += [f"--{flag}", *getattr(args, flag)]
    for flag in ("repeats", "n", "d", "n_val"):
        if getattr(args, flag):
            passthrough += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.cpu is not None:
        passthrough += ["--cpu", str(args.cpu)]
    for bench in args.benches:
        for label, root in (("old", args.old), ("new", args.new)):
            if label not in args.labels:
                continue
            env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", bench, "--label", label,
                   "--expect", os.path.abspath(root), "--tag", args.tag, *passthrough]
            print(f"\n=== {bench} [{label}] PYTHONPATH={root}", flush=True)
            t0 = time.perf_counter()
            try:
                subprocess.run(cmd, env=env, cwd=HERE, check=False, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{bench} [{label}] timed out after {args.timeout} s", flush=True)
            print(f"=== {bench} [{label}] {time.perf_counter() - t0:.0f} s", flush=True)
    render([args.tag], args.write_results)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default="/tmp/bench_old", help="checkout of the old version")
    p.add_argument("--new", default=ROOT, help="checkout of the new version (default: this one)")
    p.add_argument("--benches", nargs="+", default=list(BENCHES), choices=BENCHES)
    p.add_argument("--labels", nargs="+", default=["old", "new"])
    p.add_argument("--problems", nargs="+", default=None,
                   help="problem subset (names for minimize/hyper, numbers or names for mgh)")
    p.add_argument("--solvers", nargs="+", default=None, help="solver subset (exact names)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--n", type=int, default=None, help="hypergradient n (default 5000)")
    p.add_argument("--d", type=int, default=None, help="hypergradient d (default 500)")
    p.add_argument("--n-val", type=int, default=None, help="hypergradient n_val (default 1000)")
    p.add_argument("--tag", default="", help="suffix of the output files (e.g. a re-run)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    p.add_argument("--table", action="store_true", help="only re-render from saved JSON")
    p.add_argument("--tags", nargs="+", default=None,
                   help="with --table: the run tags to render, in order (default: --tag)")
    p.add_argument("--write-results", action="store_true",
                   help="also write the stopping_rerun section of RESULTS.md")
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--worker", choices=BENCHES, help=argparse.SUPPRESS)
    p.add_argument("--label", default="new", help=argparse.SUPPRESS)
    p.add_argument("--expect", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
    elif args.table:
        render(args.tags if args.tags is not None else [args.tag], args.write_results)
    else:
        drive(args)


if __name__ == "__main__":
    main()
