"""Hyperparameter optimization by implicit differentiation: one L2 weight per feature.

    python examples/hyperparameter_optimization.py --config configs/hyperparameter_optimization.yaml

Binary logistic regression on scikit-learn's digits (0–4 against 5–9), optionally widened by
random features (random Fourier or pairwise products of pixels), with a separate ridge
penalty λⱼ = exp(θⱼ) on every weight: hundreds of hyperparameters, far too many for a grid.

The inner problem, the regularised training loss, is solved by `jaxopt2.minimize` with
`NewtonCG`. The outer problem, the validation log-loss of that solution, is minimised over θ
by Adam; its gradient (the hypergradient) comes from `jax.grad` straight through the solve,
which jaxopt2 differentiates by the implicit function theorem (one Hessian solve per outer
step, no unrolling of the Newton iterations). The whole outer step is one jitted function,
compiled once; each inner solve is warm-started from the previous outer step's solution.

With hundreds of hyperparameters and a few hundred validation points the outer problem can
itself overfit: run it much longer than the configured 40 steps and the validation loss keeps
falling while the test loss turns back up (both are plotted).

Shows: the first hypergradient checked against a central finite difference on one
coordinate; a table of outer steps (validation loss, test accuracy, inner steps and status);
the best single λ from a `vmap`-ed grid search for comparison; a plot of the validation loss
(PNG) and `metrics.json` / `results.md` in the output directory.

Precision: float64, needed. The printed check of the hypergradient against a central finite
difference (relative error ~1e-7 in float64, tested below 1e-4) cannot resolve in float32,
where the validation-loss difference at step fd_step is near round-off.

Expected output (measured on CPU, float64; tolerances cover platform differences):
- full (configs/hyperparameter_optimization.yaml, 564 weights, 40 outer steps; 52 s wall on a
  shared 2-core CPU): relative error of the hypergradient 1.7e-10 (< 1e-6); per-feature λ:
  validation loss 0.1623 -> 0.0248 (±0.005), test loss 0.1527 -> 0.1042 (±0.005), test
  accuracy 0.944 -> 0.965 (±0.01); best single λ on the grid exp(-4) = 0.0183 with validation
  loss 0.1489 (±0.005), test loss 0.1416, test accuracy 0.946 (±0.01). The test loss stops
  improving after ~20 outer steps while the validation loss keeps falling (see above).
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
    # kind: none, products (of random pixel pairs) or fourier (random Fourier features of an
    # RBF kernel with width gamma)
    "extra_features": {"kind": "products", "count": 500, "gamma": 0.02},
    "split": {"train": 300, "validation": 700},  # the rest of the 1797 digits is the test set
    "seed": 0,
    "init_log_l2": -6.0,  # θ₀: every λⱼ starts at exp(-6) ≈ 0.0025
    "learning_rate": 0.05,
    "outer_steps": 40,
    # inner gradient tolerance: absolute, so warm starts stop early; tight, because the
    # validation loss (and the finite-difference check, which divides it by 2h) is first-order
    # sensitive to the inner error. Newton converges quadratically: it costs about one step.
    "inner_atol": 1e-11,
    "inner_max_steps": 100,
    "fd_step": 1e-4,
    "grid": [-10.0, -8.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0],
    "print_every": 5,
    "output_dir": "outputs/hyperparameter_optimization",
}


def load_data(config, dtype):
    """Standardised digits (binary: < 5 against ≥ 5) plus random features, split three ways."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    y = (y >= 5).astype(float)
    rng = np.random.default_rng(config["seed"])
    perm = rng.permutation(len(y))
    X, y = X[perm], y[perm]
    X = StandardScaler().fit_transform(X)
    extra = config["extra_features"]
    kind, count = extra.get("kind", "none"), int(extra.get("count", 0))
    if kind == "fourier" and count:
        # random Fourier features of an RBF kernel exp(-γ‖x − x'‖²) (Rahimi & Recht)
        omega = rng.standard_normal((X.shape[1], count)) * np.sqrt(2 * extra["gamma"])
        phase = rng.uniform(0, 2 * np.pi, count)
        X = np.hstack([X, np.sqrt(2.0) * np.cos(X @ omega + phase)])
    elif kind == "products" and count:
        i, j = rng.integers(0, X.shape[1], (2, count))
        X = np.hstack([X, X[:, i] * X[:, j]])
    elif kind not in ("none", "fourier", "products"):
        raise ValueError(f"unknown extra_features.kind {kind!r}; use none, fourier or products")
    # standardise again so that every λⱼ acts on a feature of unit scale. The scaler sees all
    # the inputs (no labels): fitted on the small training split alone, a product of two rare
    # pixels gets a tiny scale there and huge values elsewhere. Constant pixels stay at zero.
    X = StandardScaler().fit_transform(X)
    n_tr, n_val = config["split"]["train"], config["split"]["validation"]
    parts = [(0, n_tr), (n_tr, n_tr + n_val), (n_tr + n_val, len(y))]
    return [(X[a:b].astype(dtype), y[a:b].astype(dtype)) for a, b in parts]


