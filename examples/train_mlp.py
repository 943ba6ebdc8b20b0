"""Training small neural networks with jaxopt2's curvature-aware optax transformations.

    python examples/train_mlp.py --config configs/train_mlp.yaml

Three problems, trained by minibatch steps from the same initial weights:

1. digits: an MLP classifier (softmax cross-entropy) on scikit-learn's bundled 8x8 digits
   (1,797 images, 10 classes; standardised; a fixed-seed train/test split);
2. regression: an MLP fitted to y = sin(3 x1) cos(2 x2) + noise on [-1, 1]^2 (mean squared
   error);
3. autoencoder: a deep autoencoder on the digits' pixels scaled to [0, 1] (64-256-128-32-
   128-256-64, tanh, linear code and output layers, mean squared reconstruction error), the
   first task of `benchmarks/training.py` (there: the Kronecker-factored optimizers against
   tuned AdamW, muon and sophia; its results are in benchmarks/RESULTS.md, "training").
   Not in the default list: add it with `--set problems=[autoencoder]`.

Optimizers: each transformation of `jaxopt2.optimizers` with its default settings (the
Gauss-Newton ones get the `model_fn` / `loss_fn` split: network outputs, then the loss of the
outputs; `kfac` also an example minibatch, from which it finds the dense layers), optax adam
with its learning rate tuned over a small grid (best final training loss), `soap` and
`shampoo` (which take a learning rate) tuned over the same grid, and optax L-BFGS on the full
training set (zoom line search). `soap`, `shampoo` and `kfac` are not in the default list
either (`--set optimizers=[soap,kfac,adam]`).

All optimizers see the same minibatches (`batch_size`, reshuffled every epoch). Each
optimizer's step is jitted once, as a `fori_loop` over `eval_every` steps so that Python
dispatch does not dominate the small networks' step times; its compile time (ahead-of-time
`lower().compile()`, plus the one-time set-up of the first call, taken by a discarded warm-up
call) is reported separately and excluded from the run times. The full training loss is
evaluated between those chunks, outside the timed region. Prints a table per problem (steps
and run time to the first evaluation at or below `target_loss` (null: 1.5x tuned adam's final
loss), total run time, compile time, final training loss, test accuracy or test MSE), writes
results.md and metrics.json, and saves `<problem>.png`: training loss against steps and
against run time. Runs unchanged on CPU, GPU or TPU (the default JAX device).

Precision: float32 (the default). Minibatch training's gradient noise is far above float32
round-off, so float64 buys nothing here (not compared at full size).

Expected output (measured on CPU, float32; the times vary with the machine and are not
promised):
- smoke (configs/train_mlp_smoke.yaml, 10 steps, regularized_newton and adam at lr 0.01):
  digits: final training loss 0.339 (±0.03) and test accuracy 0.898 (±0.03) for
  regularized_newton against 1.371 (±0.05) and 0.633 (±0.05) for adam; regression: final
  training loss 0.0652 (±0.01) and test MSE 0.0708 (±0.01) against 0.1438 (±0.01) and 0.162
  (±0.01). regularized_newton is ahead on both after 10 steps.
- full (configs/train_mlp.yaml, 1000 steps, six optimizers; 5 min wall, 92 s of CPU time on a
  shared 2-core CPU; one run, so the minibatch noise is not averaged out): tuned adam's
  learning rate 0.03 on both problems.
  digits (target 1e-3), test accuracy (±0.02) and steps to the target (these move with the
  minibatch noise; no tolerance): hessian_free 0.978
  (630), nystrom_sgd 0.984 (210), diag_newton 0.938 (680), regularized_newton 0.984 (730),
  adam 0.971 (90), L-BFGS 0.971 (20); final training losses from 2e-3 (diag_newton) through
  3e-5 (adam) to 4e-8 (regularized_newton). Full-batch L-BFGS fits the training set to a float32
  loss of exactly 0 (87 of 101 evaluations; the plot draws those at 1e-12), and its curvature
  pairs degenerate with the zero gradient: the loss jumps to 8.6 at step 330 and is back at 0
  by step 370.
  regression (target 5e-3; the noise variance is 0.0025), test MSE (±0.0005) and steps to the
  target: hessian_free 0.0031 (20), nystrom_sgd 0.0028 (20), diag_newton 0.0037 (220),
  regularized_newton 0.0031 (20), adam 0.0040 (250), L-BFGS 0.0026 (50).
  Run times are not promised: on the loaded machine nystrom_sgd's digits run took 71 s.
- Kronecker smoke (configs/train_mlp_kronecker_smoke.yaml, 20 autoencoder steps, lr 3e-3):
  final training loss soap 0.0286, shampoo 0.0150, kfac 0.0292, adam 0.0322 (each ±0.003);
  every Kronecker-factored optimizer ends below adam.
- Kronecker full (configs/train_mlp_kronecker.yaml, 500 steps; 2.2 min on one CPU core, most
  of it the learning-rate grids and compiling): autoencoder, target 1.5x tuned adam's final
  loss: soap (lr 3e-3) reaches it in 100 steps, kfac 100, shampoo (lr 3e-3) 125, adam (lr
  3e-3) 200; final training losses kfac 2.6e-4, soap 4.6e-4, shampoo 1.4e-3, adam 2.5e-3
  (test MSE 0.0017, 0.0016, 0.0022, 0.0030). digits (target 1e-3): shampoo 75 steps, adam
  100, soap 125, kfac 200 (test accuracy 0.978, 0.971, 0.973, 0.944); on this 9k-parameter
  network adam's step is 3-15x cheaper, so it is first in time. The wall-time comparison
  on the benchmark's budgets is `benchmarks/training.py` (RESULTS.md, "training").
"""

