"""Sparse regression: an elastic-net path, and λ chosen by the gradient of the validation loss.

    python examples/sparse_regression.py --config configs/sparse_regression.yaml

scikit-learn's diabetes data (442 patients, 10 standardised features, a disease-progression
target), widened by decoy features: each is a real feature plus noise,
zⱼ = ρ·x_k + √(1 − ρ²)·ε, correlated with the truth but carrying nothing beyond it. The model
is the elastic net with an unpenalised intercept,

    min_{w,b} f(w, b) + h(w),   f = 1/(2n)·‖Xw + b − y‖²,   h = λ(α‖w‖₁ + (1 − α)‖w‖²/2),

solved by `jaxopt2.minimize` with `ProximalNewton` and `prox=jaxopt2.prox.elastic_net`
(`prox_args` a pytree with `None` for the intercept, so b is not penalised).

1. **The path**: λ on a geometric grid from λ_max = ‖X_cᵀy_c‖∞/(nα) (the smallest λ with
   w = 0; X_c, y_c centred) down to `path.ratio`·λ_max, each solve warm-started from the
   previous one. Why ProximalNewton: f is quadratic, so its Newton model is exact and each
   outer step is an inexact FISTA solve of the whole problem, stopped by a forcing sequence;
   it reaches the tight tolerance the derivative check needs in ~12 outer steps and ~13
   gradients per λ, where ProximalGradient needs ~230 steps and ~580 gradients (the decoys
   make XᵀX ill-conditioned). The price is Hessian-vector products: in products with X and Xᵀ
   it costs 1.2–1.4× ProximalGradient here (both are printed); it pays where a gradient costs
   more than an HVP or f is not quadratic. ProximalNewton's forcing sequence is relative to
   the current gradient mapping (Eisenstat–Walker), so a warm start skips the orders of
   magnitude it starts below; the warm path saves 16% of the products at full size and
   ~0 at smoke size, where nearly all the cost is the last, badly conditioned λ (measured
   after that change, below).
2. **The validation loss and its derivative**: L(θ) = 1/(2m)·‖X_val w*(λ) + b* − y_val‖² with
   λ = e^θ; `jax.grad` goes through the solve by implicit differentiation of the
   proximal-gradient fixed point (docs/guides/constraints.md): on the support S,
   dw_S/dλ = −(X_SᵀX_S/n + (1 − α)λI)⁻¹(α·sign(w_S) + (1 − α)w_S). Checked against a central
   finite difference at the starting point of step 3.
3. **λ by gradient descent** on θ = log λ (a few steps of θ ← θ − η·dL/dθ, each solve
   warm-started), compared with the grid's best λ on validation and on held-out test data.

Outputs: `sparse_regression.png` (the coefficient path against λ on a log axis, real features
coloured, decoys grey; the validation curve with the grid's best and the gradient-chosen λ
marked, and the descent's iterates), `metrics.json`, `results.md`, `config.yaml`. Exits 1 if
a solve fails or a reported number is not finite.

Precision: float64, needed for the printed finite-difference check and the tight inner
tolerance. The check divides L(θ + h) − L(θ − h) ≈ 2h·dL/dθ ≈ 2e-5 (h = `fd_step`) by 2h; in
float32 the losses (≈ 0.25) carry round-off of order 1e-7 and the inner solves cannot reach
`inner_atol` 1e-10, so the check would resolve a digit or two at best (an estimate, not
measured). The problem is 200 × 50, so float64 costs nothing here.

Expected output (measured on CPU, float64; tolerances cover platform differences):
- smoke (configs/sparse_regression_smoke.yaml, 20 decoys, 12 values of λ, 5 descent steps):
  λ_max = 0.6934 (±1e-3); dL/dlog λ at λ₀ = 0.3·λ_max: implicit 0.09611 (±1e-3), relative
  error against the finite difference 3e-8 (< 1e-5); grid's best λ = 0.03002 with validation
  loss 0.2078 and test loss 0.2644 (±0.002, 16 nonzeros); gradient descent: validation loss
  0.2773 → 0.2076 (±0.002) at λ = 0.0252 (±10%), test loss 0.2637 (±0.002, 17 nonzeros);
  ProximalNewton 108 steps, 5,542 products with X and Xᵀ (warm), ProximalGradient 1,862
  steps, 4,699 products; the path matches scikit-learn's `ElasticNet` to 1e-6.
- full (configs/sparse_regression.yaml, 40 decoys, 50 values of λ, 10 descent steps; 25 s
  wall on a shared 2-core CPU, 79 s under heavy load): λ_max = 0.6934; dL/dlog λ at λ₀:
  implicit 0.08680 (±1e-3), relative error 7e-7 (< 1e-5; 9e-10 in an earlier run: the
  difference quotient resolves the losses only to the inner solves' accuracy, about 1e-11
  here against a difference of 2e-5); grid's best λ = 0.01775 with validation loss 0.2304
  and test loss 0.2816 (±0.002, 32 nonzeros); gradient descent: validation loss 0.2768 →
  0.2303 (±0.002) at λ = 0.0188 (±10%), test loss 0.2812 (±0.002, 31 nonzeros). The minimum
  sits at a kink of the path (a coefficient enters the support at λ ≈ 0.0188, where
  dL/dlog λ jumps from −0.0016 to +0.0008): the descent stops there, one-sided derivatives
  alternating. ProximalNewton 502 steps, 38,598 products (warm) against 582 steps, 46,154
  products cold (every cold solve successful; a cold solve that failed would be reported,
  not fatal: the example uses the warm path); ProximalGradient 11,478 steps, 29,201
  products (measured before the forcing change, which does not touch it).
"""

