"""General constrained problems: AugmentedLagrangian, DenseSQP and SketchedSQP against SciPy
(SLSQP, trust-constr) and IPOPT (through casadi), float64, single-threaded
(`single_thread.py`), side by side in one process.

    python benchmarks/constrained.py            # writes its RESULTS.md section
    python benchmarks/constrained.py --quick    # a few HS problems, a small logistic problem

Problems:

- **Hock–Schittkowski** problems 6 … 100 of `tests/hock_schittkowski.py` from their published
  starts. Solved = the solver reports success and |f − f*| ≤ 1e-6·max(1, |f*|) with the largest
  constraint violation ≤ 1e-6. Our solvers: one jitted solve per problem, compile time apart
  from run time (median of 3 calls). SLSQP (`ftol=1e-12`) and trust-constr (`gtol=xtol=1e-10`)
  get jitted JAX callbacks for values, gradients and Jacobians (trust-constr also the Hessian of
  the objective and, for the constraints, its BFGS default). IPOPT 3.14 via casadi (`tol=1e-8`)
  differentiates its own symbolic copy of each problem (the same code evaluated on casadi
  symbols), exact Hessians of the Lagrangian; its time is one `solver(...)` call (median of 3),
  its symbolic set-up excluded like our compile time.
- **Equality-constrained logistic regression**: X (n × d) Gaussian with log-spaced column
  scales, labels from a random w; f(w) = mean logistic loss + (1e-4/2)‖w‖²; constraints
  A w = A w₀ (`linear` random rows) and ‖w_{Sᵢ}‖² = ‖w₀_{Sᵢ}‖² over `quadratic` disjoint blocks
  Sᵢ, feasible at a random w₀. Target: KKT residual ≤ 1e-8, measured for every method by one
  jitted function on x alone (`kkt_of`: least-squares multipliers λ = argmin ‖∇f + Jᵀλ‖, then
  max(‖∇f + Jᵀλ‖∞, ‖c‖∞)). The issue's size (n = 50,000, d = 1,000, 100 constraints) needs
  n·d² = 5e10 flops per Hessian on one core and trust-constr takes minutes there; the default
  here is n = 10,000, d = 200, 20 linear + 5 quadratic constraints (`--n --d --linear
  --quadratic` to change it).
"""

from __future__ import annotations

# isort: off
from single_thread import PINNED_CPU
# isort: on

import argparse
import math
import os
import platform
import statistics
import sys
import time
import types

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from harness import compile_jax, cpu_name, write_section  # noqa: E402
from scipy.optimize import NonlinearConstraint, minimize  # noqa: E402

import jaxopt2  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import hock_schittkowski as hs  # noqa: E402

F_RTOL, FEAS = 1e-6, 1e-6


def _median_time(call, repeats=3):
    out, walls = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(call())
        walls.append(time.perf_counter() - t0)
    return out, statistics.median(walls)


def _violation(p, x):
    x = jnp.asarray(x)
    v = 0.0
    if p.eq is not None:
        v = max(v, float(jnp.max(jnp.abs(p.eq(x, None)))))
    if p.ineq is not None:
        v = max(v, float(jnp.max(jnp.maximum(p.ineq(x, None), 0.0))))
    if p.bounds is not None:
        lo, hi = np.asarray(p.bounds[0]), np.asarray(p.bounds[1])
        v = max(v, float(np.max(np.maximum(lo - x, 0))), float(np.max(np.maximum(x - hi, 0))))
    return v


def _solved(p, f, x, ok):
    return bool(ok) and abs(f - p.f_star) <= F_RTOL * max(1.0, abs(p.f_star)) and \
        _violation(p, x) <= FEAS


# ------------------------------------------------------------------------------- ours


def run_ours(p, solver):
    bounds = None if p.bounds is None else (jnp.asarray(p.bounds[0]), jnp.asarray(p.bounds[1]))

    def solve(x0):
        sol = jaxopt2.minimize_constrained(p.fun, x0, eq=p.eq, ineq=p.ineq, bounds=bounds,
                                           solver=solver, throw=False, max_steps=200)
        return sol.params, sol.value, sol.status.code, sol.stats["num_steps"]

    x0 = jnp.asarray(p.x0)
    compiled, compile_s, _ = compile_jax(solve, x0)
    (x, f, code, steps), run_s = _median_time(lambda: compiled(x0))
    ok = int(code) == int(jaxopt2.RESULTS.successful._value)
    return dict(solved=_solved(p, float(f), x, ok), f=float(f), run=run_s, compile=compile_s,
                steps=int(steps), status=jaxopt2.status_name(int(code)))


