"""Large logistic regression: SketchedNewton against NewtonCG, LBFGS and the anchors, float64
and float32, single-threaded, in one process.

    python benchmarks/logistic.py            # n = 200,000, d = 500; writes its RESULTS.md section
    python benchmarks/logistic.py --quick    # n = 20,000, d = 200

The problem is `problems.synthetic`: dense Gaussian features with log-spaced scales (the
Hessian at 0 has condition number 1e4 by construction), labels from a random true model plus
logistic noise, mean logistic loss plus (λ/2)‖w‖², λ = 1e-3, unpenalised intercept. Every
method must reach ‖∇f‖∞ ≤ 1e-6 (absolute), checked by one common gradient function:

- jaxopt2 solvers run with `rtol=0, atol=1e-6` (their own test is exactly this one).
- the anchors use the settings of `anchors.py` (jaxopt: 2-norm tol; optimistix: Cauchy
  tolerances calibrated until the target is met; scikit-learn: tol on the same inf-norm; given
  float32 data it works in float32).

Reported: steps, evaluations, full passes over the data (products with X: a value counts 1, a
value-and-gradient 2, a Hessian-vector product 2; SketchedNewton's sampled Hessian touches
only m rows, reported apart as rows·d² work), run time (median of repeats of the compiled
call), compile time apart, and the ratio of run time to the best non-SketchedNewton method.
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
from single_thread import PINNED_CPU
# isort: on

import argparse
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from anchors import jaxopt_runner, optimistix_runner, sklearn_runner  # noqa: E402
from harness import (  # noqa: E402
    RTOL,
    Checker,
    Config,
    Result,
    cpu_name,
    finish,
    guarded,
    time_jax,
    write_section,
)
from ours import status_name  # noqa: E402
from problems import LAM, synthetic  # noqa: E402

import jaxopt2  # noqa: E402

TARGET = 1e-6  # absolute, on ‖∇f‖∞


class AbsoluteChecker(Checker):
    """The harness's relative test ‖g‖∞ ≤ RTOL·g0 turned into the absolute ‖g‖∞ ≤ TARGET, so
    the anchors' runners (which read `target` and `rel`) can be reused unchanged."""

    def __init__(self, problem):
        super().__init__(problem)
        self.g0_true = self.g0
        self.g0 = TARGET / RTOL


def sqrt_hessian(params, data):
    """∇²f = BᵀB + R for the mean logistic loss of z = X w + b: B = diag(√(σ'(z)/n)) [1 X]
    (columns in the flattened order of {"b", "w"}), R = λ on the weights, 0 on b."""
    X = data["X"]
    p = jax.nn.sigmoid(X @ params["w"] + params["b"])
    weights = jnp.sqrt(p * (1 - p) / X.shape[0])[:, None]
    B = jnp.concatenate([weights, weights * X], axis=1)
    r = jnp.diag(jnp.concatenate([jnp.zeros(1, X.dtype), jnp.full(X.shape[1], LAM, X.dtype)]))
    return B, r


def ours(n, d):
    atol = dict(rtol=0.0, atol=TARGET)
    return {
        "SketchedNewton (uniform rows)": (jaxopt2.SketchedNewton(**atol), 200),
        "SketchedNewton (sparse sign, Newton sketch)": (jaxopt2.SketchedNewton(
            sketch="sparse_sign", sqrt_hessian=sqrt_hessian, **atol), 200),
        "NewtonCG": (jaxopt2.NewtonCG(**atol), 200),
        "LBFGS": (jaxopt2.LBFGS(**atol), 20_000),
    }


def run_ours(name, solver, max_steps, problem, checker, cfg) -> Result:
    def solve(data):
        sol = jaxopt2.minimize(problem.fun, problem.params0, data, solver=solver,
                               max_steps=max_steps, throw=False)
        return sol.params, (sol.status._value, sol.stats)

    times = time_jax(solve, problem.data, cfg)
    params, (code, stats) = times.out
    stats = {k: int(v) for k, v in stats.items()}
    res = Result(name, "jaxopt2", iters=stats["num_steps"], n_fun=stats["num_fun"],
                 n_grad=stats["num_grad"], n_hvp=stats["num_hvp"], n_hess=stats["num_hessian"],
                 status=status_name(int(code)))
    if isinstance(solver, jaxopt2.SketchedNewton):
        m = min(10 * problem.d, problem.n)
        if solver.sqrt_hessian is None:
            res.note = f"sampled Hessian on m={m} rows per step"
        else:
            res.note = f"sketch of m={m} rows per step; B formed {stats['num_jac']} times"
    return finish(res, checker, params, times)


