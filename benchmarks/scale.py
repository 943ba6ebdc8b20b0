"""Time per Hessian-vector product and per NewtonCG step on logistic regression with the data
sharded over 1, 2, 4 and 8 host devices, and the two-process run against one process.

    python benchmarks/scale.py          # n = 131,072, d = 64, float32; writes RESULTS.md
    python benchmarks/scale.py --quick  # n = 16,384, d = 32, no RESULTS.md

Each device count runs in its own process (the number of host devices is fixed when JAX
starts), XLA single-threaded (benchmarks/single_thread.py's flags) and pinned to one core by
default, so the k "devices" are k partitions of one thread's work: the total work per product
is the same for every k and the figures stay flat (or grow by the all-reduce's cost). On this
2-core machine no device count can be faster than one core allows; the table measures the
cost of the sharded program (partitioning, all-reduces of d-vectors), not a speed-up. On a
machine with k real devices the product time would fall as n/k until the all-reduce of d
floats dominates.

Per device count: the HVP `curvature.hessian(f, w, data).mv(v)` (median over repeats of a
jitted product on the sharded data; the linearization is inside, so it is one gradient plus
one product's work, as NewtonCG pays it per CG iteration after the first), and a full NewtonCG
solve (time divided by its steps and by its HVPs), compile time apart. Then
examples/distributed.py (2 processes × 4 devices against 1 process × 8) at a size where the
solve takes about a second: its workers are not pinned, and gloo's TCP all-reduces between
processes on one machine are the cost being measured.
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
from single_thread import PINNED_CPU, THREAD_ENV
# isort: on

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WORKER = r"""
import json, statistics, sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType
import jaxopt2
from jaxopt2 import curvature, distributed

n, d, repeats, kind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
k = jax.device_count()
rng = np.random.default_rng(0)
X = rng.normal(size=(n, d)).astype(np.float32)
w_true = rng.normal(size=d).astype(np.float32) / np.sqrt(d)
y = (rng.random(n) < 1 / (1 + np.exp(-X @ w_true))).astype(np.float32)
axis = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}[kind]
mesh = jax.make_mesh((k,), ("data",), axis_types=(axis,))
data = distributed.shard_data((X, y), mesh)

def loss(w, data):
    X, y = data
    z = X @ w
    return jnp.mean(jax.nn.softplus(z) - y * z) + 5e-4 * w @ w

def timed(fn, *args):
    # Wall and process CPU time (one thread, so CPU time is the work, even on a loaded core).
    start = time.perf_counter(); jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start); cpu.append(time.process_time() - start_cpu)
    run = statistics.median(times)
    return out, run, first - run, statistics.median(cpu)

with jax.set_mesh(mesh):
    w = jnp.full(d, 0.1); v = jnp.linspace(-1.0, 1.0, d)
    hvp = jax.jit(lambda w, v, a: curvature.hessian(loss, w, a).mv(v))
    _, hvp_s, hvp_compile, hvp_cpu = timed(hvp, w, v, data)
    solve = jax.jit(lambda a: (lambda s: (s.params, s.status._value, s.stats["num_steps"],
                                          s.stats["num_hvp"]))(
        jaxopt2.minimize(loss, jnp.zeros(d), a, solver=jaxopt2.NewtonCG(rtol=1e-5))))
    (params, status, steps, hvps), solve_s, solve_compile, solve_cpu = timed(solve, data)
    gathers = "all-gather" in distributed.collectives(solve.lower(data).compile())
print(json.dumps(dict(devices=k, hvp_s=hvp_s, hvp_compile_s=hvp_compile, solve_s=solve_s,
                      hvp_cpu_s=hvp_cpu, solve_cpu_s=solve_cpu,
                      solve_compile_s=solve_compile, steps=int(steps), hvps=int(hvps),
                      status=jaxopt2.status_name(int(status)), all_gather=gathers)))
