"""A long-only portfolio with budget and risk constraints, and the derivative of the optimal
portfolio with respect to the expected returns.

    python examples/constrained.py --config configs/constrained.yaml

Synthetic market (fixed seed): `assets` returns from a `factors`-factor model, covariance
Σ = BBᵀ + diag(d), expected returns μ. The portfolio w solves

    max_w μᵀw − (τ/2)‖w − w_ref‖²   s.t.   Σᵢ wᵢ = 1  (budget),   wᵀΣw ≤ σ²  (risk),
                                          0 ≤ wᵢ ≤ cap  (long only, position cap),

with a small turnover penalty τ around the equal-weight portfolio w_ref (it makes the solution
unique and smooth in μ). Solved by `jaxopt2.minimize_constrained` with
`AugmentedLagrangian` (an equality, a nonlinear inequality and bounds), then:

1. **Checks**: KKT residuals, the risk constraint active (its multiplier > 0), the solution
   against SciPy's SLSQP on the same problem.
2. **dw*/dμ** (`jax.jacobian`, by implicit differentiation of the KKT conditions of the active
   set: the budget, the risk constraint and the bounds that hold): assets at a bound do not
   move; on the free assets the columns sum to zero (the budget); checked against central
   finite differences of the whole solve.
3. **A what-if**: raise the expected return of one asset by 1% of its value and predict the new
   portfolio by the first-order Taylor step w* + (dw*/dμ)·Δμ; compared with a re-solve.

Outputs: `constrained.png` (the weights and the sensitivity matrix), `metrics.json`,
`results.md`, `config.yaml`. Exits 1 if a solve fails or a check does not hold.

Expected output (CPU, float64): smoke (configs/constrained_smoke.yaml, 12 assets) and full
(configs/constrained.yaml, 40 assets): status successful, KKT residuals < 1e-8, risk active,
‖w − w_SLSQP‖∞ < 1e-5, finite-difference relative error of dw*/dμ < 1e-4, Taylor prediction
error of the what-if ≤ 1e-2 of the change (the step is 1% of μⱼ: the error is second order).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    exit_code,
    markdown_table,
    prepare_output_dir,
    pyplot,
    save_figure,
    setup,
    write_metrics,
    write_results,
)

DEFAULTS = {
    "dtype": "float64",
    "seed": 0,
    "assets": 40,
    "factors": 3,
    "risk_ratio": 0.6,  # σ² = risk_ratio · (variance of the equal-weight portfolio)
    "cap": 0.25,  # the largest weight of one asset
    "turnover": 0.05,  # τ
    "rtol": 2.0e-10,  # the KKT tolerance of the solves
    "fd_step": 1.0e-4,
    "fd_columns": 4,  # columns of dw*/dμ checked by finite differences
    "output_dir": "outputs/constrained",
}


def market(config, dtype):
    import numpy as np

    rng = np.random.default_rng(config["seed"])
    n, k = config["assets"], config["factors"]
    B = 0.15 * rng.standard_normal((n, k))
    d = (0.1 + 0.2 * rng.random(n)) ** 2
    Sigma = B @ B.T + np.diag(d)
    mu = 0.03 + 0.4 * (np.diag(Sigma) ** 0.5) * rng.random(n)  # riskier assets tend to pay
    w_ref = np.full(n, 1.0 / n)
    sigma2 = config["risk_ratio"] * w_ref @ Sigma @ w_ref
    return Sigma.astype(dtype), mu.astype(dtype), w_ref.astype(dtype), float(sigma2)


def main(argv=None) -> int:
    config = setup(__doc__, DEFAULTS, argv, script=__file__)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from scipy.optimize import minimize as scipy_minimize

    import jaxopt2

    dtype = np.float64 if config["dtype"] == "float64" else np.float32
    Sigma, mu0, w_ref, sigma2 = market(config, dtype)
    n, tau, cap = config["assets"], config["turnover"], config["cap"]
    Sigma_j, w_ref_j = jnp.asarray(Sigma), jnp.asarray(w_ref)
    failures = []

    def objective(w, mu):
        return -mu @ w + 0.5 * tau * jnp.sum((w - w_ref_j) ** 2)

    def budget(w, mu):
        return jnp.sum(w) - 1.0

    def risk(w, mu):
        return w @ Sigma_j @ w - jnp.asarray(sigma2, w.dtype)

    # Tight: the finite-difference check divides a difference of two solves by 2h.
    solver = jaxopt2.AugmentedLagrangian(rtol=config["rtol"])

    @jax.jit
    def solve(mu):
        return jaxopt2.minimize_constrained(objective, w_ref_j, mu, eq=budget, ineq=risk,
                                            bounds=(0.0, cap), solver=solver, throw=False)

    start = time.perf_counter()
    mu = jnp.asarray(mu0)
    sol = solve(mu)
    w = np.asarray(sol.params)
    status = jaxopt2.status_name(sol.status)
    kkt = {k: float(sol.stats[k]) for k in ("kkt_stationarity", "kkt_feasibility",
                                            "kkt_complementarity")}
    risk_mult = float(sol.multipliers["ineq"])
    print(f"status {status}, {int(sol.stats['num_steps'])} outer steps, KKT {kkt}, "
          f"risk multiplier {risk_mult:.4g}, {int((w > 0).sum())} assets held, "
          f"{int((w >= cap).sum())} at the cap")
    if status != "successful" or max(kkt.values()) > 1e-7:
        failures.append(f"the solve ended {status} with KKT residuals {kkt}")
    if not risk_mult > 0:
        failures.append("the risk constraint is not active; lower risk_ratio")

    # SLSQP on the same problem, with exact gradients.
    f_np = jax.jit(lambda w: objective(w, mu))
    g_np = jax.jit(jax.grad(lambda w: objective(w, mu)))
    ref = scipy_minimize(
        lambda w: float(f_np(w)), np.asarray(w_ref), jac=lambda w: np.asarray(g_np(w)),
        method="SLSQP", bounds=[(0.0, cap)] * n,
        constraints=[dict(type="eq", fun=lambda w: np.sum(w) - 1.0, jac=lambda w: np.ones(n)),
                     dict(type="ineq", fun=lambda w: sigma2 - w @ Sigma @ w,
                          jac=lambda w: -2 * Sigma @ w)],
        options=dict(ftol=1e-14, maxiter=1000))
    slsqp_gap = float(np.max(np.abs(ref.x - w)))
    print(f"SLSQP: {ref.message}; max |w − w_SLSQP| = {slsqp_gap:.2e}")
    if slsqp_gap > 1e-5:
        failures.append(f"the portfolio differs from SLSQP's by {slsqp_gap:.2e}")

    # dw*/dμ by implicit differentiation, against finite differences of the solve.
    jac = np.asarray(jax.jit(jax.jacobian(lambda m: solve(m).params))(mu))
    h = config["fd_step"]
    held = np.flatnonzero((w > 1e-9) & (w < cap - 1e-9))
    columns = held[: config["fd_columns"]].tolist()
    fd_err = 0.0
    for j in columns:
        e = jnp.zeros(n, mu.dtype).at[j].set(h)
        fd = (np.asarray(solve(mu + e).params) - np.asarray(solve(mu - e).params)) / (2 * h)
        fd_err = max(fd_err, float(np.max(np.abs(fd - jac[:, j])) / np.max(np.abs(fd))))
    bound_rows = np.flatnonzero((w <= 1e-12) | (w >= cap - 1e-12))
    print(f"dw*/dμ: columns {columns} against finite differences, relative error "
          f"{fd_err:.2e}; rows at a bound all zero: "
          f"{bool(np.all(jac[bound_rows] == 0))}; column sums ≤ {np.max(np.abs(jac.sum(0))):.1e}")
    if not fd_err < 1e-4:
        failures.append(f"dw*/dμ differs from finite differences by {fd_err:.2e}")

    # What-if: +1% on the expected return of the largest holding.
    j = int(np.argmax(w))
    delta = jnp.zeros(n, mu.dtype).at[j].set(0.01 * mu[j])
    resolved = np.asarray(solve(mu + delta).params)
    predicted = w + jac @ np.asarray(delta)
    change = float(np.max(np.abs(resolved - w)))
    taylor_err = float(np.max(np.abs(predicted - resolved)))
    print(f"what-if μ[{j}] += 1%: the portfolio moves by {change:.3e} (max-norm); the "
          f"first-order prediction is off by {taylor_err:.2e}")
    if taylor_err > 1e-2 * max(change, 1e-12) and taylor_err > 1e-9:
        failures.append(f"the Taylor prediction is off by {taylor_err:.2e} for a change of "
                        f"{change:.2e}")
    seconds = time.perf_counter() - start

    rows = [(int(i), float(w[i]), float(mu0[i]), float(np.sqrt(Sigma[i, i])),
             float(jac[i, i])) for i in np.argsort(-w)[:10]]
    table = markdown_table(("asset", "weight", "expected return", "volatility", "dwᵢ/dμᵢ"),
                           rows)
    print(table)
    out = prepare_output_dir(config)
    summary = (f"status {status}; risk multiplier {risk_mult:.4g}; |w − w_SLSQP| "
               f"{slsqp_gap:.1e}; dw/dμ finite-difference error {fd_err:.1e}; what-if Taylor "
               f"error {taylor_err:.1e} for a change of {change:.1e}; {seconds:.1f} s")
    write_results(out, table, summary)
    write_metrics(out, {
        "status": status, "kkt": kkt, "risk_multiplier": risk_mult,
        "budget": float(np.sum(w)), "risk": float(w @ Sigma @ w), "sigma2": sigma2,
        "min_weight": float(w.min()), "max_weight": float(w.max()), "weights": w.tolist(),
        "slsqp_max_abs_diff": slsqp_gap, "fd_relative_error": fd_err,
        "fd_columns": columns, "jacobian_bound_rows_zero": bool(np.all(jac[bound_rows] == 0)),
        "jacobian_column_sums_max": float(np.max(np.abs(jac.sum(0)))),
        "what_if": {"asset": j, "change": change, "taylor_error": taylor_err},
        "seconds": seconds})
    try:
        print(f"saved {_plot(w, jac, cap, out)}")
    except Exception as e:  # noqa: BLE001 - the numbers are the result; the figure is extra
        print(f"no plot: {e}")
    return exit_code(failures)


def _plot(w, jac, cap, out) -> str:
    import numpy as np

    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    a1.bar(np.arange(w.size), w, color="C0")
    a1.axhline(cap, color="k", ls="--", lw=1, label=f"cap {cap}")
    a1.set(xlabel="asset", ylabel="weight", title="optimal long-only portfolio")
    a1.legend()
    lim = np.max(np.abs(jac)) or 1.0
    im = a2.imshow(jac, cmap="RdBu_r", vmin=-lim, vmax=lim)
    a2.set(xlabel="μⱼ", ylabel="wᵢ", title="dw*/dμ (implicit differentiation)")
    fig.colorbar(im, ax=a2)
    fig.tight_layout()
    return save_figure(fig, out, "constrained.png")


if __name__ == "__main__":
    sys.exit(main())
