"""Kronecker-factored optimizers (`jaxopt2.optimizers.shampoo`, `soap`, `kfac`) and
`hessian_free` against tuned AdamW, `optax.contrib.muon` and `optax.contrib.sophia` on two
training tasks (issue 17), float32, one thread, one core.

    python benchmarks/training.py            # both tasks; updates RESULTS.md ("training")
    python benchmarks/training.py --quick    # a smoke run (few steps), RESULTS.md untouched

Tasks (scikit-learn's digits, 1437 training and 360 test images, split with seed 0):

1. `autoencoder`: a deep autoencoder 64-256-128-32-128-256-64 (tanh, linear code and output
   layers), mean squared reconstruction error; test metric: test MSE.
2. `convnet`: two 3×3 convolutions (1→16 channels, then 16→32 with stride 2, ReLU) and a
   dense head 512→10, softmax cross-entropy; test metric: test accuracy.

Every optimizer starts from the same weights and sees the same minibatches (indices drawn
from one key per step). AdamW (weight decay 1e-4), muon, sophia, shampoo and soap have
their learning rate picked from one grid (`--lrs`; the rate with the lowest final training
loss), injected with `optax.inject_hyperparams` so each optimizer compiles once; kfac sets
its own step length (quadratic model) and hessian_free runs its defaults. AdamW runs
`--steps`; the others run half of that: the issue's target asks for ≤ 0.3× AdamW's steps, so
a run that has not met the target by then has missed it anyway (and the two shared cores of
this machine make full budgets for every grid point too slow).

The target loss of a task is tuned AdamW's final training loss (full training set). Reported
per optimizer: steps and run time (compile excluded, full-loss evaluations excluded) to the
first evaluation at or below the target, their ratios to AdamW's, the final training loss,
the test metric, the run time per step and the compile time. Training loss is evaluated
every `eval_every` steps; each chunk of steps is one jitted `fori_loop`. Writes
outputs/training.md, outputs/training.json and outputs/training_<task>.png (loss against
steps and against time).
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
from single_thread import PINNED_CPU
# isort: on

import argparse
import datetime
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

from _common import markdown_table  # noqa: E402
from harness import cpu_name, write_section  # noqa: E402

import jaxopt2  # noqa: E402

O = jaxopt2.optimizers
LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


# --------------------------------------------------------------------------- tasks


def digits(seed=0):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(X))
    X = (X[perm] / 16.0).astype(np.float32)
    y = y[perm].astype(np.int32)
    return (jnp.asarray(X[:1437]), jnp.asarray(y[:1437])), \
        (jnp.asarray(X[1437:]), jnp.asarray(y[1437:]))


def dense_init(key, sizes):
    return [{"W": jax.random.normal(jax.random.fold_in(key, i), (a, b)) / math.sqrt(a),
             "b": jnp.zeros(b)} for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:],
                                                               strict=True))]


def autoencoder_model(params, batch):
    h = batch[0]
    for i, p in enumerate(params):
        h = h @ p["W"] + p["b"]
        if i not in (2, len(params) - 1):  # linear code layer and output
            h = jnp.tanh(h)
    return h


def mse(out, batch):
    return jnp.mean((out - batch[0]) ** 2)


def conv_init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"c1": jax.random.normal(k1, (3, 3, 1, 16)) / 3.0, "b1": jnp.zeros(16),
            "c2": jax.random.normal(k2, (3, 3, 16, 32)) / 12.0, "b2": jnp.zeros(32),
            "W": jax.random.normal(k3, (512, 10)) / math.sqrt(512), "b": jnp.zeros(10)}


def conv_model(p, batch):
    x = batch[0].reshape(-1, 8, 8, 1)
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.nn.relu(jax.lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME",
                                                 dimension_numbers=dn) + p["b1"])
    h = jax.nn.relu(jax.lax.conv_general_dilated(h, p["c2"], (2, 2), "SAME",
                                                 dimension_numbers=dn) + p["b2"])
    return h.reshape(len(x), -1) @ p["W"] + p["b"]


def xent(z, batch):
    picked = jnp.take_along_axis(z, batch[1][:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(z, axis=1) - picked)


def task(name, quick):
    train, test = digits()
    if name == "autoencoder":
        params = dense_init(jax.random.key(0), [64, 256, 128, 32, 128, 256, 64])
        model_fn, loss_fn, batch_size, steps, every = autoencoder_model, mse, 256, 1000, 25
        metric = ("test MSE", lambda p: float(mse(model_fn(p, test), test)))
    else:
        params = conv_init(jax.random.key(0))
        model_fn, loss_fn, batch_size, steps, every = conv_model, xent, 128, 600, 20
        metric = ("test accuracy", lambda p: float(jnp.mean(
            jnp.argmax(model_fn(p, test), 1) == test[1])))
    if quick:
        steps, every = 40, 10
    return dict(name=name, params=params, model_fn=model_fn, loss_fn=loss_fn, train=train,
                batch_size=batch_size, steps=steps, every=every, metric=metric)


# --------------------------------------------------------------------------- optimizers


def optimizers(t):
    """name -> (factory(lr) or factory(), learning-rate grid or None, extra-argument kind)."""
    m, lf = t["model_fn"], t["loss_fn"]
    example = jax.tree.map(lambda x: x[:t["batch_size"]], t["train"])
    inject = lambda f: (lambda lr: optax.inject_hyperparams(f)(learning_rate=lr))  # noqa: E731
    return {
        "AdamW": (inject(lambda learning_rate: optax.adamw(learning_rate, weight_decay=1e-4)),
                  LRS, None),
        "muon": (inject(optax.contrib.muon), LRS, None),
        "sophia": (inject(optax.contrib.sophia), LRS, "obj_fn"),
        "shampoo": (inject(O.shampoo), LRS, None),
        "soap": (inject(O.soap), LRS, None),
        "kfac": (lambda: O.kfac(model_fn=m, loss_fn=lf, example_batch=example), None, "batch"),
        "hessian_free": (lambda: O.hessian_free(model_fn=m, loss_fn=lf), None, "batch"),
    }


def make_chunk(t, opt, extra):
    """A jitted run of `every` steps from step `k0` (minibatch indices from fold_in(key, k))."""
    m, lf, (X, y) = t["model_fn"], t["loss_fn"], t["train"]
    loss = lambda p, b: lf(m(p, b), b)  # noqa: E731

    def body(k, carry):
        params, state = carry
        idx = jax.random.choice(jax.random.fold_in(jax.random.key(1), k), len(X),
                                (t["batch_size"],), replace=False)
        b = (X[idx], y[idx])
        value, grads = jax.value_and_grad(loss)(params, b)
        kw = {}
        if extra == "batch":
            kw = dict(batch=b, value=value)
        elif extra == "obj_fn":
            kw = dict(obj_fn=lambda p: loss(p, b))
        updates, state = opt.update(grads, state, params, **kw)
        return optax.apply_updates(params, updates), state

    return jax.jit(lambda params, state, k0: jax.lax.fori_loop(
        k0, k0 + t["every"], body, (params, state)))


def train(t, opt, extra, steps, lr=None, compiled=None):
    """One run of `steps` steps; `lr` is set in the injected state, so a `compiled` chunk
    from an earlier run of the same optimizer is reused (its compile time is reported)."""
    full = jax.jit(lambda p: t["loss_fn"](t["model_fn"](p, t["train"]), t["train"]))
    params = t["params"]
    state = opt.init(params)
    if lr is not None:
        state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    k0 = jnp.asarray(0, jnp.int32)
    compile_s = None
    if compiled is None:
        start = time.perf_counter()
        compiled = make_chunk(t, opt, extra).lower(params, state, k0).compile()
        compile_s = time.perf_counter() - start
    losses, times, elapsed = [float(full(params))], [0.0], 0.0
    for c in range(steps // t["every"]):
        k0 = jnp.asarray(c * t["every"], jnp.int32)
        start = time.perf_counter()
        params, state = jax.block_until_ready(compiled(params, state, k0))
        elapsed += time.perf_counter() - start
        losses.append(float(full(params)))
        times.append(elapsed)
        if not math.isfinite(losses[-1]):
            break
    return dict(lr=lr, losses=losses, times=times, compile=compile_s,
                per_step=elapsed / max(1, (len(losses) - 1) * t["every"]),
                metric=t["metric"][1](params), final=losses[-1]), compiled


def first_at(run, target, every):
    for i, f in enumerate(run["losses"]):
        if f <= target:
            return i * every, run["times"][i]
    return None, None


def run_task(t, budget_ours, log):
    runs = {}
    for name, (factory, grid, extra) in optimizers(t).items():
        steps = t["steps"] if name == "AdamW" else budget_ours
        if grid is None:
            runs[name] = train(t, factory(), extra, steps)[0]
            runs[name]["grid"] = {}
        else:
            opt, compiled, results = factory(grid[0]), None, {}
            for lr in grid:
                results[lr], compiled = train(t, opt, extra, steps, lr=lr, compiled=compiled)
            compile_s = results[grid[0]]["compile"]
            best = min(grid, key=lambda lr: results[lr]["final"]
                       if math.isfinite(results[lr]["final"]) else math.inf)
            runs[name] = dict(results[best], compile=compile_s,
                              grid={lr: r["final"] for lr, r in results.items()})
        r = runs[name]
        log(f"  {t['name']}: {name} lr={r['lr']} final {r['final']:.4g} "
            f"{t['metric'][0]} {r['metric']:.4g} {r['per_step'] * 1e3:.2f} ms/step "
            f"compile {r['compile']:.1f}s")
    return runs


# --------------------------------------------------------------------------- report


def report(t, runs):
    target = runs["AdamW"]["final"]
    a_steps, a_time = first_at(runs["AdamW"], target, t["every"])
    rows = []
    for name, r in runs.items():
        s, tt = first_at(r, target, t["every"])
        rows.append([name, "—" if r["lr"] is None else f"{r['lr']:g}",
                     "—" if s is None else s, "—" if tt is None else f"{tt:.2f}",
                     "—" if s is None else f"{s / a_steps:.2f}",
                     "—" if tt is None else f"{tt / a_time:.2f}",
                     f"{r['final']:.4g}", f"{r['metric']:.4g}", f"{r['per_step'] * 1e3:.2f}",
                     f"{r['compile']:.1f}"])
    header = ["optimizer", "lr", "steps to target", "time to target (s)", "steps ratio",
              "time ratio", "final train loss", t["metric"][0], "ms/step", "compile (s)"]
    return target, markdown_table(header, rows)


def plot(t, runs, target, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in runs.items():
        steps = np.arange(len(r["losses"])) * t["every"]
        axes[0].semilogy(steps, r["losses"], label=name)
        axes[1].semilogy(r["times"], r["losses"], label=name)
    for ax, xl in zip(axes, ("step", "run time (s, compile excluded)"), strict=True):
        ax.axhline(target, color="k", ls=":", lw=1)
        ax.set_xlabel(xl)
        ax.set_ylabel("training loss")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{t['name']} (float32, one core; dotted: tuned AdamW's final loss)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kfac_jax_status():
    """Whether kfac-jax installs and imports here (the issue recorded that it fails on
    jax 0.10); returns one line for the report."""
    try:
        import kfac_jax  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return (f"kfac-jax not importable here: {type(e).__name__}: {e} (kfac-jax 0.0.8 "
                f"installed apart failed at import on jax 0.10.2, in tensorflow-probability's "
                f"JAX backend: no jax.interpreters.xla.pytype_aval_mappings)")
    return "kfac-jax imports (not run in this benchmark)"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tasks", default="autoencoder,convnet")
    ap.add_argument("--cpu", type=int)
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args(argv)
    out = os.path.join(ROOT, "outputs")
    os.makedirs(out, exist_ok=True)
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    sections, data = [], {}
    for name in args.tasks.split(","):
        t = task(name, args.quick)
        log(f"task {name}: batch {t['batch_size']}, AdamW {t['steps']} steps, others "
            f"{t['steps'] // 2}")
        runs = run_task(t, t["steps"] // 2, log)
        target, table = report(t, runs)
        plot(t, runs, target, os.path.join(out, f"training_{name}.png"))
        grids = "; ".join(f"{n}: " + ", ".join(f"{lr:g}→{f:.3g}" for lr, f in r["grid"].items())
                          for n, r in runs.items() if r["grid"])
        sections.append(f"**{name}** (batch {t['batch_size']}, AdamW {t['steps']} steps, "
                        f"the others {t['steps'] // 2}; target = tuned AdamW's final training "
                        f"loss {target:.4g})\n\n{table}\n\nFinal training loss over the "
                        f"learning-rate grid: {grids}.\n")
        data[name] = {n: {k: v for k, v in r.items()} for n, r in runs.items()}
    load = os.getloadavg()
    head = (f"Run {datetime.date.today()}, jax {jax.__version__}, optax {optax.__version__}, "
            f"float32, one thread pinned to CPU {PINNED_CPU} ({cpu_name()}); load average "
            f"{load[0]:.1f} on a 2-core machine shared with other jobs: wall times are "
            f"inflated and noisy, compare ratios within a task. {kfac_jax_status()}.\n")
    text = head + "\n" + "\n".join(sections)
    with open(os.path.join(out, "training.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(out, "training.json"), "w") as fh:
        json.dump(data, fh, default=float)
    if not args.quick:
        write_section("training", "## Training loops: Kronecker-factored optimizers (issue 17)"
                      "\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