from __future__ import annotations

import os
import sys
import time

# examples/ is not on sys.path when the tests load this file by path; _common lives there
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    all_finite,
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
    # decoys: count features zⱼ = ρ·x_k + √(1 − ρ²)·ε (k drawn at random), ρ = correlation
    "decoys": {"count": 40, "correlation": 0.8},
    "split": {"train": 200, "validation": 121},  # the rest of the 442 patients is the test set
    "l1_ratio": 0.9,  # α: 1 is the lasso
    # λ grid: `points` values from λ_max down to ratio·λ_max, geometric
    "path": {"points": 50, "ratio": 1.0e-3},
    # inner solves: absolute tolerance on the gradient mapping, tight because the
    # finite-difference check divides a validation-loss difference by 2·fd_step
    "inner_atol": 1.0e-10,
    "inner_max_steps": 100,
    "newton_inner_steps": 100,  # ProximalNewton's FISTA budget per subproblem (its default)
    "compare_proximal_gradient": True,
    "proximal_gradient_max_steps": 20000,
    "fd_step": 1.0e-4,
    # gradient descent on θ = log λ, from λ₀ = init_ratio·λ_max
    # (learning_rate: the first trial step; max_backtracks: halvings per step)
    "descent": {"init_ratio": 0.3, "learning_rate": 30.0, "steps": 10, "max_backtracks": 20},
    "output_dir": "outputs/sparse_regression",
}

FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def load_data(config, dtype):
    """Diabetes plus decoys, standardised, split into (X, y) for train, validation and test.

    The features are standardised over all the inputs (no labels); y and the features are then
    centred on the training split, so the intercept starts near its solution.
    """
    import numpy as np
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(config["seed"])
    perm = rng.permutation(len(y))
    X, y = X[perm], y[perm]
    X = (X - X.mean(0)) / X.std(0)
    count, rho = config["decoys"]["count"], config["decoys"]["correlation"]
    if count:
        source = rng.integers(0, X.shape[1], count)
        noise = rng.standard_normal((len(y), count))
        Z = rho * X[:, source] + np.sqrt(1.0 - rho**2) * noise
        X = np.hstack([X, (Z - Z.mean(0)) / Z.std(0)])
    n_tr, n_val = config["split"]["train"], config["split"]["validation"]
    if n_tr < 2 or n_val < 1 or n_tr + n_val >= len(y):
        raise ValueError(f"split: train {n_tr} + validation {n_val} must leave test data out "
                         f"of {len(y)} patients (train ≥ 2, validation ≥ 1)")
    y = (y - y[:n_tr].mean()) / y[:n_tr].std()
    X = X - X[:n_tr].mean(0)
    parts = [(0, n_tr), (n_tr, n_tr + n_val), (n_tr + n_val, len(y))]
    return [(X[a:b].astype(dtype), y[a:b].astype(dtype)) for a, b in parts]


