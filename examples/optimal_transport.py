"""Optimal transport: W2 between point clouds and between digit images, Sinkhorn against SNS.

    python examples/optimal_transport.py --config configs/optimal_transport.yaml

1. **Point clouds**: `clouds.n` points uniform on the unit square against `clouds.m` points from
   a mixture of three Gaussians; cost ‖x − y‖², ε = `epsilon`·mean(C). The entropic W2 is
   √<C, P_ε> with P_ε from `jaxopt2.ot.sinkhorn` and `jaxopt2.ot.sinkhorn_newton_sparse`
   (SNS). Each solver runs to every tolerance in `tolerances` (L1 error of both marginals,
   relative to Σa; one compilation per solver, the tolerance is traced), recording iterations
   and wall time, for the convergence plot.
2. **Digits**: two images of scikit-learn's 8 × 8 digits (`digits.first`, `digits.second`, indices
   into the data set) as distributions over their lit pixels (intensity / total), pixel
   coordinates scaled to [0, 1]; W2 by both solvers, and the gradient of W2² with respect to
   the first image's intensities (implicit differentiation), checked against a central finite
   difference along a mass-preserving direction.

Outputs: `optimal_transport.png` (marginal error against iterations and against time for both
solvers, and the digit pair with the plan's largest entries), `metrics.json`, `results.md`,
`config.yaml`. Exits 1 if a solve fails or a number is not finite.

Precision: float64 (the tolerances go to 1e-9; float32 resolves the marginals of a plan at
small ε to about 1e-4).

Expected output (measured on CPU, float64):
- smoke (configs/optimal_transport_smoke.yaml: 120 vs 100 points, ε = 1e-2·mean(C)): Sinkhorn
  (adaptive over-relaxation, the default) 69 / 111 / 168 iterations to 1e-3 / 1e-6 / 1e-9, SNS
  43 / 45 / 45 (5 of them Newton steps); W2 = 0.193 from both. Digits 0 → 10
  (ε = 1e-2·mean(C)): W2 = 0.093599, SNS 28 iterations, Sinkhorn 356; dW2²/da along a
  zero-sum direction −0.0522446 by implicit differentiation and by the finite difference.
- full (configs/optimal_transport.yaml: 1,000 vs 1,000 points, ε = 1e-3·mean(C)): the
  setting of benchmarks/optimal_transport.py, where SNS needs ~105 iterations to 1e-6 and
  ~106 to 1e-9, over-relaxed Sinkhorn ~340 and ~480, plain Sinkhorn (relaxation=1.0) ~8,500
  to 1e-6. Not run end to end here.
"""

from __future__ import annotations

import os
import sys
import time

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
    "clouds": {"n": 1000, "m": 1000},
    "epsilon": 1.0e-3,          # relative to the mean cost
    "tolerances": [1.0e-2, 1.0e-3, 1.0e-4, 1.0e-5, 1.0e-6, 1.0e-7, 1.0e-8, 1.0e-9],
    "max_steps": 5000,
    "digits": {"first": 0, "second": 10, "epsilon": 1.0e-3},
    "fd_step": 1.0e-6,
    "output_dir": "outputs/optimal_transport",
}


def clouds(config, dtype):
    import numpy as np

    rng = np.random.default_rng(config["seed"])
    n, m = config["clouds"]["n"], config["clouds"]["m"]
    x = rng.uniform(size=(n, 2))
    centers = np.array([[0.2, 0.2], [0.8, 0.3], [0.5, 0.8]])
    y = centers[rng.integers(0, 3, m)] + 0.1 * rng.standard_normal((m, 2))
    return x.astype(dtype), y.astype(dtype)


def digit(index, dtype):
    """The lit pixels of digit image `index`: coordinates in [0, 1]² and weights summing to 1."""
    import numpy as np
    from sklearn.datasets import load_digits

    images = load_digits().images
    if not 0 <= index < len(images):
        raise ValueError(f"digit index {index} out of range [0, {len(images)})")
    img = images[index]
    rows, cols = np.nonzero(img)
    weights = img[rows, cols] / img.sum()
    return np.stack([cols, 7 - rows], 1).astype(dtype) / 7.0, weights.astype(dtype)


