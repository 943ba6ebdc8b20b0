"""Systems of equations with jaxopt2: least squares, root finding and fixed points.

    python examples/equations.py --config configs/equations.yaml

Three problems, each through its front door:

1. Curve fitting (`least_squares`): a Gaussian peak on a linear baseline, fitted to noisy
   spectra with pytree parameters, by Levenberg–Marquardt and Gauss–Newton; a whole batch of
   spectra is fitted at once with `vmap`, and the sensitivity of the fitted peak centre to the
   data comes from `jax.grad` (implicit differentiation, no unrolling).
2. The 1-D Bratu problem −u'' = λ eᵘ (`root_find`) by Jacobian-free Newton–Krylov, which finds
   the Jacobian's banded structure by itself; du/dλ by implicit differentiation (`jax.jacfwd`),
   checked against a central finite difference. The adjoint system is the Bratu Jacobian, a
   tridiagonal matrix with condition number ≈ 4(n+1)²/π² (4·10⁷ at n = 10,000): the default
   adjoint solver (unpreconditioned GMRES) cannot solve it and says so (`adjoint_failed`), so
   the example passes `ImplicitAdjoint(linear_solver=ProbedTridiagonal())`, a lineax solver
   that reads the three diagonals off three Jacobian-vector products and solves directly.
3. A deep-equilibrium layer y = tanh(W y + U x) (`fixed_point`) by Anderson acceleration and
   plain iteration, with the gradient of a loss on y* with respect to W. W is symmetric with
   spectral radius `contraction` and the input is weak (`input_scale`), so the layer's Jacobian
   at y* has spectral radius near 1, as in a trained DEQ: plain iteration is slow there and
   Anderson has something to accelerate (the printed spectral radius and step counts show it).

Prints a table (steps, evaluations, compile and run time, residual, status) and saves a plot.
Runs unchanged on CPU, GPU or TPU.

Precision: float64, needed. The Bratu residual is scaled by 1/h² = (n+1)² (10⁸ at the full
size) and its Jacobian's condition number is ~10⁷, so float32 can resolve neither the root to
tolerance nor the derivative to more than a digit or two.

Expected output (measured on CPU; tolerances cover platform differences):
- full (configs/equations.yaml, n = 10,000; 33 s of CPU time, mostly compiling, 2 min wall on a
  loaded 2-core CPU): du/dλ at the midpoint = 0.1592 (±1e-3),
  finite-difference relative error < 1e-5; DEQ (width 256) spectral radius 0.95 (±0.02),
  Anderson 161 steps (max over the batch, ±30) against plain iteration 784 (±80).
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
    write_metrics,
    write_results,
)

DEFAULTS = {
    "dtype": "float64",
    "seed": 0,  # the curve-fit data draw from PRNGKey(seed), the DEQ layer from PRNGKey(seed + 1)
    "curve_fit": {"points": 200, "batch": 64, "noise": 0.02,
                  "solvers": ["LevenbergMarquardt", "GaussNewton"]},
    "bratu": {"n": 10000, "lam": 1.0},
    "deq": {"width": 256, "batch": 32, "contraction": 0.99, "input_scale": 0.1,
            "solvers": ["Anderson", "FixedPointIteration"]},
    "max_steps": 1000,
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

    key = jax.random.PRNGKey(int(config["seed"]))
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

    # the adjoint system (the Bratu Jacobian) is tridiagonal and ill-conditioned: solve it
    # directly instead of by GMRES (which fails at n = 10,000 and raises adjoint_failed)
    adjoint = jaxopt2.ImplicitAdjoint(linear_solver=ProbedTridiagonal())
    solve_bratu = jax.jit(lambda lam: jaxopt2.root_find(
        bratu, jnp.zeros(n, dtype), lam, solver=jaxopt2.NewtonKrylov(), max_steps=max_steps,
        adjoint=adjoint))
    lam = jnp.asarray(br["lam"], dtype)
    sol_b, c, r = timed(solve_bratu, lam)
    record(f"Bratu n={n}", "NewtonKrylov", sol_b, c, r, jnp.max(jnp.abs(sol_b.value)))
    du_dlam = jax.jit(jax.jacfwd(lambda lam: solve_bratu(lam).params))(lam)
    # check against a central finite difference at the midpoint (float64: step 1e-4 leaves a
    # truncation error ~1e-9 and a round-off error ~1e-11)
    fd_h = 1e-4
    du_fd = float((solve_bratu(lam + fd_h).params[n // 2]
                   - solve_bratu(lam - fd_h).params[n // 2]) / (2 * fd_h))
    du_mid = float(du_dlam[n // 2])
    fd_rel = abs(du_mid - du_fd) / max(abs(du_fd), 1e-30)

    # 3. Deep-equilibrium layer -------------------------------------------------------------
    dq = config["deq"]
    width, batch = int(dq["width"]), int(dq["batch"])
    deq_steps = {}
    kw, ku, kx = jax.random.split(jax.random.PRNGKey(int(config["seed"]) + 1), 3)
    # symmetric W with spectral radius `contraction`, weak input: tanh stays near its linear
    # part, so the layer's Jacobian at y* keeps a spectral radius near `contraction`
    A = jax.random.normal(kw, (width, width), dtype)
    A = A + A.T
    W = dq["contraction"] * A / jnp.max(jnp.abs(jnp.linalg.eigvalsh(A)))
    U = dq["input_scale"] * jax.random.normal(ku, (width, 8), dtype) / jnp.sqrt(8.0)
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
        deq_steps[name] = np.asarray(sol.stats["num_steps"])
        y_star = sol.params[0]
    # spectral radius of ∂g/∂y = diag(1 − y*²) W at the first example's fixed point, from the
    # similar symmetric matrix D^½ W D^½ (eigvalsh runs on every backend)
    d_half = jnp.sqrt(1.0 - y_star**2)
    rho = float(jnp.max(jnp.abs(jnp.linalg.eigvalsh(d_half[:, None] * W * d_half[None, :]))))

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
    if not fd_rel <= 1e-4:
        failures.append(f"du/dλ at the midpoint {du_mid:.6g} disagrees with its central "
                        f"finite difference {du_fd:.6g} (relative error {fd_rel:.1e})")

    # Report --------------------------------------------------------------------------------
    header = ("| problem | solver | steps (max) | evaluations (max) | compile s | run s | "
              "error / residual | status |\n|---|---|---|---|---|---|---|---|")
    lines = [header] + [f"| {p} | {s} | {k} | {e} | {c:.2f} | {r:.4f} | {res:.2e} | {st} |"
                        for p, s, k, e, c, r, res, st in rows]
    table = "\n".join(lines)
    print(table)
    steps_text = "; ".join(f"{k} {int(v.max())} steps (max over the batch), {v.mean():.1f} "
                           "(mean)" for k, v in deq_steps.items())
    summary = (f"d centre / d data: max |.| = {float(jnp.max(jnp.abs(sensitivity))):.3e}\n"
               f"du/dλ at the midpoint = {du_mid:.6f} (implicit, jacfwd); central finite "
               f"difference {du_fd:.6f}, relative error {fd_rel:.1e}\n"
               f"DEQ: spectral radius of the layer's Jacobian at y* = {rho:.3f}; "
               f"{steps_text}\n|d loss / dW| = {float(jnp.linalg.norm(grad_W)):.3e}")
    print("\n" + summary)
    out = prepare_output_dir(config)
    write_results(out, table, summary.replace("\n", "  \n"))
    write_metrics(out, {"du_dlam_mid": du_mid, "du_dlam_fd": du_fd, "fd_relative_error": fd_rel,
                        "deq_spectral_radius": rho,
                        "deq_steps_max": {k: int(v.max()) for k, v in deq_steps.items()},
                        "deq_steps_mean": {k: float(v.mean()) for k, v in deq_steps.items()}})
    _plot(out, t, data[0], model, fit_one(data[0]), sol_b.params,
          du_dlam if all_finite(du_dlam) else None, float(lam), deq_steps, rho)
    return exit_code(failures)


def _probed_tridiagonal_class():
    import jax
    import jax.numpy as jnp
    import lineax as lx

    class ProbedTridiagonal(lx.AbstractLinearSolver):
        """Direct solve of a matrix-free operator known to be tridiagonal (one unknown
        array): its three diagonals from three operator products (probe j sums the columns
        ≡ j mod 3, which never meet in a row of a tridiagonal matrix), then lineax's
        pivoted tridiagonal solve."""

        def init(self, operator, options):
            n = operator.in_size()
            i = jnp.arange(n)
            probes = (i[None, :] % 3 == jnp.arange(3)[:, None]).astype(
                operator.in_structure().dtype)
            cols = jax.vmap(operator.mv)(probes)  # cols[j, r] = Σ_{c ≡ j mod 3} A[r, c]
            diag = cols[i % 3, i]
            lower = cols[i[:-1] % 3, i[1:]]  # A[r + 1, r]
            upper = cols[i[1:] % 3, i[:-1]]  # A[r, r + 1]
            return lx.TridiagonalLinearOperator(diag, lower, upper)

        def compute(self, state, vector, options):
            return lx.Tridiagonal().compute(lx.Tridiagonal().init(state, {}), vector, options)

        def transpose(self, state, options):
            return state.transpose(), options

        def conj(self, state, options):
            return state, options

        def assume_full_rank(self):
            return True

    return ProbedTridiagonal


def ProbedTridiagonal():  # noqa: N802 (builds the class on first use: lineax loads lazily)
    return _probed_tridiagonal_class()()


def with_centre(params, centre):
    return {"peak": {**params["peak"], "centre": centre}, "baseline": params["baseline"]}


def _plot(out, t, y, model, params, u, du, lam, deq_steps, rho):
    import numpy as np

    plt = pyplot()

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    a.plot(t, y, ".", ms=3, label="data")
    a.plot(t, model(params, t), label="Levenberg–Marquardt fit")
    a.set(title="Gaussian peak on a baseline (first spectrum of the batch)", xlabel="t",
          ylabel="signal")
    a.legend()
    x = np.linspace(0, 1, len(u) + 2)[1:-1]
    b.plot(x, u, label=f"u (Bratu, λ = {lam:g})")
    if du is not None:  # no curve (and no legend entry) for NaN derivatives
        b.plot(x, du, "--", label="du/dλ (implicit)")
    b.set(title="Bratu problem by Newton–Krylov", xlabel="x", ylabel="u, du/dλ")
    b.legend()
    names = list(deq_steps)
    pos = np.arange(len(names))
    c.bar(pos - 0.2, [deq_steps[k].mean() for k in names], 0.4, label="mean over the batch")
    c.bar(pos + 0.2, [deq_steps[k].max() for k in names], 0.4, label="max over the batch")
    c.set_xticks(pos, names)
    c.set(title=f"DEQ fixed point (spectral radius {rho:.2f} at y*)", ylabel="steps")
    c.legend()
    fig.tight_layout()
    save_figure(fig, out, "equations.png")


if __name__ == "__main__":
    raise SystemExit(main())