# No `from __future__ import annotations`: dataclasses would then look this module up in
# sys.modules, where the tests' by-path loader does not put it.
import dataclasses
import inspect
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

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
    show_progress,
    write_metrics,
    write_results,
)

JAXOPT2_OPTIMIZERS = ("hessian_free", "nystrom_sgd", "diag_newton", "regularized_newton",
                      "kfac")
TUNED_OPTIMIZERS = ("soap", "shampoo")  # jaxopt2's, learning rate from `adam_learning_rates`

DEFAULTS = {
    "dtype": "float32",
    "seed": 0,
    "eval_every": 10,           # steps between evaluations of the full training loss
    "problems": ["digits", "regression"],
    "digits": {"hidden": [64, 64], "activation": "tanh", "test_fraction": 0.25,
               "batch_size": 128, "steps": 1000, "target_loss": 1e-3},
    "regression": {"n_train": 2000, "n_test": 1000, "noise": 0.05, "hidden": [32, 32],
                   "activation": "tanh", "batch_size": 128, "steps": 1000,
                   "target_loss": 5e-3},
    "autoencoder": {"hidden": [256, 128, 32, 128, 256], "code_layer": 2, "test_fraction": 0.2,
                    "batch_size": 256, "steps": 500, "target_loss": None},
    "optimizers": ["hessian_free", "nystrom_sgd", "diag_newton", "regularized_newton", "adam",
                   "lbfgs"],
    "adam_learning_rates": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "repeats": 1,               # timed runs per optimizer (median times); see `train`
    "repeat_budget_s": 5.0,     # ... but no further repeat once the runs took this long
    "progress": True,
    "output_dir": "outputs/train_mlp",
}


# ------------------------------------------------------------------------------- problems


@dataclasses.dataclass
class Problem:
    """A network, its data and its loss, split as Gauss-Newton optimizers want it:
    `model_fn(params, batch) -> outputs`, `loss_fn(outputs, batch) -> scalar`, where a batch
    is a pair (inputs, targets)."""

    name: str
    task: str               # "classification" (integer labels) or "regression"
    params0: Any
    model_fn: Callable
    loss_fn: Callable
    train: tuple            # (X, y) on the default device
    test: tuple
    batch_size: int
    steps: int
    target_loss: float | None
    metric_name: str        # "test accuracy" or "test MSE"
    metric_fn: Callable     # (params, (X, y)) -> scalar

    def value_fn(self, params, batch):
        return self.loss_fn(self.model_fn(params, batch), batch)