def main(argv=None) -> int:
    config = setup(__doc__, DEFAULTS, argv, script=__file__,
                   choices={"extra_features.kind": ("none", "fourier", "products")})
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import jaxopt2

    start = time.perf_counter()
    dtype = jnp.dtype(config["dtype"])
    (X_tr, y_tr), (X_val, y_val), (X_te, y_te) = [
        (jnp.asarray(X), jnp.asarray(y)) for X, y in load_data(config, dtype)]
    d = X_tr.shape[1]
    print(f"hyperparameter optimization: {d} per-feature L2 weights, logistic regression on "
          f"digits (train {len(y_tr)}, validation {len(y_val)}, test {len(y_te)}, {dtype})")

    def log_loss(params, X, y):
        z = X @ params["w"] + params["b"]
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z)

    def accuracy(params, X, y):
        return jnp.mean(((X @ params["w"] + params["b"]) > 0) == (y > 0.5))

    def inner_objective(params, args):
        X, y, theta = args
        # the bias is not penalised; λⱼ = exp(θⱼ) keeps every penalty positive
        return log_loss(params, X, y) + 0.5 * jnp.sum(jnp.exp(theta) * params["w"] ** 2)

    solver = jaxopt2.NewtonCG(rtol=0.0, atol=config["inner_atol"])

    def inner_solve(theta, params0):
        # throw=False: a failed inner solve is reported in the table instead of raising
        return jaxopt2.minimize(inner_objective, params0, (X_tr, y_tr, theta), solver=solver,
                                max_steps=config["inner_max_steps"], throw=False)

    def outer_loss(theta, params0):
        sol = inner_solve(theta, params0)
        # jax.grad goes through sol.params by the implicit function theorem
        return log_loss(sol.params, X_val, y_val), sol

    optimizer = optax.adam(config["learning_rate"])

    @jax.jit
    def outer_step(theta, opt_state, params0):
        (loss, sol), grad = jax.value_and_grad(outer_loss, has_aux=True)(theta, params0)
        updates, opt_state = optimizer.update(grad, opt_state, theta)
        info = {"val_loss": loss, "test_loss": log_loss(sol.params, X_te, y_te),
                "test_acc": accuracy(sol.params, X_te, y_te),
                "inner_steps": sol.stats["num_steps"], "ok": sol.success, "grad": grad}
        return optax.apply_updates(theta, updates), opt_state, sol.params, info

    theta = jnp.full(d, config["init_log_l2"], dtype)
    opt_state = optimizer.init(theta)
    zeros = {"w": jnp.zeros(d, dtype), "b": jnp.zeros((), dtype)}

    # --- the first hypergradient against a central finite difference on one coordinate. The
    # loss at θ ± h·eⱼ comes from the same jitted step (its own update is discarded), so the
    # check costs no extra compilation; every solve here starts cold, from zero.
    t = time.perf_counter()
    _, _, _, info0 = jax.block_until_ready(outer_step(theta, opt_state, zeros))
    compile_s = time.perf_counter() - t
    grad0 = np.asarray(info0["grad"])
    j = int(np.argmax(np.abs(grad0)))
    h = config["fd_step"]
    losses = [float(outer_step(theta.at[j].add(s * h), opt_state, zeros)[3]["val_loss"])
              for s in (1.0, -1.0)]
    fd = (losses[0] - losses[1]) / (2 * h)
    fd_rel = abs(fd - grad0[j]) / max(abs(fd), 1e-30)
    print(f"hypergradient check at θ₀, coordinate {j} (largest |∂L/∂θⱼ|): implicit "
          f"{grad0[j]:.6e}, finite difference {fd:.6e}, relative error {fd_rel:.1e}")

    # --- the outer loop: Adam on θ, each inner solve warm-started from the last solution
    rows, history, test_history = [], [], []
    failed_steps = []  # outer steps whose inner solve failed or whose losses are not finite
    params = zeros
    t = time.perf_counter()
    for step in range(config["outer_steps"] + 1):
        new_theta, new_opt_state, params, info = outer_step(theta, opt_state, params)
        info = {k: np.asarray(v) for k, v in info.items() if k != "grad"}
        history.append(float(info["val_loss"]))
        test_history.append(float(info["test_loss"]))
        if not bool(info["ok"]) or not all_finite(info["val_loss"], info["test_loss"]):
            failed_steps.append(step)
        if step % config["print_every"] == 0 or step == config["outer_steps"]:
            lam = np.exp(np.asarray(theta))
            rows.append((step, float(info["val_loss"]), float(info["test_loss"]),
                         float(info["test_acc"]),
                         int(info["inner_steps"]), "ok" if bool(info["ok"]) else "failed",
                         float(np.min(lam)), float(np.median(lam)), float(np.max(lam))))
        if step < config["outer_steps"]:  # the last call only evaluates the final θ
            theta, opt_state = new_theta, new_opt_state
    loop_s = time.perf_counter() - t

    # --- for comparison: the best single λ (shared by all features), chosen on the
    # validation loss from a grid solved all at once with vmap
    def grid_point(log_l2):
        sol = inner_solve(jnp.full(d, log_l2, dtype), zeros)
        return (log_loss(sol.params, X_val, y_val), log_loss(sol.params, X_te, y_te),
                accuracy(sol.params, X_te, y_te), sol.success)

    grid = jnp.asarray(config["grid"], dtype)
    g_loss, g_test_loss, g_acc, g_ok = (np.asarray(x) for x in jax.jit(jax.vmap(grid_point))(grid))
    best = int(np.argmin(np.where(g_ok, g_loss, np.inf)))

    header = ("outer step", "val loss", "test loss", "test acc", "inner steps", "inner status",
              "min λ", "median λ", "max λ")
    table = markdown_table(header, rows)
    print(table)
    summary = (f"per-feature λ: validation loss {history[0]:.4f} -> {history[-1]:.4f}, test "
               f"loss {rows[0][2]:.4f} -> {rows[-1][2]:.4f}, test accuracy {rows[0][3]:.4f} "
               f"-> {rows[-1][3]:.4f}\nbest single λ = {np.exp(float(grid[best])):.3g} (grid): "
               f"validation loss {g_loss[best]:.4f}, test loss {g_test_loss[best]:.4f}, test "
               f"accuracy {g_acc[best]:.4f}")
    print(summary)
    total_s = time.perf_counter() - start
    print(f"first outer step (compile + run) {compile_s:.1f} s, {config['outer_steps']} outer "
          f"steps {loop_s:.1f} s, total {total_s:.1f} s")

    failures = []
    if failed_steps:
        failures.append(f"inner solve failed or loss not finite at {len(failed_steps)} of "
                        f"{config['outer_steps'] + 1} outer steps (first: {failed_steps[0]})")
    if not all_finite(grad0[j], fd):
        failures.append("hypergradient check: the hypergradient or its finite difference is "
                        "not finite")
    if not bool(g_ok[best]) or not all_finite(g_loss[best], g_test_loss[best]):
        failures.append("grid search: no grid point was solved successfully")
    if not all_finite(theta):
        failures.append("the final per-feature λ are not finite")

    out = prepare_output_dir(config)
    write_results(out, table, summary)
    metrics = {
        "num_hyperparameters": d, "val_loss": history, "test_loss": test_history,
        "test_loss_first": rows[0][2], "test_loss_last": rows[-1][2],
        "test_acc_first": rows[0][3], "test_acc_last": rows[-1][3],
        "inner_all_ok": not failed_steps,  # every outer step, not only the printed ones
        "fd_check": {"coordinate": j, "implicit": float(grad0[j]), "finite_difference": fd,
                     "relative_error": fd_rel},
        "grid_best": {"l2": float(np.exp(float(grid[best]))), "val_loss": float(g_loss[best]),
                      "test_loss": float(g_test_loss[best]), "test_acc": float(g_acc[best])},
        "final_l2": np.exp(np.asarray(theta)).tolist(),
        "seconds": {"first_step": compile_s, "outer_loop": loop_s, "total": total_s},
    }
    write_metrics(out, metrics)
    if all_finite(history, test_history, theta):
        path = _plot(history, test_history, float(g_loss[best]), np.exp(np.asarray(theta)), out)
        print(f"saved {path}")
    else:
        print("no plot: the losses or the final λ are not finite")
    return exit_code(failures)


def _plot(history, test_history, grid_best, lam, out) -> str:
    import numpy as np

    plt = pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(range(len(history)), history, label="validation, per-feature λ (Adam)")
    a1.plot(range(len(test_history)), test_history, label="test, per-feature λ (Adam)")
    a1.axhline(grid_best, color="gray", ls=":", label="validation, best single λ (grid)")
    a1.set(xlabel="outer step", ylabel="log-loss")
    a1.xaxis.get_major_locator().set_params(integer=True)  # whole outer steps
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    a2.hist(np.log10(lam), bins=40)
    a2.set(xlabel="log10 λⱼ after training", ylabel="number of features")
    a2.yaxis.get_major_locator().set_params(integer=True)  # counts: no 2.5-feature ticks
    fig.suptitle("Per-feature L2 weights by implicit differentiation (digits, logistic)")
    fig.tight_layout()
    return save_figure(fig, out, "validation_loss.png")


if __name__ == "__main__":
    sys.exit(main())
