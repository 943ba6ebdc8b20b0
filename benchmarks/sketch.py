"""Nyström-preconditioned CG against plain and Jacobi-preconditioned CG on an ill-conditioned
ridge system, float64, single-threaded, in one process.

    python benchmarks/sketch.py            # n = 50,000, d = 1,000; writes its RESULTS.md section
    python benchmarks/sketch.py --quick    # n = 5,000, d = 300

The system is (XᵀX/n + μI) w = Xᵀy/n with correlated features X = Z·diag(s)·Qᵀ (Z standard
normal, Q a random rotation, s_i ∝ i^(−a) so that the condition number is about 1e6; μ sets
the floor). Every method runs jaxopt2's CG
(`jaxopt2._linalg.truncated_cg`) to the relative residual 1e-8 with products X(Xᵀv) computed
from the data (never forming XᵀX); the Jacobi diagonal is exact (column norms); the Nyström
preconditioner (Frangella–Tropp–Udell) is built from `rank` products with a Gaussian test
matrix, batched. Reported: CG iterations, data passes (two per product with XᵀX, counting
the preconditioner's construction), time of the solve with and without building the
preconditioner (median of repeats, compiled once; compile time separate), and the error
against a dense Cholesky solution.
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
from single_thread import PINNED_CPU
# isort: on

import argparse
import os
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
from harness import write_section  # noqa: E402

from jaxopt2._linalg import truncated_cg  # noqa: E402
from jaxopt2.sketch import nystrom_preconditioner  # noqa: E402

RTOL = 1e-8


def problem(n, d, cond, seed=0):
    """Correlated features with a polynomially decaying spectrum, as real design matrices
    tend to have: X = Z·diag(s)·Qᵀ with s_i ∝ i^(−a), a chosen so that s₁²/s_d² = cond, and
    Q a random rotation (so that the Hessian is far from diagonal and Jacobi does not help)."""
    rng = np.random.default_rng(seed)
    a = 0.5 * np.log(cond) / np.log(d)
    s = np.arange(1, d + 1, dtype=float) ** (-a)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    X = (rng.standard_normal((n, d)) * s) @ Q.T
    w = rng.standard_normal(d)
    y = X @ w + 0.1 * rng.standard_normal(n)
    mu = float(s[-1] ** 2)  # ridge at the smallest curvature's scale: cond(H) ≈ cond / 2
    return jnp.asarray(X), jnp.asarray(y), mu


def methods(ranks):
    out = [("CG", None), ("Jacobi-PCG", "jacobi")]
    out += [(f"Nyström-PCG (rank {r})", r) for r in ranks]
    return out


def make_solve(kind, n, d, key):
    def solve(X, y, mu):
        matvec = lambda v: X.T @ (X @ v) / n + mu * v  # noqa: E731
        b = X.T @ y / n
        if kind is None:
            precond, build = None, 0
        elif kind == "jacobi":
            diag = jnp.sum(X**2, axis=0) / n + mu
            precond, build = (lambda v: v / diag), 1
        else:
            op = lx.FunctionLinearOperator(lambda v: X.T @ (X @ v) / n,
                                           jax.ShapeDtypeStruct((d,), X.dtype),
                                           tags=(lx.symmetric_tag, lx.positive_semidefinite_tag))
            precond, build = nystrom_preconditioner(op, kind, key, mu=mu), kind
        res = truncated_cg(matvec, b, rtol=RTOL, max_iters=20 * d, precond=precond)
        return res.x, res.num_iters, res.converged, build

    return solve


def timed_median(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args(argv)
    n, d = (5000, 300) if args.quick else (50_000, 1000)
    ranks = (50, 100) if args.quick else (50, 100, 200)
    X, y, mu = problem(n, d, 1e6)
    H = X.T @ X / n + mu * jnp.eye(d)
    evals = jnp.linalg.eigvalsh(H)
    cond = float(evals[-1] / evals[0])
    w_ref = jnp.linalg.solve(H, X.T @ y / n)
    key = jax.random.PRNGKey(0)
    rows = []
    for name, kind in methods(ranks):
        solve = jax.jit(make_solve(kind, n, d, key))
        t0 = time.perf_counter()
        compiled = solve.lower(X, y, mu).compile()
        compile_s = time.perf_counter() - t0
        w, iters, conv, build = compiled(X, y, mu)
        run_s = timed_median(lambda c=compiled: c(X, y, mu), args.repeats)
        err = float(jnp.linalg.norm(w - w_ref) / jnp.linalg.norm(w_ref))
        passes = 2 * (int(iters) + 1) + 2 * int(build)
        rows.append((name, int(iters), bool(conv), passes, run_s, compile_s, err))
        print(rows[-1], flush=True)
    base_iters, base_time = rows[0][1], rows[0][4]
    lines = ["| method | CG iterations | converged | data passes | solve s (incl. build) | "
             "compile s | rel. error | iterations / CG | time / CG |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, iters, conv, passes, run_s, compile_s, err in rows:
        lines.append(f"| {name} | {iters} | {'yes' if conv else 'NO'} | {passes} | "
                     f"{run_s:.3f} | {compile_s:.2f} | {err:.1e} | {iters / base_iters:.3f} | "
                     f"{run_s / base_time:.3f} |")
    table = "\n".join(lines)
    head = (f"## Nyström-preconditioned CG (`sketch.py`)\n\nRidge system (XᵀX/n + μI) w = Xᵀy/n, "
            f"n = {n:,}, d = {d:,}, condition number {cond:.2e}, float64, one thread"
            f" (pinned to core {PINNED_CPU}); CG to relative residual {RTOL:g}; data passes = "
            "2 per product with XᵀX, including the preconditioner's construction; times are "
            f"medians of {args.repeats} calls of the compiled program, construction included.\n")
    print(table)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "outputs")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sketch.md"), "w") as fh:
        fh.write(head + "\n" + table + "\n")
    if not args.quick:
        write_section("sketch", head + "\n" + table)


if __name__ == "__main__":
    main()