def main(argv=None) -> int:
    config = setup(__doc__, DEFAULTS, argv, script=__file__)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxopt2 import ot

    for key, value, ok in (("epsilon", config["epsilon"], config["epsilon"] > 0),
                           ("digits.epsilon", config["digits"]["epsilon"],
                            config["digits"]["epsilon"] > 0),
                           ("clouds.n", config["clouds"]["n"], config["clouds"]["n"] >= 2),
                           ("clouds.m", config["clouds"]["m"], config["clouds"]["m"] >= 2),
                           ("tolerances", config["tolerances"],
                            all(t > 0 for t in config["tolerances"]))):
        if not ok:
            print(f"python examples/optimal_transport.py: error: config key {key!r}: {value!r} "
                  "must be positive (≥ 2 points)", file=sys.stderr)
            return 2

    dtype = jnp.dtype(config["dtype"])
    failures = []
    x, y = clouds(config, dtype)
    C = jnp.asarray(((x[:, None] - y[None]) ** 2).sum(-1))
    eps = config["epsilon"] * float(C.mean())
    solvers = {"sinkhorn": ot.sinkhorn, "sns": ot.sinkhorn_newton_sparse}
    history = {}
    rows = []
    for name, solver in solvers.items():
        run = jax.jit(lambda C, rtol, solver=solver: solver(
            C, None, None, eps, rtol=rtol, max_steps=config["max_steps"], throw=False))
        jax.block_until_ready(run(C, config["tolerances"][0]))  # compile
        history[name] = []
        for tol in config["tolerances"]:
            start = time.perf_counter()
            out = jax.block_until_ready(run(C, tol))
            seconds = time.perf_counter() - start
            err = float(jnp.max(out.marginal_errors))
            w2 = float(jnp.sqrt(out.transport_cost))
            point = dict(tolerance=tol, iterations=int(out.stats["num_steps"]),
                         newton_steps=int(out.stats["num_newton_steps"]), seconds=seconds,
                         error=err, w2=w2, status=str(out.status.name))
            history[name].append(point)
            rows.append((name, tol, point["iterations"], point["newton_steps"], err, w2,
                         f"{seconds:.3f}", point["status"]))
            if not all_finite(err, w2):
                failures.append(f"{name} at tolerance {tol}: non-finite result")
    table = markdown_table(("solver", "tolerance", "iterations", "Newton steps",
                            "max marginal error", "W2", "seconds", "status"), rows, ".3g")
    print(table)
    both = [(s["w2"], n["w2"]) for s, n in zip(history["sinkhorn"], history["sns"], strict=True)
            if s["status"] == n["status"] == "successful" and s["tolerance"] <= 1e-6]
    w2_gap = max((abs(s - n) for s, n in both), default=None)
    if history["sns"][-1]["status"] != "successful":
        failures.append("SNS did not reach the last tolerance")

    # digits
    (px, pa), (qx, qb) = (digit(config["digits"][k], dtype) for k in ("first", "second"))
    D = jnp.asarray(((px[:, None] - qx[None]) ** 2).sum(-1))
    eps_d = config["digits"]["epsilon"] * float(D.mean())

    def w2_squared(a, solver=ot.sinkhorn_newton_sparse):
        return solver(D, a, jnp.asarray(qb), eps_d, rtol=1e-10, max_steps=config["max_steps"],
                      throw=False).transport_cost

    digit_out = {name: solver(D, jnp.asarray(pa), jnp.asarray(qb), eps_d, rtol=1e-10,
                              max_steps=config["max_steps"], throw=False)
                 for name, solver in solvers.items()}
    grad = jax.grad(w2_squared)(jnp.asarray(pa))
    direction = np.random.default_rng(config["seed"]).standard_normal(pa.shape)
    direction -= direction.mean()                 # keep Σa = 1
    h = config["fd_step"]
    fd = float((w2_squared(jnp.asarray(pa + h * direction))
                - w2_squared(jnp.asarray(pa - h * direction))) / (2 * h))
    implicit = float(jnp.dot(grad, direction))
    digits = {name: dict(w2=float(jnp.sqrt(o.transport_cost)), status=str(o.status.name),
                         iterations=int(o.stats["num_steps"])) for name, o in digit_out.items()}
    summary = (f"digits {config['digits']['first']} → {config['digits']['second']}: "
               f"W2 = {digits['sns']['w2']:.6f} (SNS, {digits['sns']['iterations']} "
               f"iterations; Sinkhorn {digits['sinkhorn']['iterations']}); dW2²/da along a "
               f"zero-sum direction: implicit {implicit:.6g}, finite difference {fd:.6g}")
    print(summary)
    for name, d in digits.items():
        if d["status"] != "successful":
            failures.append(f"digits: {name} {d['status']}")
    if not abs(implicit - fd) <= 1e-4 * max(1.0, abs(fd)):
        failures.append(f"digits: implicit derivative {implicit} against finite difference {fd}")

    out = prepare_output_dir(config)
    write_results(out, table, summary)
    write_metrics(out, dict(epsilon=eps, history=history, w2_gap=w2_gap, digits=digits,
                            fd_check=dict(implicit=implicit, finite_difference=fd)))
    plot(out, history, px, qx, np.asarray(digit_out["sns"].plan))
    return exit_code(failures)


def plot(out, history, px, qx, plan):
    import numpy as np

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, style in (("sinkhorn", "o-"), ("sns", "s-")):
        h = history[name]
        err = [max(p["error"], 1e-16) for p in h]
        axes[0].semilogy([p["iterations"] for p in h], err, style, label=name)
        axes[1].semilogy([p["seconds"] for p in h], err, style, label=name)
    axes[0].set(xlabel="iterations", ylabel="L1 marginal error (max of both)",
                title="point clouds: error against iterations")
    axes[1].set(xlabel="wall time (s)", title="error against time")
    for ax in axes[:2]:
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    ax = axes[2]
    ax.scatter(*px.T, c="tab:blue", s=30, label="first digit")
    ax.scatter(*(qx + np.array([1.2, 0])).T, c="tab:red", s=30, label="second digit (shifted)")
    i, j = np.nonzero(plan > 0.2 * plan.max())
    for ii, jj in zip(i, j, strict=True):
        ax.plot([px[ii, 0], qx[jj, 0] + 1.2], [px[ii, 1], qx[jj, 1]], "k-",
                alpha=float(plan[ii, jj] / plan.max()) * 0.6, lw=0.8)
    ax.set(title="digits: the plan's largest entries", aspect="equal")
    ax.legend(loc="lower center", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, "optimal_transport.png")


if __name__ == "__main__":
    sys.exit(main())