def main(argv=None) -> int:
    config = setup(__doc__, DEFAULTS, argv, script=__file__)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxopt2
    from jaxopt2 import prox

    # ranges the schema's types cannot express; exit code 2 as for any bad config
    for key, value, ok, need in (
            ("l1_ratio", config["l1_ratio"], 0 < config["l1_ratio"] <= 1, "in (0, 1]"),
            ("decoys.correlation", config["decoys"]["correlation"],
             0 <= config["decoys"]["correlation"] < 1, "in [0, 1)"),
            ("path.ratio", config["path"]["ratio"], 0 < config["path"]["ratio"] < 1, "in (0, 1)"),
            ("path.points", config["path"]["points"], config["path"]["points"] >= 2, "≥ 2"),
            ("newton_inner_steps", config["newton_inner_steps"],
             config["newton_inner_steps"] >= 1, "≥ 1"),
            ("descent.init_ratio", config["descent"]["init_ratio"],
             config["descent"]["init_ratio"] > 0, "> 0"),
            ("descent.learning_rate", config["descent"]["learning_rate"],
             config["descent"]["learning_rate"] > 0, "> 0"),
            ("descent.max_backtracks", config["descent"]["max_backtracks"],
             config["descent"]["max_backtracks"] >= 1, "≥ 1")):
        if not ok:
            print(f"python examples/sparse_regression.py: error: config key {key!r}: {value!r} "
                  f"must be {need}", file=sys.stderr)
            return 2

    failures = []
    start = time.perf_counter()
    dtype = jnp.dtype(config["dtype"])
    (X_tr, y_tr), (X_val, y_val), (X_te, y_te) = [
        (jnp.asarray(X), jnp.asarray(y)) for X, y in load_data(config, dtype)]
    n, d = X_tr.shape
    alpha = config["l1_ratio"]
    print(f"sparse regression: diabetes, {len(FEATURES)} features + "
          f"{d - len(FEATURES)} decoys (train {n}, validation {len(y_val)}, test {len(y_te)}, "
          f"{dtype}), elastic net α = {alpha}")

    def mse(params, data):
        X, y = data
        return 0.5 * jnp.mean((X @ params["w"] + params["b"] - y) ** 2)

    def penalty(lam):
        # the pytree of elastic_net's (l1, l2) strengths: None leaves the intercept unpenalised
        return ({"w": alpha * lam, "b": None}, {"w": (1 - alpha) * lam, "b": None})

    def solve(lam, params0, solver, max_steps):
        # throw=False: a failed solve is reported (and makes the exit code 1) instead of raising
        return jaxopt2.minimize(mse, params0, (X_tr, y_tr), solver=solver, max_steps=max_steps,
                                prox=prox.elastic_net, prox_args=penalty(lam), throw=False)

    newton = jaxopt2.ProximalNewton(rtol=0.0, atol=config["inner_atol"],
                                    inner_steps=config["newton_inner_steps"])

    def val_loss(theta, params0):
        sol = solve(jnp.exp(theta), params0, newton, config["inner_max_steps"])
        # jax.grad goes through sol.params by implicit differentiation (not the iterations)
        return mse(sol.params, (X_val, y_val)), sol

    @jax.jit
    def evaluate(theta, params0):
        """L(θ), dL/dθ, the solution and what the table reports, warm-started at params0."""
        (loss, sol), grad = jax.value_and_grad(val_loss, has_aux=True)(theta, params0)
        info = {"val_loss": loss, "grad": grad, "train_loss": sol.value,
                "test_loss": mse(sol.params, (X_te, y_te)),
                "nonzeros": jnp.sum(sol.params["w"] != 0),
                "steps": sol.stats["num_steps"], "grads": sol.stats["num_grad"],
                "hvps": sol.stats["num_hvp"], "ok": sol.success}
        return sol.params, info

    zeros = {"w": jnp.zeros(d, dtype), "b": jnp.zeros((), dtype)}
    lam_max = float(jnp.max(jnp.abs(X_tr.T @ (y_tr - y_tr.mean()))) / (n * alpha))
    lams = lam_max * np.geomspace(1.0, config["path"]["ratio"], config["path"]["points"])
    thetas = np.log(lams)

    # --- 1. the path, warm-started along the decreasing grid
    t = time.perf_counter()
    path, infos, params = [], [], zeros
    for theta in thetas:
        params, info = evaluate(jnp.asarray(theta, dtype), params)
        path.append(np.asarray(params["w"]))
        infos.append({k: np.asarray(v) for k, v in info.items()})
    path_s = time.perf_counter() - t
    val = np.array([float(i["val_loss"]) for i in infos])
    grads = np.array([float(i["grad"]) for i in infos])
    warm = {k: int(sum(int(i[k]) for i in infos)) for k in ("steps", "grads", "hvps")}
    bad = [k for k, i in enumerate(infos) if not bool(i["ok"])]
    if bad:
        failures.append(f"path: {len(bad)} of {len(lams)} solves failed (first at λ = "
                        f"{lams[bad[0]]:.3g})")
    if not all_finite(val, grads, path):
        failures.append("path: a validation loss, its derivative or a coefficient is not finite")

    # the same grid cold-started, all at once under vmap: what the warm start saves
    cold = jax.jit(jax.vmap(lambda lam: solve(lam, zeros, newton, config["inner_max_steps"])))(
        jnp.asarray(lams, dtype))
    cold_counts = {k: int(jnp.sum(cold.stats[f"num_{k[:-1] if k != 'steps' else 'steps'}"]))
                   for k in ("steps", "grads", "hvps")}
    cold_ok = np.asarray(cold.success)
    cold_dev = float(np.max(np.abs(np.asarray(cold.params["w"]) - np.stack(path))[cold_ok],
                            initial=0.0))
    print(f"path: {len(lams)} values of λ from λ_max = {lam_max:.4g} down to {lams[-1]:.3g}")

    def counts(c):
        # for least squares a gradient and an HVP both cost one product with X and one with Xᵀ
        return (f"{c['steps']} steps, {c['grads']} gradients + {c['hvps']} HVPs = "
                f"{c['grads'] + c['hvps']} products with X and Xᵀ")

    print(f"  ProximalNewton, warm-started: {counts(warm)}")
    names = np.asarray(cold.status.name)  # one status name per λ
    cold_failed = [(float(lams[k]), str(names[k])) for k in np.flatnonzero(~cold_ok)]
    # a comparison, not a result the example relies on: a failed cold start is reported (the
    # warm-started path it is compared with is what the rest uses, and is checked)
    print(f"  ProximalNewton, cold-started (vmap over the grid): {counts(cold_counts)}; max "
          f"|Δw| from the warm-started path {cold_dev:.1e} over the {int(cold_ok.sum())} "
          f"successful solves" + "".join(f"; failed at λ = {lam:.4g}: {status}"
                                         for lam, status in cold_failed))
    pg_counts = None
    if config["compare_proximal_gradient"]:
        pg = jaxopt2.ProximalGradient(rtol=0.0, atol=config["inner_atol"])
        pg_solve = jax.jit(lambda lam, p0: solve(lam, p0, pg,
                                                 config["proximal_gradient_max_steps"]))
        pg_counts, pg_ok, p = {"steps": 0, "grads": 0, "hvps": 0}, True, zeros
        for lam in lams:
            sol = pg_solve(jnp.asarray(lam, dtype), p)
            p = sol.params
            for k in pg_counts:
                pg_counts[k] += int(sol.stats[f"num_{k[:-1] if k != 'steps' else 'steps'}"])
            pg_ok &= bool(sol.success)
        # a comparison, not a result the example relies on: a failure is reported, not fatal
        print(f"  ProximalGradient, warm-started: {counts(pg_counts)}"
              + ("" if pg_ok else " (some solves did not converge within "
                 "proximal_gradient_max_steps)"))

    best = int(np.argmin(val))
    print(f"grid's best: λ = {lams[best]:.4g} ({lams[best] / lam_max:.3g}·λ_max), validation "
          f"loss {val[best]:.4f}, test loss {float(infos[best]['test_loss']):.4f}, "
          f"{int(infos[best]['nonzeros'])} nonzero coefficients")

    # --- 2. dL/dθ by implicit differentiation against a central finite difference, at θ₀
    theta0 = float(np.log(config["descent"]["init_ratio"] * lam_max))
    # warm start for θ₀ and θ₀ ± h: the path's solution at the nearest grid λ
    near = jax.tree_util.tree_map(jnp.asarray, {"w": path[int(np.argmin(np.abs(thetas - theta0)))],
                                                "b": zeros["b"]})
    p0, info0 = evaluate(jnp.asarray(theta0, dtype), near)
    h = config["fd_step"]
    plus, minus = (evaluate(jnp.asarray(theta0 + s * h, dtype), p0)[1] for s in (1.0, -1.0))
    fd = (float(plus["val_loss"]) - float(minus["val_loss"])) / (2 * h)
    g0 = float(info0["grad"])
    fd_rel = abs(fd - g0) / max(abs(fd), 1e-300)
    print(f"dL/dlog λ at λ₀ = {np.exp(theta0):.4g}: implicit {g0:.6e}, finite difference "
          f"{fd:.6e}, relative error {fd_rel:.1e}")
    if not all(bool(i["ok"]) for i in (info0, plus, minus)) or not all_finite(g0, fd):
        failures.append("derivative check: a solve failed or a number is not finite")

    # --- 3. gradient descent on θ = log λ with a backtracking (Armijo) step, each solve
    # warm-started from the last. The validation curve is steep where λ kills the signal and
    # flat near its minimum (curvatures a hundred times apart), so no fixed step suits both:
    # the trial step t starts from the last accepted one, doubled, and halves until
    # L(θ − t·g) ≤ L(θ) − c₁·t·g².
    rows, trace = [], []
    theta, params, info = theta0, p0, info0
    t_step = config["descent"]["learning_rate"]
    for step in range(config["descent"]["steps"] + 1):
        trials = 0
        if step:
            g = float(info["grad"])
            for _ in range(config["descent"]["max_backtracks"]):
                trials += 1
                new_params, new_info = evaluate(jnp.asarray(theta - t_step * g, dtype), params)
                if not bool(new_info["ok"]) or float(new_info["val_loss"]) <= (
                        float(info["val_loss"]) - 1e-4 * t_step * g * g):
                    break
                t_step /= 2
            else:  # no decrease along -g: θ is stationary to the loss's resolution
                print(f"descent step {step}: no decrease after {trials} trials; stopping")
                break
            theta, params, info = theta - t_step * g, new_params, new_info
            t_step *= 2
        trace.append((theta, float(info["val_loss"])))
        rows.append((step, float(np.exp(theta)), float(info["val_loss"]), float(info["grad"]),
                     float(info["test_loss"]), int(info["nonzeros"]), trials,
                     int(info["steps"]), "ok" if bool(info["ok"]) else "failed"))
        if not bool(info["ok"]) or not all_finite(theta, info["val_loss"], info["grad"]):
            failures.append(f"descent step {step}: the solve failed or a number is not finite")
            break
    table = markdown_table(("step", "λ", "val loss", "dL/dlog λ", "test loss", "nonzeros",
                            "line-search trials", "solver steps", "status"), rows)
    print(table)
    chosen = rows[-1]
    summary = (f"gradient-chosen λ = {chosen[1]:.4g}: validation loss {chosen[2]:.4f}, test "
               f"loss {chosen[4]:.4f}, {chosen[5]} nonzeros; grid's best λ = {lams[best]:.4g}: "
               f"validation loss {val[best]:.4f}, test loss "
               f"{float(infos[best]['test_loss']):.4f}, {int(infos[best]['nonzeros'])} nonzeros")
    print(summary)
    total_s = time.perf_counter() - start
    print(f"path (compile + {len(lams)} solves with derivatives) {path_s:.1f} s, total "
          f"{total_s:.1f} s")

    out = prepare_output_dir(config)
    write_results(out, table, summary)
    real = np.asarray(path)[:, :len(FEATURES)]
    metrics = {
        "lambda_max": lam_max, "lambdas": lams.tolist(), "val_loss": val.tolist(),
        "dval_dlog_lambda": grads.tolist(), "path_all_ok": not bad,
        "counts": {"newton_warm": warm, "newton_cold": cold_counts,
                   "proximal_gradient_warm": pg_counts},
        "cold_warm_max_abs_diff": cold_dev, "cold_failed": cold_failed,
        "fd_check": {"lambda": float(np.exp(theta0)), "implicit": g0, "finite_difference": fd,
                     "relative_error": fd_rel},
        "grid_best": {"lambda": float(lams[best]), "val_loss": float(val[best]),
                      "test_loss": float(infos[best]["test_loss"]),
                      "nonzeros": int(infos[best]["nonzeros"])},
        "descent": {"lambda": [float(np.exp(t_)) for t_, _ in trace],
                    "val_loss": [v for _, v in trace], "test_loss_last": chosen[4],
                    "nonzeros_last": chosen[5], "all_ok": all(r[-1] == "ok" for r in rows)},
        "coefficients": np.asarray(path).tolist(),  # one row of w per λ
        "real_features_selected_at_best": [FEATURES[j] for j in np.flatnonzero(real[best])],
        "seconds": {"path": path_s, "total": total_s},
    }
    write_metrics(out, metrics)
    if all_finite(val, path, trace):
        fig_path = _plot(lams, np.asarray(path), val, lams[best], trace, out)
        print(f"saved {fig_path}")
    else:
        print("no plot: the path or the validation losses are not finite")
    return exit_code(failures)