def passes(res: Result, name: str) -> float | None:
    """Full passes over X: f = 1, f + ∇f = 2, Hessian-vector product = 2; the Newton sketch
    also forms B (1 pass) and sketches it (8 for the sparse sign sketch)."""
    if res.n_grad is None:
        return None
    total = (res.n_fun or 0) + 2 * res.n_grad + 2 * (res.n_hvp or 0)
    if "sparse sign" in name:
        total += 9 * (res.n_hess or 0)
    return total


def progress(r: Result) -> None:
    print(f"  {r.solver:45s} reached={r.reached} steps={r.iters} run={r.run_s} "
          f"compile={r.compile_s} {r.error}", flush=True)


def cast(problem, dtype):
    problem.data = jax.tree.map(lambda a: a.astype(dtype), problem.data)
    problem.params0 = jax.tree.map(lambda a: a.astype(dtype), problem.params0)
    problem.X = problem.X.astype(dtype)  # scikit-learn keeps float32 input in float32
    return problem


def table(rows, title) -> str:
    best_other = min((r.run_s for r in rows if r.reached and "Sketched" not in r.solver
                      and r.run_s), default=None)
    out = [f"**{title}**", "",
           "| solver | reached | ‖∇f‖∞ | steps | f | f+∇f | HVP | data passes | run (s) | "
           "× best other | compile (s) | notes |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            out.append(f"| {r.solver} | error | | | | | | | | | | {r.error} |")
            continue
        ratio = f"{r.run_s / best_other:.2f}" if best_other and r.run_s else ""
        p = passes(r, r.solver)
        fmt = lambda v: "" if v is None else str(v)
        out.append(
            f"| {r.solver} | {'yes' if r.reached else 'NO'} | {r.rel_grad * TARGET / RTOL:.1e} "
            f"| {fmt(r.iters)} | {fmt(r.n_fun)} | {fmt(r.n_grad)} | {fmt(r.n_hvp)} | "
            f"{fmt(p)} | {r.run_s:.2f} | {ratio} | "
            f"{'' if r.compile_s is None else f'{r.compile_s:.2f}'} | "
            f"{(r.status + '; ' if r.status and r.status != 'successful' else '') + r.note} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dtypes", default="float64,float32")
    args = parser.parse_args(argv)
    n, d = (20_000, 200) if args.quick else (200_000, 500)
    cfg = Config(repeats=1 if args.quick else 3, budget_s=20.0, long_s=1.0, quick=args.quick)
    t_start = time.perf_counter()
    sections = []
    for dtype_name in args.dtypes.split(","):
        dtype = jnp.dtype(dtype_name)
        problem = cast(synthetic(n=n, d=d, cond=1e4), dtype)
        checker = AbsoluteChecker(problem)
        print(f"\n== {dtype_name}: n={n}, d={d}, |g0|_inf = {checker.g0_true:.3g}", flush=True)
        rows = []
        for name, (solver, steps) in ours(n, d).items():
            run = lambda: run_ours(name, solver, steps, problem, checker, cfg)  # noqa: B023
            rows.append(guarded(run, name, "jaxopt2"))
            progress(rows[-1])
        anchors = {"jaxopt.LBFGS": jaxopt_runner("LBFGS"),
                   "optimistix.LBFGS": optimistix_runner("LBFGS"),
                   "sklearn lbfgs": sklearn_runner("lbfgs"),
                   "sklearn newton-cholesky": sklearn_runner("newton-cholesky")}
        for name, run in anchors.items():
            res = guarded(lambda: run(problem, checker, cfg), name, "anchor")  # noqa: B023
            res.solver = name
            rows.append(res)
            progress(res)
        sections.append(table(rows, f"{dtype_name}, n = {n:,}, d = {d} (+ intercept), "
                                    f"‖∇f(0)‖∞ = {checker.g0_true:.3g}, target ‖∇f‖∞ ≤ 1e-6"))
    total = time.perf_counter() - t_start
    machine = (f"{cpu_name()}, one pinned core (cpu {PINNED_CPU}), {platform.system()}, "
               f"jax {jax.__version__}; total {total:.0f} s"
               + ("; QUICK (small) run" if args.quick else ""))
    text = "\n\n".join(["## Large logistic regression: SketchedNewton (`logistic.py`)",
                         f"Machine: {machine}.", *sections])
    print("\n" + text)
    if not args.quick:
        write_section("logistic", text)


if __name__ == "__main__":
    main()
