"""Systems of equations with jaxopt2: least squares, root finding and fixed points.

    python examples/equations.py --config configs/equations.yaml

Three problems, each through its front door:

1. Curve fitting (`least_squares`): a Gaussian peak on a linear baseline, fitted to noisy
   spectra with pytree parameters, by Levenberg–Marquardt and Gauss–Newton; a whole batch of
   spectra is fitted at once with `vmap`, and the sensitivity of the fitted peak centre to the
   data comes from `jax.grad` (implicit differentiation, no unrolling).
2. The 1-D Bratu problem −u'' = λ eᵘ (`root_find`) by Jacobian-free Newton–Krylov, which finds
   the Jacobian's banded structure by itself; du/dλ by implicit differentiation.
3. A deep-equilibrium layer y = tanh(W y + U x) (`fixed_point`) by Anderson acceleration and
   plain iteration, with the gradient of a loss on y* with respect to W.

Prints a table (steps, evaluations, compile and run time, residual, status) and saves a plot.
Runs unchanged on CPU, GPU or TPU.
"""

from __future__ import annotations

import os
import sys

# examples/ is not on sys.path when the tests load this file by path; _common lives there
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    all_finite,
    exit_code,
    prepare_output_dir,
    pyplot,
    save_figure,
    setup,
    solver_names,
    timed,
    write_results,
)

DEFAULTS = {
    "dtype": "float64",
    "curve_fit": {"points": 200, "batch": 64, "noise": 0.02,
                  "solvers": ["LevenbergMarquardt", "GaussNewton"]},
    "bratu": {"n": 10000, "lam": 1.0},
    "deq": {"width": 256, "batch": 32, "contraction": 0.9,
            "solvers": ["Anderson", "FixedPointIteration"]},
    "max_steps": 200,
    "output_dir": "outputs/equations",
}