def mlp_init(key, sizes, dtype, activation):
    """Dense layers as a list of {"w", "b"}: plain `x @ w + b`, which every optimizer here
    (kfac-jax's layer matcher included) understands. Gaussian weights with variance
    1/fan_in (2/fan_in for relu), zero biases."""
    import jax
    import jax.numpy as jnp

    gain = 2.0 if activation == "relu" else 1.0
    layers = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True):
        w = jax.random.normal(k, (m, n), dtype) * math.sqrt(gain / m)
        layers.append({"w": w, "b": jnp.zeros(n, dtype)})
    return layers


def mlp_apply(params, x, activation):
    import jax

    act = {"tanh": jax.numpy.tanh, "relu": jax.nn.relu}[activation]
    for layer in params[:-1]:
        x = act(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def digits_problem(cfg, dtype, seed) -> Problem:
    import jax
    import jax.numpy as jnp
    import optax
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=cfg["test_fraction"],
                                              random_state=seed, stratify=y)
    scaler = StandardScaler().fit(X_tr)  # statistics of the training set only
    X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te)
    act = cfg["activation"]

    def model_fn(params, batch):
        return mlp_apply(params, batch[0], act)

    def loss_fn(logits, batch):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]))

    def accuracy(params, data):
        return jnp.mean(jnp.argmax(model_fn(params, data), axis=-1) == data[1])

    sizes = [X.shape[1], *cfg["hidden"], 10]
    return Problem(
        "digits", "classification", mlp_init(jax.random.PRNGKey(seed), sizes, dtype, act),
        model_fn, loss_fn,
        (jnp.asarray(X_tr, dtype), jnp.asarray(y_tr, jnp.int32)),
        (jnp.asarray(X_te, dtype), jnp.asarray(y_te, jnp.int32)),
        int(cfg["batch_size"]), int(cfg["steps"]), cfg.get("target_loss"),
        "test accuracy", accuracy)


def regression_problem(cfg, dtype, seed) -> Problem:
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    n_tr, n_te = int(cfg["n_train"]), int(cfg["n_test"])
    X = rng.uniform(-1.0, 1.0, (n_tr + n_te, 2))
    y = np.sin(3 * X[:, 0]) * np.cos(2 * X[:, 1]) + cfg["noise"] * rng.standard_normal(len(X))
    y = y[:, None]  # one output per example: (batch, 1), like the network's
    act = cfg["activation"]

    def model_fn(params, batch):
        return mlp_apply(params, batch[0], act)

    def loss_fn(pred, batch):
        return jnp.mean((pred - batch[1]) ** 2)

    def test_mse(params, data):
        return loss_fn(model_fn(params, data), data)

    sizes = [2, *cfg["hidden"], 1]
    return Problem(
        "regression", "regression", mlp_init(jax.random.PRNGKey(seed), sizes, dtype, act),
        model_fn, loss_fn,
        (jnp.asarray(X[:n_tr], dtype), jnp.asarray(y[:n_tr], dtype)),
        (jnp.asarray(X[n_tr:], dtype), jnp.asarray(y[n_tr:], dtype)),
        int(cfg["batch_size"]), int(cfg["steps"]), cfg.get("target_loss"), "test MSE", test_mse)


def autoencoder_problem(cfg, dtype, seed) -> Problem:
    """The digits' pixels (scaled to [0, 1]) through a deep tanh autoencoder: the layer
    `code_layer` (counted from 0) and the output layer are linear. A batch is (inputs,
    inputs), so the split and the metric are the regression ones."""
    import jax
    import jax.numpy as jnp
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X = load_digits().data / 16.0
    X_tr, X_te = train_test_split(X, test_size=cfg["test_fraction"], random_state=seed)
    code = int(cfg["code_layer"])

    def model_fn(params, batch):
        h = batch[0]
        for i, layer in enumerate(params):
            h = h @ layer["w"] + layer["b"]
            if i not in (code, len(params) - 1):
                h = jnp.tanh(h)
        return h

    def loss_fn(out, batch):
        return jnp.mean((out - batch[1]) ** 2)

    def test_mse(params, data):
        return loss_fn(model_fn(params, data), data)

    sizes = [X.shape[1], *cfg["hidden"], X.shape[1]]
    X_tr, X_te = jnp.asarray(X_tr, dtype), jnp.asarray(X_te, dtype)
    return Problem(
        "autoencoder", "regression",
        mlp_init(jax.random.PRNGKey(seed), sizes, dtype, "tanh"), model_fn, loss_fn,
        (X_tr, X_tr), (X_te, X_te), int(cfg["batch_size"]), int(cfg["steps"]),
        cfg.get("target_loss"), "test MSE", test_mse)