def _plot(lams, path, val, best_lam, trace, out) -> str:
    import numpy as np

    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    decoys = path.shape[1] - len(FEATURES)
    if decoys:
        a1.plot(lams, path[:, len(FEATURES):], color="0.75", lw=0.8)
        a1.plot([], [], color="0.75", lw=0.8, label=f"decoys ({decoys})")  # one legend entry
    colors = plt.get_cmap("tab10")
    for j, name in enumerate(FEATURES):
        a1.plot(lams, path[:, j], color=colors(j), label=name)
    lam_gd = float(np.exp(trace[-1][0]))
    a1.axvline(lam_gd, color="k", ls="--", lw=1, label=f"gradient-chosen λ = {lam_gd:.3g}")
    a1.set(xscale="log", xlabel="λ (log scale)", ylabel="coefficient wⱼ",
           title="coefficient path (warm-started ProximalNewton)")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7, ncol=3, loc="lower right")

    a2.plot(lams, val, "o-", ms=3, label="validation loss on the grid")
    a2.plot(best_lam, val[np.argmin(val)], "s", ms=9, mfc="none", color="C2",
            label=f"grid's best λ = {best_lam:.3g}")
    t, v = np.exp([p[0] for p in trace]), [p[1] for p in trace]
    a2.plot(t, v, "x-", color="C3", ms=6, lw=0.8, label="gradient descent on log λ")
    a2.plot(t[-1], v[-1], "*", ms=14, color="C3", label=f"gradient-chosen λ = {t[-1]:.3g}")
    a2.set(xscale="log", xlabel="λ (log scale)", ylabel="validation loss ½·mean squared error",
           title="validation curve")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.suptitle("Elastic net on diabetes + decoys: path and λ by implicit differentiation")
    fig.tight_layout()
    return save_figure(fig, out, "sparse_regression.png")


if __name__ == "__main__":
    sys.exit(main())