def main(argv=None) -> int:
    config = setup(__doc__, DEFAULTS, argv, script=__file__, choices={
        "curve_fit.solvers": lambda: solver_names("AbstractLeastSquaresSolver"),
        "deq.solvers": lambda: solver_names("AbstractFixedPointSolver")})
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxopt2

    dtype = jnp.dtype(config["dtype"])
    max_steps = int(config["max_steps"])
    rows = []

    def record(problem, solver, sol, compile_s, run_s, residual):
        status = np.asarray(sol.status._value)
        ok = bool(np.all(status == jaxopt2.RESULTS.successful._value))
        steps = np.asarray(sol.stats["num_steps"])
        evals = {k: int(np.max(v)) for k, v in sol.stats.items() if k != "num_steps"}
        evals = ", ".join(f"{k[4:]} {v}" for k, v in evals.items() if v)
        rows.append((problem, solver, int(np.max(steps)), evals, compile_s, run_s,
                     float(residual), "ok" if ok else "FAILED"))

    # 1. Curve fitting --------------------------------------------------------------------
    cf = config["curve_fit"]
    t = jnp.linspace(-1.0, 1.0, int(cf["points"]), dtype=dtype)

    def model(p, t):
        peak = p["peak"]
        return (peak["height"] * jnp.exp(-0.5 * ((t - peak["centre"]) / peak["width"]) ** 2)
                + p["baseline"][0] + p["baseline"][1] * t)

    key = jax.random.PRNGKey(0)
    kc, kn = jax.random.split(key)
    centres = jax.random.uniform(kc, (int(cf["batch"]),), dtype, -0.3, 0.3)
    true = {"peak": {"height": jnp.asarray(1.5, dtype), "centre": centres,
                     "width": jnp.asarray(0.15, dtype)},
            "baseline": jnp.asarray([0.2, -0.1], dtype)}
    clean = jax.vmap(lambda c: model(with_centre(true, c), t))(centres)
    data = clean + cf["noise"] * jax.random.normal(kn, clean.shape, dtype)
    p0 = {"peak": {"height": jnp.asarray(1.0, dtype), "centre": jnp.asarray(0.0, dtype),
                   "width": jnp.asarray(0.3, dtype)},
          "baseline": jnp.zeros(2, dtype)}
    residual = lambda p, y: model(p, t) - y

    for name in cf["solvers"]:
        solver = getattr(jaxopt2, name)()
        fit = jax.jit(jax.vmap(lambda y, solver=solver: jaxopt2.least_squares(
            residual, p0, y, solver=solver, max_steps=max_steps)))
        sol, c, r = timed(fit, data)
        err = jnp.max(jnp.abs(sol.params["peak"]["centre"] - centres))
        record(f"curve fit ×{int(cf['batch'])}", name, sol, c, r, err)
    fit_one = lambda y: jaxopt2.least_squares(residual, p0, y,
                                              solver=jaxopt2.LevenbergMarquardt()).params
    sensitivity = jax.jit(jax.grad(lambda y: fit_one(y)["peak"]["centre"]))(data[0])

    # 2. Bratu ------------------------------------------------------------------------------
    br = config["bratu"]
    n = int(br["n"])
    h = 1.0 / (n + 1)

    def bratu(u, lam):
        padded = jnp.pad(u, 1)
        return (2 * u - padded[:-2] - padded[2:]) / h**2 - lam * jnp.exp(u)

    solve_bratu = jax.jit(lambda lam: jaxopt2.root_find(
        bratu, jnp.zeros(n, dtype), lam, solver=jaxopt2.NewtonKrylov(), max_steps=max_steps))
    lam = jnp.asarray(br["lam"], dtype)
    sol_b, c, r = timed(solve_bratu, lam)
    record(f"Bratu n={n}", "NewtonKrylov", sol_b, c, r, jnp.max(jnp.abs(sol_b.value)))
    du_dlam = jax.jit(jax.jacfwd(lambda lam: solve_bratu(lam).params))(lam)

    # 3. Deep-equilibrium layer -------------------------------------------------------------
    dq = config["deq"]
    width, batch = int(dq["width"]), int(dq["batch"])
    kw, ku, kx = jax.random.split(jax.random.PRNGKey(1), 3)
    W = jax.random.normal(kw, (width, width), dtype)
    W = dq["contraction"] * W / jnp.linalg.norm(W, 2)
    U = jax.random.normal(ku, (width, 8), dtype) / jnp.sqrt(8.0)
    xs = jax.random.normal(kx, (batch, 8), dtype)
    layer = lambda y, a: jnp.tanh(a[0] @ y + a[1] @ a[2])

    for name in dq["solvers"]:
        solver = getattr(jaxopt2, name)()
        deq = jax.jit(jax.vmap(lambda x, solver=solver: jaxopt2.fixed_point(
            layer, jnp.zeros(width, dtype), (W, U, x), solver=solver, max_steps=max_steps),
            in_axes=0))
        sol, c, r = timed(deq, xs)
        res = jnp.max(jnp.abs(sol.value - sol.params))
        record(f"DEQ width {width} ×{batch}", name, sol, c, r, res)

    def deq_loss(W):
        y = jax.vmap(lambda x: jaxopt2.fixed_point(layer, jnp.zeros(width, dtype), (W, U, x),
                                                   solver=jaxopt2.Anderson()).params)(xs)
        return jnp.mean(y**2)

    grad_W = jax.jit(jax.grad(deq_loss))(W)

    # Checks: every solve succeeded, every reported number is finite ----------------------
    failures = [f"{row[0]} by {row[1]}: the solve failed" for row in rows if row[-1] != "ok"]
    failures += [f"{what} is not finite (NaN or inf)" for what, value in (
        ("d centre / d data", sensitivity), ("du/dλ", du_dlam), ("d loss / dW", grad_W))
        if not all_finite(value)]

    # Report --------------------------------------------------------------------------------
    header = ("| problem | solver | steps (max) | evaluations (max) | compile s | run s | "
              "error / residual | status |\n|---|---|---|---|---|---|---|---|")
    lines = [header] + [f"| {p} | {s} | {k} | {e} | {c:.2f} | {r:.4f} | {res:.2e} | {st} |"
                        for p, s, k, e, c, r, res, st in rows]
    table = "\n".join(lines)
    print(table)
    print(f"\nd centre / d data: max |.| = {float(jnp.max(jnp.abs(sensitivity))):.3e}; "
          f"du/dλ at the midpoint = {float(du_dlam[n // 2]):.4f}; "
          f"|d loss / dW| = {float(jnp.linalg.norm(grad_W)):.3e}")
    out = prepare_output_dir(config)
    write_results(out, table)
    _plot(out, t, data[0], model, fit_one(data[0]),
          sol_b.params, du_dlam if all_finite(du_dlam) else None)  # no curve of NaNs
    return exit_code(failures)


def with_centre(params, centre):
    return {"peak": {**params["peak"], "centre": centre}, "baseline": params["baseline"]}


def _plot(out, t, y, model, params, u, du):
    import numpy as np

    plt = pyplot()

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(t, y, ".", ms=3, label="data")
    a.plot(t, model(params, t), label="Levenberg–Marquardt fit")
    a.set(title="Gaussian peak on a baseline", xlabel="t")
    a.legend()
    x = np.linspace(0, 1, len(u) + 2)[1:-1]
    b.plot(x, u, label="u (Bratu, λ = given)")
    if du is not None:
        b.plot(x, du, label="du/dλ (implicit)")
    b.set(title="Bratu problem by Newton–Krylov", xlabel="x")
    b.legend()
    fig.tight_layout()
    save_figure(fig, out, "equations.png")


if __name__ == "__main__":
    raise SystemExit(main())