def build_problem(name, config) -> Problem:
    import jax.numpy as jnp

    make = {"digits": digits_problem, "regression": regression_problem,
            "autoencoder": autoencoder_problem}[name]
    return make(config[name], jnp.dtype(config["dtype"]), int(config["seed"]))


def minibatch_indices(n, batch_size, steps, seed):
    """(steps, batch_size) example indices: reshuffled every epoch, without replacement within
    an epoch. Drawn once, on the host, so that every optimizer sees the same batches."""
    import numpy as np

    rng = np.random.default_rng(seed)
    per_epoch = max(n // batch_size, 1)
    epochs = -(-steps // per_epoch)
    idx = [rng.permutation(n)[: per_epoch * batch_size].reshape(per_epoch, batch_size)
           for _ in range(epochs)]
    return np.concatenate(idx)[:steps]


# ------------------------------------------------------------------------------- trainers


@dataclasses.dataclass
class Trainer:
    """How one optimizer trains: `init(params) -> state` and a pure
    `step(params, state, batch, train) -> (params, state)` (`train`: the full training set,
    for full-batch methods), jitted by `train`. An optimizer that jits itself (kfac-jax) gives
    `host_step(params, state, batch, step_index) -> (params, state)` instead."""

    name: str
    init: Callable
    step: Callable | None = None
    host_step: Callable | None = None
    note: str = ""


def jaxopt2_trainer(name, problem: Problem) -> Trainer:
    """A `jaxopt2.optimizers` factory by name, default settings; the Gauss-Newton split
    `model_fn` / `loss_fn` is passed when the factory takes it."""
    import jax
    import optax

    from jaxopt2 import optimizers

    factory = getattr(optimizers, name)
    takes = inspect.signature(factory).parameters
    ggn = "model_fn" in takes
    kwargs = dict(model_fn=problem.model_fn, loss_fn=problem.loss_fn) if ggn else {}
    if "example_batch" in takes:  # kfac traces the model on it to find its layers
        kwargs["example_batch"] = jax.tree.map(lambda a: a[:problem.batch_size], problem.train)
    opt = factory(**kwargs)

    def step(params, state, batch, train):
        value_fn = lambda p: problem.value_fn(p, batch)
        value, grads = jax.value_and_grad(value_fn)(params)
        # `value` spares the optimizers that test their steps one evaluation of the loss
        updates, state = opt.update(grads, state, params, value_fn=value_fn, batch=batch,
                                    value=value)
        return optax.apply_updates(params, updates), state

    return Trainer(name, opt.init, step, note="GGN" if ggn else "")


def optax_trainer(name, opt, problem: Problem, obj_fn_arg=None) -> Trainer:
    """A minibatch optax transformation; `obj_fn_arg` names the keyword through which it
    wants the minibatch loss closure (optax.contrib.sophia: "obj_fn"), if it does."""
    import jax
    import optax

    def step(params, state, batch, train):
        value_fn = lambda p: problem.value_fn(p, batch)
        grads = jax.grad(value_fn)(params)
        extra = {obj_fn_arg: value_fn} if obj_fn_arg else {}
        updates, state = opt.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    return Trainer(name, opt.init, step)


def lbfgs_trainer(problem: Problem) -> Trainer:
    """optax.lbfgs on the full training set: the value and gradient at the new point, which
    the line search has already computed, are reused from the state."""
    import optax

    opt = optax.lbfgs()

    def step(params, state, batch, train):
        value_fn = lambda p: problem.value_fn(p, train)
        value, grad = optax.value_and_grad_from_state(value_fn)(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    return Trainer("lbfgs (full batch)", opt.init, step)


def adam_trainer(problem: Problem, lr: float) -> Trainer:
    import optax

    return optax_trainer(f"adam (lr={lr:g})", optax.adam(lr), problem)


def kronecker_trainer(name, problem: Problem, lr: float) -> Trainer:
    """`jaxopt2.optimizers.soap` or `shampoo` at learning rate `lr`, other settings default
    (they need only the gradient)."""
    from jaxopt2 import optimizers

    return optax_trainer(f"{name} (lr={lr:g})", getattr(optimizers, name)(lr), problem)


# ------------------------------------------------------------------------------- training


@dataclasses.dataclass
class Run:
    name: str
    steps: list             # step counts at the evaluations (0 first)
    times: list             # run seconds at the evaluations, compile excluded
    losses: list            # full training loss at the evaluations
    compile_s: float
    metric: float           # test accuracy / test MSE of the final parameters
    note: str = ""

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    @property
    def run_s(self) -> float:
        return self.times[-1]

    def to_target(self, target):
        """(steps, seconds) at the first evaluation with training loss <= target, or None."""
        if target is None:
            return None
        for k, t, loss in zip(self.steps, self.times, self.losses, strict=True):
            if loss <= target:
                return k, t
        return None


def train(problem: Problem, trainer: Trainer, config, desc=None) -> Run:
    """Train from `problem.params0` for `problem.steps` steps (rounded up to a multiple of
    `eval_every`), evaluating the full training loss every `eval_every` steps; stop early if
    it becomes non-finite. With ``config["repeats"]`` > 1 the same compiled program trains
    that many times from scratch (the runs are deterministic: same batches, same losses) and
    the times are the medians over the repeats (no further repeat once the runs so far took
    ``config["repeat_budget_s"]`` seconds): single runs of a few milliseconds are noisy on a
    shared machine."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    every = int(config["eval_every"])
    chunks = max(-(-problem.steps // every), 1)
    n = problem.train[0].shape[0]
    idx = jnp.asarray(minibatch_indices(n, problem.batch_size, chunks * every,
                                        int(config["seed"])))
    data = {"train": problem.train, "idx": idx}

    def batch_at(data, i):
        rows = lax.dynamic_index_in_dim(data["idx"], i, keepdims=False)
        return jax.tree.map(lambda a: a[rows], data["train"])

    params0, state0 = problem.params0, trainer.init(problem.params0)
    step_times = []  # host-stepped optimizers only: seconds of each step
    if trainer.step is not None:
        def run_chunk(params, state, start, data):
            def body(k, carry):
                return trainer.step(*carry, batch_at(data, start + k), data["train"])
            return lax.fori_loop(0, every, body, (params, state))

        t0 = time.perf_counter()
        start0 = jnp.asarray(0, jnp.int32)
        run_chunk = jax.jit(run_chunk).lower(params0, state0, start0, data).compile()
        compile_s = time.perf_counter() - t0
        # The first call of an executable pays a one-time set-up: a discarded warm-up call
        # takes it, and its time beyond that of the first timed chunk counts as compile time.
        t0 = time.perf_counter()
        jax.block_until_ready(run_chunk(params0, state0, start0, data))
        warmup_s = time.perf_counter() - t0
    else:
        get_batch = jax.jit(batch_at)

        def run_chunk(params, state, start, data):
            for k in range(every):
                t = time.perf_counter()
                params, state = jax.block_until_ready(trainer.host_step(
                    params, state, get_batch(data, start + k), int(start) + k))
                step_times.append(time.perf_counter() - t)
            return params, state

    train_loss = jax.jit(problem.value_fn)
    all_times, spent = [], 0.0
    budget = float(config.get("repeat_budget_s", math.inf))
    for rep in range(max(int(config.get("repeats", 1)), 1)):
        if spent > budget:  # long runs are timed fewer times
            break
        t0 = time.perf_counter()
        desc_rep = (desc or trainer.name) + (f" [{rep + 1}]" if rep else "")
        params, steps, times, losses = _train_once(
            run_chunk, params0, trainer.init(params0) if rep else state0, data, every,
            chunks, train_loss, problem.train, desc_rep, config.get("progress", True))
        all_times.append(times)
        spent += time.perf_counter() - t0
    if trainer.step is not None:
        compile_s += max(warmup_s - all_times[0][1], 0.0)
    else:
        # an optimizer that jits itself compiles in its first step: that step's extra time
        # over a typical step is its compile time, taken out of the first run's times
        typical = float(np.median(step_times[1:])) if len(step_times) > 1 else 0.0
        compile_s = max(step_times[0] - typical, 0.0)
        all_times[0] = [0.0] + [t - compile_s for t in all_times[0][1:]]
    times = np.median(np.array(all_times), axis=0).tolist()
    metric = float(jax.jit(problem.metric_fn)(params, problem.test))
    return Run(trainer.name, steps, times, losses, compile_s, metric, trainer.note)


def _train_once(run_chunk, params, state, data, every, chunks, train_loss, train_data, desc,
                progress):
    """One training run: (final params, steps, cumulative run seconds, training losses) at
    step 0 and after every chunk. Only the chunks are timed, not the evaluations."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm import tqdm

    steps, times, losses = [0], [0.0], [float(train_loss(params, train_data))]
    bar = tqdm(range(chunks), desc=desc, file=sys.stdout, leave=False,
               disable=not show_progress(progress))  # only on a terminal, never under CI
    for c in bar:
        start = jnp.asarray(c * every, jnp.int32)
        t = time.perf_counter()
        params, state = jax.block_until_ready(run_chunk(params, state, start, data))
        times.append(times[-1] + time.perf_counter() - t)
        steps.append((c + 1) * every)
        losses.append(float(train_loss(params, train_data)))
        bar.set_postfix(loss=f"{losses[-1]:.3g}")
        if not np.isfinite(losses[-1]):
            break
    bar.close()
    return params, steps, times, losses


def tune(problem, make_trainer, learning_rates, config, label):
    """Train with each learning rate; the run with the lowest final training loss (non-finite
    counts as worst) and a list of (lr, final loss) for every rate."""
    runs = [train(problem, make_trainer(lr), config) for lr in learning_rates]
    finals = [r.final_loss if math.isfinite(r.final_loss) else math.inf for r in runs]
    best = runs[finals.index(min(finals))]
    best.name = f"{label} (lr={learning_rates[finals.index(min(finals))]:g}, tuned)"
    return best, [(lr, r.final_loss) for lr, r in zip(learning_rates, runs, strict=True)]


def run_optimizers(problem, config):
    """The example's optimizers on one problem: (runs, {tuned optimizer: its grid})."""
    runs, grids = [], {}
    for name in config["optimizers"]:
        if name in JAXOPT2_OPTIMIZERS:
            runs.append(train(problem, jaxopt2_trainer(name, problem), config))
        elif name == "adam":
            best, grids[name] = tune(problem, lambda lr: adam_trainer(problem, lr),
                                     config["adam_learning_rates"], config, "adam")
            runs.append(best)
        elif name in TUNED_OPTIMIZERS:
            best, grids[name] = tune(problem, lambda lr, n=name: kronecker_trainer(
                n, problem, lr), config["adam_learning_rates"], config, name)
            runs.append(best)
        elif name == "lbfgs":
            runs.append(train(problem, lbfgs_trainer(problem), config))
        else:
            raise ValueError(f"unknown optimizer {name!r}")
    return runs, grids


def resolve_target(problem, runs):
    """The configured target training loss, or else 1.5x the tuned adam final loss (so that
    tuned adam reaches it before its last step)."""
    if problem.target_loss is not None:
        return float(problem.target_loss)
    adam = [r for r in runs if r.name.startswith("adam")]
    return 1.5 * adam[0].final_loss if adam else None


# -------------------------------------------------------------------------------- output


SUMMARY_HEADER = ("optimizer", "steps", "steps to target", "s to target", "run s",
                  "compile s", "final loss", "metric")


def summary_rows(runs, target, reference=None):
    """One row per run (columns of SUMMARY_HEADER, the metric renamed by the caller), and,
    when `reference` (a Run) is given, the ratio of each run's time to target to its."""
    ref = reference.to_target(target) if reference is not None else None
    rows = []
    for r in runs:
        hit = r.to_target(target)
        row = [r.name + (f" [{r.note}]" if r.note else ""), r.steps[-1],
               hit[0] if hit else "-", hit[1] if hit else "-", r.run_s, r.compile_s,
               r.final_loss, r.metric]
        if reference is not None:
            row.append(hit[1] / ref[1] if hit and ref and ref[1] > 0 else "-")
        rows.append(tuple(row))
    return rows


def plot_runs(problem, runs, target, out, filename=None):
    """Training loss against steps and against run time, one line per run; saved as
    ``out/<problem>.png`` (or `filename`)."""
    plt = pyplot()
    # one y scale for both panels, so that a loss reads the same height in each
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    # a training loss of exactly 0 (float32 cross-entropy of a perfectly fitted training set,
    # as full-batch L-BFGS reaches on digits) would vanish from the log axis: drawn at FLOOR,
    # and the legend counts those evaluations
    floor = 1e-12
    for r in runs:
        shown = [max(loss, floor) for loss in r.losses]
        low = sum(loss < floor for loss in r.losses)
        label = r.name + (f" ({low} evaluations < {floor:g}, drawn at it)" if low else "")
        a1.semilogy(r.steps, shown, label=label)
        # log time axis: run times differ by orders of magnitude (t = 0 left out)
        a2.loglog(r.times[1:], shown[1:], label=label)
    a1.set(xlabel="step", ylabel="training loss (full training set)")
    a2.set(xlabel="run time (s, compile excluded; log axis: t = 0 not shown)",
           ylabel="training loss (full training set)")
    a2.yaxis.set_tick_params(which="both", labelleft=True)  # sharey hides them
    # a diverging run would squash the others: then (only then) the axes stop at 10x the
    # largest initial loss, and the title says so
    top = 10 * max(r.losses[0] for r in runs)
    cut = max((x for r in runs for x in r.losses if math.isfinite(x)), default=0.0) > top
    for a in (a1, a2):
        if target is not None:
            a.axhline(target, color="gray", ls=":", lw=1, label=f"target {target:.3g}")
        if cut:
            a.set_ylim(top=top)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    title = f"{problem.name}: batch {problem.batch_size}"
    if target is not None:
        title += ("; target: configured" if problem.target_loss is not None
                  else "; target: 1.5x tuned adam's final loss")
    if cut:
        title += f"; losses above {top:.3g} (10x the initial loss) cut off"
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out, filename or f"{problem.name}.png")


def run_to_json(r: Run) -> dict:
    return dataclasses.asdict(r)


def main(argv=None) -> int:
    activations = ("tanh", "relu")
    config = setup(__doc__, DEFAULTS, argv, script=__file__,
                   nullable=("digits.target_loss", "regression.target_loss",
                             "autoencoder.target_loss"),
                   choices={"problems": ("digits", "regression", "autoencoder"),
                            "optimizers": (*JAXOPT2_OPTIMIZERS, *TUNED_OPTIMIZERS, "adam",
                                           "lbfgs"),
                            "digits.activation": activations,
                            "regression.activation": activations})
    import jax

    out = prepare_output_dir(config)
    sections, metrics = [], {"config": config, "problems": {}}
    failures = []  # runs whose final training loss or test metric is not finite
    for name in config["problems"]:
        problem = build_problem(name, config)
        n_params = sum(x.size for x in jax.tree.leaves(problem.params0))
        print(f"{name}: {problem.train[0].shape[0]} training examples, {n_params} parameters, "
              f"batch {problem.batch_size}, {problem.steps} steps, device {jax.devices()[0]}")
        runs, grids = run_optimizers(problem, config)
        failures += [f"{name}: {r.name}: final training loss {r.final_loss:.4g}, "
                     f"{problem.metric_name} {r.metric:.4g}"
                     for r in runs if not all_finite(r.final_loss, r.metric)]
        target = resolve_target(problem, runs)
        header = SUMMARY_HEADER[:-1] + (problem.metric_name,)
        table = markdown_table(header, summary_rows(runs, target), ".4g")
        grid_lines = "".join(
            f"\n\n{opt} grid (lr: final loss): "
            + ", ".join(f"{lr:g}: {loss:.4g}" for lr, loss in grid)
            for opt, grid in grids.items())
        text = (f"## {name}\n\nTarget training loss {target:.4g}; times in seconds, compile "
                f"excluded.\n\n{table}" + grid_lines)
        print(text)
        sections.append(text)
        path = plot_runs(problem, runs, target, out)
        print(f"saved {path}")
        metrics["problems"][name] = {"target_loss": target, "grids": grids,
                                     "runs": [run_to_json(r) for r in runs]}
    write_results(out, *sections)
    write_metrics(out, metrics)
    return exit_code(failures)


if __name__ == "__main__":
    sys.exit(main())