# ------------------------------------------------------------------------------- SciPy


def _scipy_parts(p):
    f = jax.jit(lambda x: p.fun(x, None))
    g = jax.jit(jax.grad(lambda x: p.fun(x, None)))
    h = jax.jit(jax.hessian(lambda x: p.fun(x, None)))
    parts = dict(fun=lambda x: float(f(x)), jac=lambda x: np.asarray(g(x)),
                 hess=lambda x: np.asarray(h(x)), cons=[], nl=[])
    for kind, fn in (("eq", p.eq), ("ineq", p.ineq)):
        if fn is None:
            continue
        c = jax.jit(lambda x, fn=fn: fn(x, None))
        J = jax.jit(jax.jacfwd(lambda x, fn=fn: fn(x, None)))
        sign = 1.0 if kind == "eq" else -1.0  # SciPy's inequalities are ≥ 0
        parts["cons"].append(dict(type=kind, fun=lambda x, c=c, s=sign: s * np.asarray(c(x)),
                                  jac=lambda x, J=J, s=sign: s * np.asarray(J(x))))
        lo = 0.0 if kind == "eq" else -np.inf
        parts["nl"].append(NonlinearConstraint(lambda x, c=c: np.asarray(c(x)), lo, 0.0,
                                               jac=lambda x, J=J: np.asarray(J(x))))
    return parts


def run_scipy(p, method):
    parts = _scipy_parts(p)
    x0 = np.asarray(p.x0)
    bounds = None if p.bounds is None else list(zip(*p.bounds, strict=True))
    # Compile the callbacks before timing.
    parts["fun"](x0), parts["jac"](x0), parts["hess"](x0)
    for c in parts["cons"]:
        c["fun"](x0), c["jac"](x0)

    def call():
        if method == "SLSQP":
            return minimize(parts["fun"], x0, jac=parts["jac"], method="SLSQP",
                            constraints=parts["cons"], bounds=bounds,
                            options=dict(ftol=1e-12, maxiter=500))
        return minimize(parts["fun"], x0, jac=parts["jac"], hess=parts["hess"],
                        method="trust-constr", constraints=parts["nl"], bounds=bounds,
                        options=dict(gtol=1e-10, xtol=1e-10, maxiter=3000))

    res, run_s = _median_time(call)
    return dict(solved=_solved(p, float(res.fun), res.x, res.success), f=float(res.fun),
                run=run_s, compile=None, steps=int(getattr(res, "nit", 0) or 0),
                status=str(res.status))


# ------------------------------------------------------------------------------- IPOPT


def _casadi_module(casadi):
    """tests/hock_schittkowski.py with `jnp` bound to a casadi shim, so that the same code
    builds casadi expressions."""
    shim = types.SimpleNamespace(
        stack=lambda parts: casadi.vertcat(*parts), sin=casadi.sin, cos=casadi.cos,
        log=casadi.log, pi=math.pi, sum=lambda v: casadi.sum1(v))
    module = types.ModuleType("hs_casadi")
    module.__dict__["__name__"] = "hs_casadi"
    source = open(hs.__file__).read()
    exec(compile(source, hs.__file__, "exec"), module.__dict__)  # noqa: S102
    module.jnp = shim
    return module


def run_ipopt(p, casadi, module):
    q = module.PROBLEMS[p.number]
    n = len(q.x0)
    X = casadi.SX.sym("x", n)
    g, lbg, ubg = [], [], []
    if q.eq is not None:
        e = q.eq(X, None)
        g.append(e), lbg.extend([0.0] * e.shape[0]), ubg.extend([0.0] * e.shape[0])
    if q.ineq is not None:
        c = q.ineq(X, None)
        g.append(c), lbg.extend([-np.inf] * c.shape[0]), ubg.extend([0.0] * c.shape[0])
    nlp = dict(x=X, f=q.fun(X, None), g=casadi.vertcat(*g))
    opts = {"ipopt.print_level": 0, "print_time": 0, "ipopt.tol": 1e-8,
            "ipopt.max_iter": 3000}
    solver = casadi.nlpsol("s", "ipopt", nlp, opts)
    lbx = [-np.inf] * n if q.bounds is None else list(q.bounds[0])
    ubx = [np.inf] * n if q.bounds is None else list(q.bounds[1])

    def call():
        return solver(x0=list(q.x0), lbg=lbg, ubg=ubg, lbx=lbx, ubx=ubx)

    out, run_s = _median_time(call)
    stats = solver.stats()
    x = np.asarray(out["x"]).ravel()
    f = float(out["f"])
    return dict(solved=_solved(p, f, x, stats["success"]), f=f, run=run_s, compile=None,
                steps=int(stats.get("iter_count", 0)), status=stats["return_status"])