"""


def run_devices(k: int, n: int, d: int, repeats: int, kind: str, pin: bool) -> dict:
    env = dict(os.environ)
    env.update({key: value for key, value in THREAD_ENV.items() if key != "XLA_FLAGS"})
    # The device count first: XLA stops reading flags at THREAD_ENV's bare
    # `intra_op_parallelism_threads=1`.
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={k} "
                        + THREAD_ENV["XLA_FLAGS"])
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-c", WORKER, str(n), str(d), str(repeats), kind]
    if pin and PINNED_CPU is not None:
        cmd = ["taskset", "-c", str(PINNED_CPU)] + cmd
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if out.returncode:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_processes(n: int, d: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, os.path.join(ROOT, "examples", "distributed.py"),
             "--config", os.path.join(ROOT, "configs", "distributed.yaml"),
             "--set", f"n={n}", "--set", f"d={d}", "--set", f"output_dir={tmp}"],
            capture_output=True, text=True, timeout=1800, cwd=ROOT)
        if out.returncode:
            return {"error": f"exit {out.returncode}: " + (out.stdout + out.stderr)[-500:]}
        with open(os.path.join(tmp, "results.json")) as f:
            return json.load(f)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--axis-type", default="explicit", choices=("explicit", "auto"))
    parser.add_argument("--cpu", type=int, default=None)  # read by single_thread
    parser.add_argument("--no-pin", action="store_true")  # read by single_thread
    args = parser.parse_args(argv)
    n, d, repeats = (16_384, 32, 5) if args.quick else (131_072, 64, 10)
    rows = []
    for k in (1, 2, 4, 8):
        r = run_devices(k, n, d, repeats, args.axis_type, pin=not args.no_pin)
        assert r["devices"] == k, r
        rows.append(r)
        print(json.dumps(r), flush=True)
    base = rows[0]
    lines = [
        "| devices | HVP (ms) | HVP CPU (ms) | × 1 device, CPU | NewtonCG solve (s) "
        "| solve CPU (s) | × 1 device, CPU | steps | HVPs "
        "| per step (ms) | per HVP in the solve (ms) | compile HVP / solve (s) | status "
        "| all-gather |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['devices']} | {1e3 * r['hvp_s']:.2f} | {1e3 * r['hvp_cpu_s']:.2f} "
            f"| {r['hvp_cpu_s'] / base['hvp_cpu_s']:.2f} "
            f"| {r['solve_s']:.3f} | {r['solve_cpu_s']:.3f} "
            f"| {r['solve_cpu_s'] / base['solve_cpu_s']:.2f} | {r['steps']} "
            f"| {r['hvps']} | {1e3 * r['solve_s'] / max(r['steps'], 1):.1f} "
            f"| {1e3 * r['solve_s'] / max(r['hvps'], 1):.2f} "
            f"| {r['hvp_compile_s']:.1f} / {r['solve_compile_s']:.1f} | {r['status']} "
            f"| {'yes' if r['all_gather'] else 'no'} |")
    multi = run_processes(*((8192, 32) if args.quick else (131_072, 64)))
    if "error" in multi:
        proc_text = f"Two processes: not run ({multi['error']})."
    else:
        m, s = multi["multi_process"], multi["single_process"]
        proc_text = (
            "| run | NewtonCG solve (s) | hypergradient (s) | compile solve (s) | steps |\n"
            "|---|---|---|---|---|\n"
            + "\n".join(
                f"| {r['processes']} process(es) × {r['devices'] // r['processes']} devices "
                f"| {r['newton_cg']['seconds']:.3f} | {r['hypergradient']['seconds']:.3f} "
                f"| {r['newton_cg']['compile_seconds']:.1f} | {r['newton_cg']['steps']} |"
                for r in (m, s))
            + "\n\nTwo processes / one process: solve "
            f"{m['newton_cg']['seconds'] / s['newton_cg']['seconds']:.1f}×, "
            f"hypergradient {m['hypergradient']['seconds'] / s['hypergradient']['seconds']:.1f}×; "
            f"parameters agree to {multi['params_rel_diff']:.1e}, hypergradient to "
            f"{multi['hypergradient_rel_diff']:.1e} (relative).")
    import jax

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = "\n".join([
        "## Sharded data: time per HVP and per Newton step over host devices (`scale.py`)",
        "",
        f"Logistic regression, n = {n:,}, d = {d}, float32, data sharded along the examples "
        f"({args.axis_type} mesh axes), XLA single-threaded, pinned to one core "
        f"({'yes' if not args.no_pin else 'no'}); jax {jax.__version__}; load average "
        f"{load:.1f} on 2 cores when written (wall times of a shared machine). Median of "
        f"{repeats} runs after compiling.",
        "",
        *lines,
        "",
        "All host devices share one pinned core, so no row can gain from parallelism: the "
        "same n·d work is done in every row, plus all-reduces of d-vectors. Read the CPU "
        "columns; wall times on this loaded machine are up to 8x the CPU times. Differences "
        "between rows come from the partitioned program (per-shard kernels on n/k rows, the "
        "all-reduces), not from a speed-up.",
        "",
        "**Two processes** (examples/distributed.py, "
        f"{'8192 × 32' if args.quick else '131072 × 64'},"
        " workers not pinned, gloo all-reduces over TCP on localhost):",
        "",
        proc_text,
    ])
    print(text)
    if not args.quick:
        from harness import write_section

        write_section("scale", text)


if __name__ == "__main__":
    main()
