"""Mixed precision in the least-squares solvers (issue 18): accuracy and cost of
`LevenbergMarquardt(precision=MixedPrecision(...))` against the float32 solver.

    python benchmarks/mixed_precision_lsq.py            # prints the table (docs/precision.md)

Problems: a nonlinear regression r(w) = tanh(X w / 8) − y with X (n × d) of column scales
1 … `scale` (condition of J grows with it), y from a planted w plus 2% noise (a nonzero
residual at the solution), data stored in bfloat16. Rows: the float32 solver on the
bfloat16 data promoted to float32 (the reference, same data values), and the mixed solver
with bfloat16 and float16 products. Reported: status, steps, J-products (jvp + vjp), the
error relative to the reference (max |w − w_ref| / max |w_ref|), and the run time (median of 5,
after compiling). One CPU here: run time is not the point (bfloat16 arithmetic is emulated on
most CPUs); on accelerators each product reads half the bytes.
"""

from __future__ import annotations

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt2
from jaxopt2 import MixedPrecision


def problem(n, d, scale, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) * np.linspace(1.0, scale, d)).astype(np.float32)
    w = (rng.normal(size=d) / np.linspace(1.0, scale, d)).astype(np.float32)
    y = (np.tanh(X @ w * 4 / 8) + 0.02 * rng.normal(size=n)).astype(np.float32)
    return jnp.asarray(X, jnp.bfloat16), jnp.asarray(y)


def residuals(w, data):
    X, y = data
    return jnp.tanh(X @ w / 8) - y


def run(solver, data, d):
    f = jax.jit(lambda data: jaxopt2.least_squares(residuals, jnp.zeros(d), data,
                                                   solver=solver, throw=False))
    sol = f(data)
    jax.block_until_ready(sol.params)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(f(data).params)
        times.append(time.perf_counter() - t)
    return sol, float(np.median(times))


def main():
    rows = []
    for n, d, scale in ((16384, 64, 1.0), (16384, 64, 10.0), (16384, 64, 30.0)):
        XB, y = problem(n, d, scale)
        promoted = (jnp.asarray(XB, jnp.float32), y)
        ref, t_ref = run(jaxopt2.LevenbergMarquardt(linear_solver="cg"), promoted, d)
        norm = float(jnp.max(jnp.abs(ref.params)))
        for label, solver, data in (
                ("float32 (reference)", None, promoted),
                ("bfloat16 products", MixedPrecision(jnp.bfloat16), (XB, y)),
                ("float16 products", MixedPrecision(jnp.float16), (XB, y))):
            if solver is None:
                sol, secs = ref, t_ref
            else:
                sol, secs = run(jaxopt2.LevenbergMarquardt(linear_solver="cg",
                                                           precision=solver), data, d)
            err = float(jnp.max(jnp.abs(sol.params - ref.params))) / norm
            products = int(sol.stats["num_jvp"]) + int(sol.stats["num_vjp"])
            rows.append(f"| {n} × {d}, column scales 1…{scale:g} | {label} | "
                        f"{str(sol.status).split(':')[0].replace('RESULTS.', '')} | "
                        f"{int(sol.stats['num_steps'])} | {products} | {err:.1e} | "
                        f"{secs * 1e3:.1f} |")
    print(f"jax {jax.__version__}, {platform.machine()}, {jax.devices()[0].device_kind}")
    print("| problem | products | status | steps | J products | error vs float32 | "
          "run (ms) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
