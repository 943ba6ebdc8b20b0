"""What the honest stopping rules (issue 13) cost: steps, evaluations, run time and the accuracy
reached, for the minimizers on the benchmark problems, with the solvers' default tolerances
(rtol=None) and with the benchmarks' tight rtol = 1e-8, in float64 and float32.

    python benchmarks/stopping_cost.py --label after            # prints one JSON line per run
    PYTHONPATH=/path/to/old/checkout python benchmarks/stopping_cost.py --label before

Run it once on each version in the same conditions; `--table before.jsonl after.jsonl` writes
the comparison into the "stopping_cost" section of RESULTS.md.
"""

from __future__ import annotations

# isort: off
from single_thread import PINNED_CPU  # noqa: F401  (one thread, one core: before jax)
# isort: on

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import problems
from harness import cpu_name, write_section

import jaxopt2

jax.config.update("jax_enable_x64", True)

SOLVERS = ("Newton", "NewtonCG", "LBFGS", "BFGS", "RegularizedNewton")
PROBLEMS = ("breast_cancer", "digits_binary", "softmax_digits")


def run(problem, solver_name, rtol, dtype):
    data = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        problem.data)
    params0 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), problem.params0)
    solver = getattr(jaxopt2, solver_name)(rtol=rtol)
    solve = jax.jit(lambda d: jaxopt2.minimize(problem.fun, params0, d, solver=solver,
                                               throw=False, max_steps=1000))
    compiled = solve.lower(data).compile()
    sol = jax.block_until_ready(compiled(data))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(compiled(data))
        times.append(time.perf_counter() - t)
    grad = jax.grad(problem.fun)(sol.params, data)
    g = float(max(jnp.max(jnp.abs(leaf)) for leaf in jax.tree_util.tree_leaves(grad)))
    return dict(problem=problem.name, solver=solver_name, rtol=rtol, dtype=jnp.dtype(dtype).name,
                status=jaxopt2.status_name(sol.status), steps=int(sol.stats["num_steps"]),
                grads=int(sol.stats["num_grad"]), funs=int(sol.stats["num_fun"]),
                hvps=int(sol.stats["num_hvp"]), run_s=float(np.median(times)), grad_inf=g)


def table(before_path, after_path):
    load = lambda p: {(r["problem"], r["solver"], str(r["rtol"]), r["dtype"]): r  # noqa: E731
                      for r in map(json.loads, open(p))}
    before, after = load(before_path), load(after_path)
    lines = ["| problem | solver | rtol | dtype | status before → after | steps | grad evals | "
             "HVPs | run s | ‖∇f‖∞ reached |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key in after:
        if key not in before or "error" in before[key] or "error" in after[key]:
            continue
        b, a = before[key], after[key]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {b['status']} → {a['status']} | "
            f"{b['steps']} → {a['steps']} | {b['grads']} → {a['grads']} | "
            f"{b['hvps']} → {a['hvps']} | {b['run_s']:.3g} → {a['run_s']:.3g} "
            f"({a['run_s'] / b['run_s']:.2f}×) | {b['grad_inf']:.1e} → {a['grad_inf']:.1e} |")
    text = ("## What the honest stopping rules cost (`stopping_cost.py`)\n\n"
            f"Before (the previous rule, ‖g‖ ≤ rtol·‖g₀‖) and after (`jaxopt2/_stopping.py`), "
            f"same machine, same process conditions, one pinned core ({cpu_name()}); run s is "
            "the median of 3 calls of the compiled solve. Counts include the saddle check's "
            "Hessian-vector products (10 per solve for the curvature solvers).\n\n"
            + "\n".join(lines))
    write_section("stopping_cost", text)
    print(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--label", default="after")
    p.add_argument("--table", nargs=2, metavar=("BEFORE", "AFTER"))
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    args = p.parse_args()
    if args.table:
        table(*args.table)
        return
    for name in args.problems:
        problem = problems.build(name)
        for dtype in (jnp.float64, jnp.float32):
            for rtol in (None, 1e-8):
                if dtype == jnp.float32 and rtol == 1e-8:
                    continue
                for solver_name in SOLVERS:
                    try:
                        row = run(problem, solver_name, rtol, dtype)
                    except Exception as e:  # reported, not hidden
                        row = dict(problem=name, solver=solver_name, rtol=rtol,
                                   dtype=jnp.dtype(dtype).name, error=str(e)[:200])
                    row["label"] = args.label
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
