"""Convex QPs: jaxopt2.qp.solve_qp (dense interior point, and method="admm" with and without
polishing) against qpax, jaxopt's OSQP, Clarabel, OSQP and ProxSuite (ProxQP), side by side in
one process, float64, single-threaded (`single_thread.py`). Also the accuracy jaxopt's OSQP
reaches when stopped after as long as ours took (`equal_time`).

    python benchmarks/qp.py            # full sizes; prints a markdown table
    python benchmarks/qp.py --quick    # n = 100 and a batch of 32 only
    python benchmarks/qp.py --no-single   # the batch of 256 only

Problems (fixed seeds): Q = MMᵀ/n + 0.01·I (M Gaussian), c Gaussian, m = n/2 inequality rows
G (Gaussian) with h = G x₀ + U(0, 1), p = n/10 equality rows A x = A x₀, x₀ ∈ U(−1, 1)ⁿ, so
every problem is feasible with about half its inequalities active. Sizes: n = 100, 500 (one
problem each) and a batch of 256 problems with n = 20 (m = 10, p = 2).

Accuracy: every solver is asked for 1e-8 (its own tolerance parameters: qpax `solver_tol`,
jaxopt OSQP `tol`, OSQP `eps_abs = eps_rel`, ProxQP `eps_abs`, Clarabel's gap/feasibility
tolerances; ours `rtol`), and its x is then measured by one common function: the error
‖x − x_ref‖∞/max(1, ‖x_ref‖∞) against Clarabel run at 1e-12, and the largest constraint
violation. Times: the median of repeated calls (JAX: of the compiled executable), wall and
process CPU time (on a loaded machine the wall time also counts other processes), compile time
apart; iterations per run (for a batch "mean / max": under vmap every problem pays the max).
The batch ends with the target ratios (interior point vs qpax, a Clarabel loop vs the interior
point). `--no-single` runs the batch only. For the batch, "fwd+bwd" is the gradient of
Σ‖x_i‖² with respect to Q, c, G, h (ours: implicit differentiation; qpax: its own implicit
backward of the relaxed KKT system).
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
from single_thread import PINNED_CPU  # noqa: F401
# isort: on

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from jaxopt2.qp import ADMM, solve_qp  # noqa: E402

TOL = 1e-8


def make(seed, n, m, p):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    Q = M @ M.T / n + 0.01 * np.eye(n)
    c = rng.normal(size=n)
    x0 = rng.uniform(-1, 1, n)
    G = rng.normal(size=(m, n))
    h = G @ x0 + rng.uniform(0, 1, m)
    A = rng.normal(size=(p, n))
    return dict(Q=Q, c=c, A=A, b=A @ x0, G=G, h=h)


def clarabel_solve(d, tol):
    import clarabel
    import scipy.sparse as sp

    s = clarabel.DefaultSettings()
    s.verbose = False
    s.tol_gap_abs = s.tol_gap_rel = s.tol_feas = tol
    s.tol_ktratio = min(s.tol_ktratio, tol)
    K = sp.csc_matrix(np.vstack([d["A"], d["G"]]))
    cones = [clarabel.ZeroConeT(len(d["b"])), clarabel.NonnegativeConeT(len(d["h"]))]
    solver = clarabel.DefaultSolver(sp.csc_matrix(np.triu(d["Q"])), d["c"], K,
                                    np.concatenate([d["b"], d["h"]]), cones, s)
    out = solver.solve()
    if tol < 1e-9 and str(out.status) != "Solved":
        raise RuntimeError(f"the Clarabel reference ended {out.status}")
    return np.array(out.x)


def osqp_solve(d, tol):
    import osqp
    import scipy.sparse as sp

    n = len(d["c"])
    K = sp.csc_matrix(np.vstack([d["A"], d["G"]]))
    lo = np.concatenate([d["b"], -np.inf * np.ones(len(d["h"]))])
    up = np.concatenate([d["b"], d["h"]])
    prob = osqp.OSQP()
    prob.setup(sp.csc_matrix(np.triu(d["Q"])), d["c"], K, lo, up, eps_abs=tol, eps_rel=tol,
               max_iter=200000, verbose=False, polishing=True)
    del n
    return np.array(prob.solve().x)


def proxqp_solve(d, tol):
    import proxsuite

    n, p, m = len(d["c"]), len(d["b"]), len(d["h"])
    qp = proxsuite.proxqp.dense.QP(n, p, m)
    qp.settings.eps_abs = tol
    qp.settings.eps_rel = 0.0
    qp.settings.verbose = False
    qp.init(d["Q"], d["c"], d["A"], d["b"], d["G"], -1e20 * np.ones(m), d["h"])
    qp.solve()
    return np.array(qp.results.x)


def measure(d, x, x_ref):
    viol = max(np.max(np.abs(d["A"] @ x - d["b"]), initial=0.0),
               np.max(d["G"] @ x - d["h"], initial=0.0))
    err = np.max(np.abs(x - x_ref)) / max(1.0, np.max(np.abs(x_ref)))
    return err, viol


def time_host(fn, repeats):
    times, cpu = [], []
    out = None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return out, statistics.median(times), statistics.median(cpu)


def time_jax(fn, args, repeats):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    out = jax.block_until_ready(compiled(*args))
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    # Process CPU time next to wall time: on a loaded machine the wall time also counts the
    # time other processes held the core.
    return out, statistics.median(times), statistics.median(cpu), compile_s


def ours(Q, c, A, b, G, h):
    s = solve_qp(Q, c, A, b, G, h, rtol=TOL, throw=False)
    return s.x, s.stats["num_steps"]


def ours_tight(Q, c, A, b, G, h):
    # Our gap test is relative to |objective|: at rtol = 1e-8 x is good to ~1e-6 only, so
    # this row shows the cost of matching the others' accuracy in x.
    s = solve_qp(Q, c, A, b, G, h, rtol=1e-10, throw=False)
    return s.x, s.stats["num_steps"]


def ours_admm(Q, c, A, b, G, h):
    # OSQP's ADMM with active-set polishing (a polish is tried each time the ADMM residuals
    # fall another decade below 1e-3; it ends the run when it meets the tolerance).
    s = solve_qp(Q, c, A, b, G, h, method="admm", rtol=TOL, throw=False)
    return s.x, s.stats["num_steps"]


def ours_admm_plain(Q, c, A, b, G, h):
    s = solve_qp(Q, c, A, b, G, h, method=ADMM(polish=False), rtol=TOL, max_steps=50_000,
                 throw=False)
    return s.x, s.stats["num_steps"]


def qpax_fn(Q, c, A, b, G, h):
    import qpax

    x, s, z, y, converged, iters = qpax.solve_qp(Q, c, A, b, G, h, solver_tol=TOL)
    return x, iters


def jaxopt_osqp(Q, c, A, b, G, h):
    from jaxopt import OSQP

    sol = OSQP(tol=TOL, maxiter=20000).run(params_obj=(Q, c), params_eq=(A, b),
                                            params_ineq=(G, h))
    return sol.params.primal, sol.state.iter_num


def _row(rows, prob, name, run=float("nan"), cpu=float("nan"), comp=None, err=float("nan"),
         viol=0.0, steps=None):
    rows.append(dict(prob=prob, name=name, run=run, cpu=cpu, comp=comp, err=err, viol=viol,
                     steps=steps))


def _failed(rows, prob, name, e, jax_row=True):
    _row(rows, prob, name, comp=float("nan") if jax_row else None,
         viol=f"error: {type(e).__name__}")


def _steps(v):
    """Iterations of a run; of a batch, "mean / max" (under vmap every problem pays the max)."""
    v = np.asarray(v)
    return str(int(v)) if v.ndim == 0 else f"{v.mean():.1f} / {v.max()}"


def single(n, repeats, rows):
    d = make(n, n, n // 2, n // 10)
    x_ref = clarabel_solve(d, 1e-10)
    args = tuple(jnp.asarray(d[k]) for k in ("Q", "c", "A", "b", "G", "h"))
    times = {}
    for name, fn in (("jaxopt2 solve_qp", ours), ("jaxopt2 solve_qp rtol=1e-10", ours_tight),
                     ("jaxopt2 ADMM (polish)", ours_admm),
                     ("jaxopt2 ADMM (no polish)", ours_admm_plain),
                     ("qpax", qpax_fn), ("jaxopt OSQP", jaxopt_osqp)):
        try:
            (x, steps), run, cpu, comp = time_jax(fn, args, repeats)
            err, viol = measure(d, np.asarray(x), x_ref)
            _row(rows, f"n={n}", name, run, cpu, comp, err, viol, _steps(steps))
            times[name] = (run, err)
        except Exception as e:  # a library that fails is reported, not fatal
            _failed(rows, f"n={n}", name, e)
    try:
        equal_time(n, d, args, x_ref, times, repeats)
    except Exception as e:
        print(f"equal time n={n}: failed ({type(e).__name__}: {e})")
    for name, fn in (("clarabel", clarabel_solve), ("osqp", osqp_solve),
                     ("proxsuite", proxqp_solve)):
        try:
            x, run, cpu = time_host(lambda fn=fn: fn(d, TOL), repeats)
            err, viol = measure(d, x, x_ref)
            _row(rows, f"n={n}", name, run, cpu, None, err, viol)
        except Exception as e:
            _failed(rows, f"n={n}", name, e, jax_row=False)


def equal_time(n, d, args, x_ref, times, repeats):
    """jaxopt's OSQP stopped after as long as ours took (its iterations fixed, tol = 0):
    the accuracy it reaches in that time, against ours."""
    from jaxopt import OSQP

    def run(maxiter):
        def fn(Q, c, A, b, G, h):
            sol = OSQP(tol=1e-30, maxiter=maxiter).run(params_obj=(Q, c), params_eq=(A, b),
                                                        params_ineq=(G, h))
            return sol.params.primal
        return time_jax(fn, args, repeats)

    probe = 200
    _, t_probe, _, _ = run(probe)
    per_iter = t_probe / probe
    for name in ("jaxopt2 ADMM (polish)", "jaxopt2 solve_qp rtol=1e-10"):
        if name not in times:
            continue
        t_ours, err_ours = times[name]
        k = max(1, int(t_ours / per_iter))
        x, t, _, _ = run(k)
        err, viol = measure(d, np.asarray(x), x_ref)
        print(f"equal time n={n}: jaxopt OSQP {k} iterations, {t:.4f} s -> error {err:.1e}, "
              f"violation {viol:.1e}; {name} {t_ours:.4f} s -> error {err_ours:.1e}")


def batch(count, repeats, rows):
    ds = [make(1000 + i, 20, 10, 2) for i in range(count)]
    refs = [clarabel_solve(d, 1e-10) for d in ds]
    args = tuple(jnp.asarray(np.stack([d[k] for d in ds])) for k in ("Q", "c", "A", "b", "G", "h"))

    def errors(xs):
        e = [measure(d, np.asarray(x), r) for d, x, r in zip(ds, xs, refs, strict=True)]
        return max(a for a, _ in e), max(v for _, v in e)

    tag = f"batch {count}×(n=20)"
    fwd = {}
    for name, fn in (("jaxopt2 solve_qp", ours), ("jaxopt2 solve_qp rtol=1e-10", ours_tight),
                     ("jaxopt2 ADMM (polish)", ours_admm), ("qpax", qpax_fn),
                     ("jaxopt OSQP", jaxopt_osqp)):
        try:
            (x, steps), run, cpu, comp = time_jax(jax.vmap(fn), args, repeats)
            _row(rows, tag + " fwd", name, run, cpu, comp, *errors(x), _steps(steps))
            fwd[name] = (run, cpu)
        except Exception as e:
            _failed(rows, tag + " fwd", name, e)
    xs, run, cpu = time_host(lambda: [clarabel_solve(d, TOL) for d in ds], max(1, repeats // 2))
    _row(rows, tag + " fwd", "clarabel (loop)", run, cpu, None, *errors(xs))
    fwd["clarabel (loop)"] = (run, cpu)

    def loss_of(fn):
        def loss(Q, c, A, b, G, h):
            x = jax.vmap(lambda *a: fn(*a)[0])(Q, c, A, b, G, h)
            return jnp.sum(x ** 2)
        return jax.grad(loss, argnums=(0, 1, 4, 5))

    import qpax

    def qpax_primal(Q, c, A, b, G, h):
        # qpax's default: derivatives of the problem relaxed to κ = 1e-3 (smoothed on purpose)
        return (qpax.solve_qp_primal(Q, c, A, b, G, h, solver_tol=TOL),)

    def qpax_exact(Q, c, A, b, G, h):
        return (qpax.solve_qp_primal(Q, c, A, b, G, h, solver_tol=TOL, target_kappa=1e-10),)

    grads, bwd = {}, {}
    for name, fn in (("jaxopt2 solve_qp", ours), ("jaxopt2 solve_qp rtol=1e-10", ours_tight),
                     ("jaxopt2 ADMM (polish)", ours_admm), ("qpax", qpax_primal),
                     ("qpax κ=1e-10", qpax_exact)):
        try:
            g, run, cpu, comp = time_jax(loss_of(fn), args, repeats)
            grads[name] = g
            bwd[name] = (run, cpu)
            _row(rows, tag + " fwd+bwd", name, run, cpu, comp)
        except Exception as e:
            _failed(rows, tag + " fwd+bwd", name, e)
    for other in ("qpax", "qpax κ=1e-10"):
        if other in grads and "jaxopt2 solve_qp rtol=1e-10" in grads:
            a, b = grads["jaxopt2 solve_qp rtol=1e-10"], grads[other]
            rel = max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(u)))
                      for u, v in zip(a, b, strict=True))
            print(f"fwd+bwd: largest relative difference (d/dQ, c, G, h) between ours and "
                  f"{other}: {rel:.2e}")
    # The targets, as ratios of times measured in this one process (wall; CPU).
    ipm = "jaxopt2 solve_qp rtol=1e-10"  # the row with qpax's accuracy in x
    for label, table, other in (("fwd", fwd, "qpax"), ("fwd+bwd", bwd, "qpax κ=1e-10"),
                                ("fwd+bwd", bwd, "qpax")):
        if ipm in table and other in table:
            (w1, c1), (w2, c2) = table[ipm], table[other]
            print(f"ratio {label}: our interior point / {other} = {w1 / w2:.2f} wall, "
                  f"{c1 / c2:.2f} CPU (target ≤ 0.5)")
    if ipm in fwd:
        (w1, c1), (w2, c2) = fwd[ipm], fwd["clarabel (loop)"]
        print(f"ratio fwd: clarabel loop / our interior point = {w2 / w1:.1f}× wall, "
              f"{c2 / c1:.1f}× CPU (target ≥ 5)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--no-batch", action="store_true")
    parser.add_argument("--no-single", action="store_true")
    opts = parser.parse_args()
    rows = []
    sizes = () if opts.no_single else (100,) if opts.quick else (100, 500)
    for n in sizes:
        single(n, 3 if n <= 100 else 1, rows)
    if not opts.no_batch:
        batch(32 if opts.quick else 256, 5, rows)
    print(f"load average {os.getloadavg()}; process CPU time {time.process_time():.1f} s")
    print("| problem | solver | run (s) | CPU (s) | compile (s) | iterations | error in x "
          "| max violation |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        comp_s = "" if r["comp"] is None else f"{r['comp']:.2f}"
        viol, err = r["viol"], r["err"]
        viol_s = viol if isinstance(viol, str) else f"{viol:.1e}"
        err_s = "" if np.isnan(err) and not isinstance(viol, str) else f"{err:.1e}"
        if r["prob"].endswith("fwd+bwd") and not isinstance(viol, str):
            viol_s = ""
        print(f"| {r['prob']} | {r['name']} | {r['run']:.4f} | {r['cpu']:.4f} | {comp_s} | "
              f"{r['steps'] or ''} | {err_s} | {viol_s} |")


if __name__ == "__main__":
    main()