# ------------------------------------------------------------------------------- logistic


def logistic_problem(n, d, linear, quadratic, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.logspace(0, -1, d)
    w_true = rng.standard_normal(d)
    y = (X @ w_true + 0.5 * rng.standard_normal(n) > 0).astype(np.float64)
    w0 = 0.3 * rng.standard_normal(d)
    A = rng.standard_normal((linear, d)) / np.sqrt(d)
    blocks = np.array_split(rng.permutation(d), quadratic)
    S = np.zeros((quadratic, d))
    for i, b in enumerate(blocks):
        S[i, b] = 1.0
    data = dict(X=jnp.asarray(X), y=jnp.asarray(y), A=jnp.asarray(A), b=jnp.asarray(A @ w0),
                S=jnp.asarray(S), r=jnp.asarray(S @ w0**2))
    return data


def logistic_fun(w, data):
    z = data["X"] @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - data["y"] * z) + 0.5e-4 * (w @ w)


def logistic_eq(w, data):
    return jnp.concatenate([data["A"] @ w - data["b"], data["S"] @ w**2 - data["r"]])


@jax.jit
def kkt_of(w, data):
    g = jax.grad(logistic_fun)(w, data)
    J = jax.jacfwd(logistic_eq)(w, data)
    lam = jnp.linalg.lstsq(J.T, -g)[0]
    return jnp.maximum(jnp.max(jnp.abs(g + J.T @ lam)), jnp.max(jnp.abs(logistic_eq(w, data))))


