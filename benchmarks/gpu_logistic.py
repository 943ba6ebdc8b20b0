"""Logistic regression at n = 1,000,000, d = 1,000 on one accelerator: time per Hessian-vector
product against the device's memory-bandwidth limit, and end-to-end time to a tolerance against
jaxopt.LBFGS and optimistix.LBFGS, in float32 and with bfloat16 data / float32 accumulation.

    python benchmarks/gpu_logistic.py           # the full size; on a GPU 2-4 minutes
    python benchmarks/gpu_logistic.py --small   # n = 20,000, d = 100: a CPU smoke run, ~1-2 min

The full run writes its section of benchmarks/RESULTS.md (device, date, versions), unless
`--no-write`; `--small` never writes. The full size refuses to start on a CPU (4 GB of data and
hours of products: pass `--force` to insist). A time budget (`--budget`, 270 s by default)
skips the remaining end-to-end rows, marked "skipped (time budget)", so that the whole script
stays under 5 minutes even if an anchor is slow; the products are timed first.

**Problem.** f(w) = (1/n) Σᵢ log(1 + exp(xᵢᵀw)) − yᵢ xᵢᵀw + (λ/2)‖w‖², λ = 1e-4, X standard
normal (generated on the device), labels drawn from a logistic model with w_true ~ N(0, I/d).
The data is 4 GB in float32, 2 GB in bfloat16.

**Per product.** H v = Xᵀ diag(σ'(Xw)) X v / n + λv needs two passes over X (X v, then Xᵀu),
so it reads at least 2·n·d·itemsize bytes. The bandwidth limit is that divided by the device's
copy bandwidth, measured here as (bytes read + bytes written) / time of `X + 1` on the data.
The product is timed as the device does it inside NewtonCG: the operator is linearized once
and applied to 20 vectors in one compiled loop; the time per product is the loop's time / 20.
Target: within 2x of the bandwidth limit.

**Mixed precision**, two ways, both with X stored in bfloat16 and the parameters, the solver
state, CG and the stopping test in float32:

- *bf16 data, f32 accumulate* (the recipe of docs/guides/distributed.md): `X @ w` promotes X
  to float32 inside every product and gradient (whether XLA fuses that conversion into the
  matrix product or materializes a float32 copy is what this row's time shows);
- *bf16 products* (`MixedPrecision(jnp.bfloat16)` as NewtonCG's curvature, docs/precision.md):
  the Hessian-vector products run natively in bfloat16 (each dot accumulates in float32 and
  rounds its output), the value and the gradient still promote to float32. The products read
  half the bytes; the bandwidth limit of this row counts bfloat16 bytes.

**End to end.** Each solver runs jitted from w = 0 until ‖∇f‖∞ ≤ rtol·‖∇f(0)‖∞ (rtol = 1e-5,
float32), checked afterwards with our own gradient: jaxopt2.NewtonCG(rtol), jaxopt2.LBFGS(rtol),
jaxopt.LBFGS(tol = rtol·‖∇f(0)‖∞, a 2-norm test, so sufficient), optimistix.LBFGS(rtol = atol
= the loosest of 1e-5 … 1e-10 that reaches the target, calibrated in an untimed run). Compile
time apart; run time is the median of 3 runs. Target: jaxopt2 ≤ 0.3x the faster anchor.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

LAM = 1e-4
PRODUCTS = 20  # products per timed loop


def make_data(n: int, d: int, seed: int = 0):
    kx, kw, ky = jax.random.split(jax.random.key(seed), 3)

    @jax.jit
    def draw():
        X = jax.random.normal(kx, (n, d), jnp.float32)
        w = jax.random.normal(kw, (d,), jnp.float32) / np.sqrt(d)
        y = (jax.random.uniform(ky, (n,)) < jax.nn.sigmoid(X @ w)).astype(jnp.float32)
        return X, y

    return jax.block_until_ready(draw())


def loss(w, data):
    X, y = data
    z = X @ w  # bfloat16 X is promoted to float32: float32 accumulation
    return jnp.mean(jax.nn.softplus(z) - y * z) + 0.5 * LAM * w @ w


def timed(fn, *args, repeats: int = 3):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    run = statistics.median(times)
    return out, run, max(first - run, 0.0)


def copy_bandwidth(X) -> float:
    """Bytes per second of `X + 1` (read X, write a new array of the same size)."""
    bump = jax.jit(lambda x: x + jnp.asarray(1, x.dtype))
    _, seconds, _ = timed(bump, X, repeats=5)
    return 2 * X.nbytes / seconds


def hvp_seconds(data, d: int, low: bool = False) -> float:
    from jaxopt2 import curvature
    from jaxopt2._precision import MixedPrecision

    build = MixedPrecision(jnp.bfloat16) if low else curvature.hessian

    @jax.jit
    def products(w, v, data):
        H = build(loss, w, data)
        return jax.lax.fori_loop(0, PRODUCTS, lambda i, u: H.mv(u) / jnp.linalg.norm(u), v)

    w = jnp.full(d, 0.01, jnp.float32)
    v = jnp.linspace(-1.0, 1.0, d, dtype=jnp.float32)
    _, seconds, _ = timed(products, w, v, data)
    # Minus the linearization (one gradient: two passes), measured apart.
    grad = jax.jit(jax.grad(loss))
    _, g_seconds, _ = timed(grad, w, data)
    return max(seconds - g_seconds, 0.0) / PRODUCTS


def relative_gradient(w, data, g0_inf):
    g = jax.jit(jax.grad(loss))(w, data)
    return float(jnp.max(jnp.abs(g)) / g0_inf)


def end_to_end(data, d: int, rtol: float, g0_inf: float, anchors: bool, deadline: float,
               mixed: bool = False):
    import jaxopt2
    from jaxopt2._precision import MixedPrecision

    rows = []
    w0 = jnp.zeros(d, jnp.float32)

    def late(name):
        if time.perf_counter() < deadline:
            return False
        rows.append(dict(method=name, note="skipped (time budget)"))
        return True

    def ours(name, solver):
        if late(name):
            return
        run = jax.jit(lambda data: (lambda s: (s.params, s.stats["num_steps"],
                                               s.status._value))(
            jaxopt2.minimize(loss, w0, data, solver=solver, throw=False)))
        (w, steps, code), seconds, compile_s = timed(run, data)
        rows.append(dict(method=name, seconds=seconds, compile_s=compile_s, steps=int(steps),
                         rel_grad=relative_gradient(w, data, g0_inf),
                         note=jaxopt2.status_name(int(code))))

    ours("jaxopt2.NewtonCG", jaxopt2.NewtonCG(rtol=rtol))
    if mixed:
        ours("jaxopt2.NewtonCG, bf16 products",
             jaxopt2.NewtonCG(rtol=rtol, curvature=MixedPrecision(jnp.bfloat16)))
    ours("jaxopt2.LBFGS", jaxopt2.LBFGS(rtol=rtol))
    if not anchors:
        return rows
    try:
        import jaxopt

        if late("jaxopt.LBFGS"):
            raise _Skipped

        solver = jaxopt.LBFGS(fun=loss, tol=rtol * g0_inf, maxiter=10_000)
        run = jax.jit(lambda data: (lambda r: (r.params, r.state.iter_num))(
            solver.run(w0, data)))
        (w, steps), seconds, compile_s = timed(run, data)
        rows.append(dict(method="jaxopt.LBFGS", seconds=seconds, compile_s=compile_s,
                         steps=int(steps), rel_grad=relative_gradient(w, data, g0_inf),
                         note=f"tol={rtol * g0_inf:.2g} (2-norm)"))
    except ImportError:
        rows.append(dict(method="jaxopt.LBFGS", note="not installed"))
    except _Skipped:
        pass
    try:
        import optimistix as optx

        if late("optimistix.LBFGS"):
            raise _Skipped

        run = jax.jit(lambda data, tol: (lambda s: (s.value, s.stats["num_steps"]))(
            optx.minimise(loss, optx.LBFGS(rtol=tol, atol=tol), w0, data, max_steps=10_000,
                          throw=False)))
        first = time.perf_counter()
        for tol in (1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10):  # calibration: untimed
            w, _ = jax.block_until_ready(run(data, jnp.asarray(tol, jnp.float32)))
            if tol == 1e-5:
                first = time.perf_counter() - first  # compile + one run
            if relative_gradient(w, data, g0_inf) <= rtol:
                break
        (w, steps), seconds, _ = timed(run, data, jnp.asarray(tol, jnp.float32))
        # (the tolerance is an argument: one compile, in the calibration's first run)
        compile_s = max(first - seconds, 0.0)
        rows.append(dict(method="optimistix.LBFGS", seconds=seconds, compile_s=compile_s,
                         steps=int(steps), rel_grad=relative_gradient(w, data, g0_inf),
                         note=f"rtol=atol={tol:g} (calibrated)"))
    except ImportError:
        rows.append(dict(method="optimistix.LBFGS", note="not installed"))
    except _Skipped:
        pass
    return rows


class _Skipped(Exception):
    """An end-to-end row left out for the time budget."""


def versions() -> str:
    from importlib import metadata

    out = []
    for name in ("jax", "jaxlib", "jaxopt2", "jaxopt", "optimistix", "lineax"):
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="n = 20,000, d = 100 (CPU)")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--budget", type=float, default=270.0,
                        help="seconds after which the remaining end-to-end rows are skipped")
    parser.add_argument("--force", action="store_true",
                        help="run the full size even on a CPU")
    args = parser.parse_args(argv)
    n, d = (20_000, 100) if args.small else (1_000_000, 1_000)
    device = jax.devices()[0]
    if device.platform == "cpu" and not args.small and not args.force:
        raise SystemExit("gpu_logistic.py: no accelerator (jax.devices() is a CPU). The full "
                         "size (4 GB, ~1e12 flops per solve) is meant for a GPU or TPU; run "
                         "with --small for a CPU smoke test, or --force to insist.")
    print(f"device: {device.device_kind} ({device.platform}), n = {n:,}, d = {d:,}", flush=True)
    start_all = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start_all + args.budget
    X, y = make_data(n, d)
    Xb = X.astype(jnp.bfloat16)
    bandwidth = copy_bandwidth(X)
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)

    product_rows = []
    for label, data, low in (("float32", (X, y), False),
                             ("bf16 data, f32 accumulate", (Xb, y), False),
                             ("bf16 products (MixedPrecision)", (Xb, y), True)):
        seconds = hvp_seconds(data, d, low)
        limit = 2 * data[0].nbytes / bandwidth
        product_rows.append((label, seconds, limit))
        print(f"HVP {label}: {1e3 * seconds:.3f} ms, bandwidth limit {1e3 * limit:.3f} ms, "
              f"{seconds / limit:.2f}x", flush=True)

    g0_inf = float(jnp.max(jnp.abs(jax.jit(jax.grad(loss))(jnp.zeros(d), (X, y)))))
    solve_rows = [dict(r, data="float32") for r in end_to_end(
        (X, y), d, args.rtol, g0_inf, anchors=True, deadline=deadline)]
    solve_rows += [dict(r, data="bf16") for r in end_to_end(
        (Xb, y), d, args.rtol, g0_inf, anchors=False, deadline=deadline, mixed=True)]
    for r in solve_rows:
        print(r, flush=True)
    total = time.perf_counter() - start_all
    cpu_total = time.process_time() - cpu_start
    memory = (device.memory_stats() or {}) if hasattr(device, "memory_stats") else {}
    limit_gb = memory.get("bytes_limit", 0) / 2**30
    peak_gb = memory.get("peak_bytes_in_use", 0) / 2**30
    memory_note = (f" Device memory {limit_gb:.0f} GiB, peak in use {peak_gb:.1f} GiB."
                   if limit_gb else "")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    anchors = [r["seconds"] for r in solve_rows
               if r["data"] == "float32" and "seconds" in r and not r["method"].startswith(
                   "jaxopt2") and r["rel_grad"] <= args.rtol]
    best = min(anchors) if anchors else float("nan")
    lines = [
        "## Logistic regression on one accelerator (`gpu_logistic.py`)",
        "",
        f"{device.device_kind} ({device.platform}), {datetime.date.today()}, {versions()}, "
        f"Python {platform.python_version()}. n = {n:,}, d = {d:,}, λ = {LAM:g}; copy "
        f"bandwidth {bandwidth / 1e9:.0f} GB/s (X + 1 on the float32 data). Whole script "
        f"{total:.0f} s ({cpu_total:.0f} s of host CPU), load average {load:.1f}."
        f"{memory_note}",
        "",
        "| data | HVP (ms) | bandwidth limit (ms) | × limit (target ≤ 2) |",
        "|---|---|---|---|",
        *[f"| {label} | {1e3 * s:.3f} | {1e3 * lim:.3f} | {s / lim:.2f} |"
          for label, s, lim in product_rows],
        "",
        f"To ‖∇f‖∞ ≤ {args.rtol:g}·‖∇f(0)‖∞ (float32; the bf16 rows solve the problem of "
        "the rounded data and are checked with its gradient):",
        "",
        "| data | method | reached | ‖∇f‖∞/‖∇f₀‖∞ | steps | run (s) | × fastest anchor "
        "(target ≤ 0.3) | compile (s) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in solve_rows:
        if "seconds" not in r:
            lines.append(f"| {r['data']} | {r['method']} | | | | | | | {r['note']} |")
            continue
        rel = r["rel_grad"]
        lines.append(
            f"| {r['data']} | {r['method']} | {'yes' if rel <= args.rtol else 'NO'} "
            f"| {rel:.1e} | {r['steps']} | {r['seconds']:.3f} | {r['seconds'] / best:.2f} "
            f"| {r['compile_s']:.1f} | {r['note']} |")
    text = "\n".join(lines)
    print(text)
    if not args.small and not args.no_write:
        import sys

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from harness import write_section

        write_section("gpu_logistic", text)


if __name__ == "__main__":
    main()
