"""Dense Newton at BLAS speed (issue 20): `Newton(sqrt_hessian=...)`, which forms the logistic
Hessian as BᵀB + λI from one matrix product, against `Newton()` (d batched Hessian-vector
products through `jax.hessian`) and scikit-learn's newton-cholesky (XᵀDX, one GEMM), float64,
one pinned core, in one process.

    python benchmarks/dense_newton.py            # n × d = 8,000 × 300 and 20,000 × 500 (the
                                                 # minimization target's problem); writes its
                                                 # RESULTS.md section
    python benchmarks/dense_newton.py --quick    # n = 2,000, d = 100

The problem is `problems.synthetic` (dense features with log-spaced scales, condition 1e4 at
0), the mean logistic loss plus (λ/2)‖w‖², unpenalised intercept; every method must reach
‖∇f‖∞ ≤ 1e-6 (absolute) on one common gradient function (`logistic.AbsoluteChecker`).
Reported: steps, run time (median of repeats of the compiled call), compile time apart, the
ratio of run time to newton-cholesky's, and the first call (compile + run) for the JAX rows.
"""

from __future__ import annotations

# isort: off
from single_thread import PINNED_CPU
# isort: on

import argparse
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

from anchors import sklearn_runner  # noqa: E402
from harness import Config, cpu_name, guarded, write_section  # noqa: E402
from logistic import TARGET, AbsoluteChecker, progress, run_ours, sqrt_hessian  # noqa: E402
from problems import synthetic  # noqa: E402

import jaxopt2  # noqa: E402


def table(n: int, d: int, cfg: Config) -> str:
    problem = synthetic(n=n, d=d, cond=1e4)
    checker = AbsoluteChecker(problem)
    tol = dict(rtol=0.0, atol=TARGET)
    rows = []
    for name, solver in {
            "Newton (jax.hessian: d HVPs)": jaxopt2.Newton(**tol),
            "Newton (sqrt_hessian: BᵀB + λI)": jaxopt2.Newton(sqrt_hessian=sqrt_hessian, **tol),
            "NewtonCG (default)": jaxopt2.NewtonCG(**tol)}.items():
        rows.append(guarded(lambda: run_ours(name, solver, 200, problem, checker, cfg),  # noqa: B023
                            name, "jaxopt2"))
        progress(rows[-1])
    anchor = guarded(lambda: sklearn_runner("newton-cholesky")(problem, checker, cfg),
                     "sklearn newton-cholesky", "anchor")
    anchor.solver = "sklearn newton-cholesky"
    rows.append(anchor)
    progress(anchor)
    ref = anchor.run_s if anchor.reached else None
    out = [f"**n = {n:,}, d = {d}**", "",
           "| solver | reached | steps | run (s) | × newton-cholesky | compile (s) | "
           "first call (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            out.append(f"| {r.solver} | error: {r.error} | | | | | |")
            continue
        ratio = f"{r.run_s / ref:.2f}" if ref and r.run_s else ""
        comp = "" if r.compile_s is None else f"{r.compile_s:.2f}"
        first = "" if r.compile_s is None else f"{r.compile_s + r.run_s:.2f}"
        out.append(f"| {r.solver} | {'yes' if r.reached else 'NO'} | {r.iters} | "
                   f"{r.run_s:.4f} | {ratio} | {comp} | {first} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sizes = [(2_000, 100)] if args.quick else [(8_000, 300), (20_000, 500)]
    cfg = Config(repeats=3 if args.quick else 7, budget_s=20.0, long_s=1.0, quick=args.quick)
    t_start = time.perf_counter()
    tables = [table(n, d, cfg) for n, d in sizes]
    total = time.perf_counter() - t_start
    machine = (f"{cpu_name()}, one pinned core (cpu {PINNED_CPU}), {platform.system()}, "
               f"jax {jax.__version__}; total {total:.0f} s"
               + ("; QUICK (small) run" if args.quick else ""))
    text = "\n\n".join([
        "## Dense Newton at BLAS speed: `Newton(sqrt_hessian=...)` (`dense_newton.py`)",
        f"Machine: {machine}. Logistic regression, synthetic dense (+ intercept), condition "
        "1e4 at 0, float64, target ‖∇f‖∞ ≤ 1e-6. 'compile' is the first call minus a "
        "compiled call; newton-cholesky has no compile step.", *tables])
    print("\n" + text)
    if not args.quick:
        write_section("dense_newton", text)


if __name__ == "__main__":
    main()