def _timed_runs(call, repeats=2):
    """(output, median wall s, median process CPU s); one run only when it takes > 20 s."""
    out, walls, cpus = None, [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(call())
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if walls[-1] > 20:
            break
    return out, statistics.median(walls), statistics.median(cpus)


def logistic_sqrt_hessian(w, data):
    """∇²f = BᵀB + R for `logistic_fun`: B = diag(√(p(1 − p)/n)) X, R = 1e-4·I."""
    p = jax.nn.sigmoid(data["X"] @ w)
    return jnp.sqrt(p * (1 - p) / data["X"].shape[0])[:, None] * data["X"], 1e-4


LOGISTIC_SOLVERS = {
    "DenseSQP": lambda: jaxopt2.DenseSQP(rtol=1e-9),
    "DenseSQP (sqrt_hessian)": lambda: jaxopt2.DenseSQP(
        rtol=1e-9, sqrt_hessian=logistic_sqrt_hessian),
    "SketchedSQP": lambda: jaxopt2.SketchedSQP(rtol=1e-9),
    "SketchedSQP (sqrt_hessian)": lambda: jaxopt2.SketchedSQP(
        rtol=1e-9, sqrt_hessian=logistic_sqrt_hessian),
    "SketchedSQP (sqrt_hessian; hessian_every=3)": lambda: jaxopt2.SketchedSQP(
        rtol=1e-9, sqrt_hessian=logistic_sqrt_hessian, hessian_every=3),
    "SketchedSQP (sqrt_hessian; hessian_every=3; sketch_size=128)": lambda: jaxopt2.SketchedSQP(
        rtol=1e-9, sqrt_hessian=logistic_sqrt_hessian, hessian_every=3, sketch_size=128),
    "DenseSQP (sqrt_hessian; hessian_every=3)": lambda: jaxopt2.DenseSQP(
        rtol=1e-9, sqrt_hessian=logistic_sqrt_hessian, hessian_every=3),
    "SketchedSQP, Gaussian sketches": lambda: jaxopt2.SketchedSQP(rtol=1e-9, sketch="gaussian"),
    "SketchedSQP, unscaled Gaussian (before)": lambda: jaxopt2.SketchedSQP(
        rtol=1e-9, sketch="gaussian", precondition=False),
    "AugmentedLagrangian": lambda: jaxopt2.AugmentedLagrangian(rtol=1e-9),
}


def run_logistic(args):
    data = logistic_problem(args.n, args.d, args.linear, args.quadratic)
    w0 = jnp.zeros(args.d)
    rows = []
    names = list(LOGISTIC_SOLVERS) if args.solvers is None else args.solvers.split(",")
    for name in names:
        solver = LOGISTIC_SOLVERS[name]()

        def solve(w0, data, solver=solver):
            sol = jaxopt2.minimize_constrained(logistic_fun, w0, data, eq=logistic_eq,
                                               solver=solver, throw=False, max_steps=200)
            return (sol.params, sol.status.code, sol.stats["num_steps"],
                    sol.stats.get("num_sketch_steps", jnp.zeros((), jnp.int32)),
                    sol.stats.get("num_hessians", sol.stats["num_steps"]))
        try:
            compiled, compile_s, _ = compile_jax(solve, w0, data)
            (w, code, steps, proj, hessians), run_s, cpu_s = _timed_runs(
                lambda c=compiled: c(w0, data))
            # the steps, and the Hessians formed where fewer (`hessian_every`)
            steps = (int(steps) if int(hessians) == int(steps)
                     else f"{int(steps)} ({int(hessians)} Hessians)")
            rows.append((name, float(kkt_of(w, data)), run_s, cpu_s, compile_s, steps,
                         int(proj) if "Sketched" in name else None,
                         jaxopt2.status_name(int(code))))
        except Exception as e:  # noqa: BLE001
            rows.append((name, float("nan"), float("nan"), float("nan"), None, 0, None,
                         f"error {e!r}"[:80]))
        print(rows[-1], flush=True)
    # trust-constr with exact objective Hessian-vector products, constraint Jacobians.
    f = jax.jit(lambda w: logistic_fun(w, data))
    g = jax.jit(jax.grad(lambda w: logistic_fun(w, data)))
    hvp = jax.jit(lambda w, v: jax.jvp(jax.grad(lambda u: logistic_fun(u, data)), (w,), (v,))[1])
    c = jax.jit(lambda w: logistic_eq(w, data))
    J = jax.jit(jax.jacfwd(lambda w: logistic_eq(w, data)))
    x0 = np.zeros(args.d)
    f(x0), g(x0), hvp(x0, x0), c(x0), J(x0)
    con = NonlinearConstraint(lambda w: np.asarray(c(w)), 0.0, 0.0,
                              jac=lambda w: np.asarray(J(w)))
    for gtol in (1e-8, 1e-10):
        t0, c0 = time.perf_counter(), time.process_time()
        res = minimize(lambda w: float(f(w)), x0, jac=lambda w: np.asarray(g(w)),
                       hessp=lambda w, v: np.asarray(hvp(w, np.asarray(v, np.float64))),
                       method="trust-constr",
                       constraints=[con], options=dict(gtol=gtol, xtol=1e-14, maxiter=2000))
        run_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        kkt = float(kkt_of(jnp.asarray(res.x), data))
        rows.append((f"scipy trust-constr (gtol={gtol:g})", kkt, run_s, cpu_s, None,
                     int(res.nit), None, str(res.status)))
        print(rows[-1], flush=True)
        if kkt <= 1e-8:
            break
    return rows


def logistic_table(rows):
    """The rows with their wall and CPU ratios to the trust-constr run that met the target."""
    ref = next((r for r in reversed(rows) if r[0].startswith("scipy") and r[1] <= 1e-8),
               rows[-1])
    lines = ["| method | KKT residual | run (s) | CPU (s) | ×trust-constr wall / CPU | "
             "compile (s) | steps | projections | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, kkt, run_s, cpu_s, comp, steps, proj, status in rows:
        comp_s = "" if comp is None else f"{comp:.1f}"
        proj_s = "" if proj is None else str(proj)
        ratio = f"{run_s / ref[2]:.2f} / {cpu_s / ref[3]:.2f}"
        lines.append(f"| {name} | {kkt:.1e} | {run_s:.2f} | {cpu_s:.2f} | {ratio} | {comp_s} | "
                     f"{steps} | {proj_s} | {status} |")
    return lines


# ------------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="hs,logistic")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=200)
    parser.add_argument("--linear", type=int, default=20)
    parser.add_argument("--quadratic", type=int, default=5)
    parser.add_argument("--solvers", default=None,
                        help="comma-separated names of LOGISTIC_SOLVERS (default: all)")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section without writing RESULTS.md")
    parser.add_argument("--cpu", type=int, default=None)   # read by single_thread.py
    parser.add_argument("--no-pin", action="store_true")   # read by single_thread.py
    args = parser.parse_args()
    if args.quick:
        args.n, args.d, args.linear, args.quadratic = 2000, 50, 8, 2
    numbers = [6, 14, 40, 71] if args.quick else sorted(hs.PROBLEMS)
    load0 = os.getloadavg()[0]
    lines = []
    try:
        import casadi
        module = _casadi_module(casadi)
        ipopt_version = casadi.__version__
    except ImportError:
        casadi = module = ipopt_version = None
    if "hs" in args.only:
        methods = ["AugmentedLagrangian", "DenseSQP", "SketchedSQP", "SLSQP", "trust-constr",
                   "IPOPT"]
        table = {}
        for k in numbers:
            p = hs.PROBLEMS[k]
            eq_only = p.ineq is None and p.bounds is None
            for m in methods:
                if m in ("DenseSQP", "SketchedSQP") and not eq_only:
                    continue
                try:
                    if m == "AugmentedLagrangian":
                        r = run_ours(p, jaxopt2.AugmentedLagrangian())
                    elif m == "DenseSQP":
                        r = run_ours(p, jaxopt2.DenseSQP())
                    elif m == "SketchedSQP":
                        r = run_ours(p, jaxopt2.SketchedSQP())
                    elif m == "IPOPT":
                        if casadi is None:
                            continue
                        r = run_ipopt(p, casadi, module)
                    else:
                        r = run_scipy(p, m)
                except Exception as e:  # noqa: BLE001
                    r = dict(solved=False, f=float("nan"), run=float("nan"), compile=None,
                             steps=0, status=f"error {type(e).__name__}: {str(e)[:60]}")
                table[(k, m)] = r
                print(k, m, r, flush=True)
        lines += hs_table(table, numbers, methods)
    if "logistic" in args.only:
        rows = run_logistic(args)
        lines += ["", f"**Equality-constrained logistic regression** (n = {args.n}, d = "
                      f"{args.d}, {args.linear} linear + {args.quadratic} quadratic "
                      "constraints; target KKT residual ≤ 1e-8 by the common check; run: "
                      "median of 2 (1 when over 20 s), wall and process CPU time; "
                      "projections: sketch-and-project steps, all KKT solves together):", ""]
        lines += logistic_table(rows)
    load = os.getloadavg()[0]
    header = [
        f"Machine: {cpu_name()}, one core (pinned to CPU {PINNED_CPU}), shared with other "
        f"jobs while measured (1-minute load average {load0:.1f} at the start, {load:.1f} at "
        "the end, on 2 cores: wall times are inflated and noisy; the CPU column is this "
        "process's CPU time; compare ratios within a row). "
        f"Python {platform.python_version()}, jax {jax.__version__}, scipy {scipy.__version__}"
        + (f", casadi {ipopt_version} (IPOPT)" if ipopt_version else "") + ".", ""]
    text = "\n".join(["## General constrained problems (`constrained.py`)", ""] + header + lines)
    print(text)
    if not (args.quick or args.no_write):
        write_section("constrained", text)


def hs_table(table, numbers, methods):
    lines = ["**Hock–Schittkowski** (solved: success reported and |f − f*| ≤ 1e-6·max(1, |f*|), "
             "violation ≤ 1e-6; time: run seconds, median of 3; ours compile apart):", "",
             "| HS | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    solved = {m: 0 for m in methods}
    tried = {m: 0 for m in methods}
    for k in numbers:
        cells = []
        for m in methods:
            r = table.get((k, m))
            if r is None:
                cells.append("—")
                continue
            tried[m] += 1
            solved[m] += r["solved"]
            mark = "✓" if r["solved"] else f"✗ ({r['status']}, f={r['f']:.6g})"
            comp = "" if r["compile"] is None else f" +{r['compile']:.1f}c"
            cells.append(f"{mark} {1e3 * r['run']:.1f} ms{comp}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| solved | " + " | ".join(f"{solved[m]}/{tried[m]}" for m in methods) + " |")
    return lines


if __name__ == "__main__":
    main()
