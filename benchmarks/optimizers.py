"""Curvature-aware optax transformations (`jaxopt2.optimizers`) against tuned adam, L-BFGS,
Sophia and K-FAC on the two problems of examples/train_mlp.py, float32, one thread.

    python benchmarks/optimizers.py          # configs/train_mlp.yaml; updates RESULTS.md
    python benchmarks/optimizers.py --quick  # configs/train_mlp_smoke.yaml: a smoke run

The problems, minibatches, training loop and timing are those of the example (imported from
examples/train_mlp.py, not copied): an MLP classifier on scikit-learn's digits (softmax
cross-entropy) and an MLP regression of sin(3 x1) cos(2 x2) + noise (MSE), every optimizer
from the same initial weights on the same minibatches; each optimizer's steps are one jitted
`fori_loop` over `eval_every` steps, the full training loss is evaluated between those chunks
(untimed). Optimizers:

- each `jaxopt2.optimizers` transformation with its default settings, given the
  Gauss-Newton `model_fn` / `loss_fn` split where its factory takes one;
- optax adam, learning rate tuned over the config's grid (lowest final training loss);
- optax.lbfgs on the full training set (zoom line search), default settings;
- optax.contrib.sophia (Hutchinson diagonal, clipped), learning rate tuned over
  `--sophia-lrs` (its steps are clipped to lr per coordinate, so its rates sit lower);
- kfac_jax.Optimizer (K-FAC with adaptive learning rate, momentum and damping, as in its
  README), the loss registered as softmax cross-entropy / squared error, its layers found by
  its automatic registration; it jits its own step, so it is stepped from Python, and its
  compile time is its first step's time minus the median step's.

Reported per problem: steps and run time (compile excluded) to the first evaluation with the
training loss at or below the target, the ratio of that time to tuned adam's, the run time of
all steps, the compile time (ahead-of-time compile plus the first call's one-time set-up),
the final training loss, and test accuracy (digits) or test MSE (regression). Run times are
medians over `--repeats` runs of the same compiled program (fewer for runs longer than
`--budget` seconds). The issue's target: the best jaxopt2 transformation reaches the target
loss in at most half the time of tuned adam on both problems, with no tuning of its own.
Writes outputs/optimizers.md, outputs/optimizers.json and the loss curves
outputs/optimizers_<problem>.png, and in a full run also the
"optimizers" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
from single_thread import PINNED_CPU
# isort: on

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import sys
import time
import traceback

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import train_mlp as tm  # noqa: E402
from _common import load_config, markdown_table  # noqa: E402
from harness import cpu_name, write_section  # noqa: E402

KFAC_BURNIN = 10  # kfac_jax.Optimizer's default num_burnin_steps


def sophia_trainer(problem, lr):
    """optax.contrib.sophia with its defaults but the learning rate; it takes the minibatch
    loss as `obj_fn` for its Hutchinson estimate of the Hessian diagonal."""
    import optax

    opt = optax.contrib.sophia(lr)
    return tm.optax_trainer(f"sophia (lr={lr:g})", opt, problem, obj_fn_arg="obj_fn")


def kfac_trainer(problem, seed):
    """kfac_jax.Optimizer with the adaptive settings of its README example. The loss registers
    its output distribution (kfac-jax's curvature blocks need it); squared error with weight 1
    is kfac-jax's sum((pred - y)^2)/batch, which is our MSE for one output."""
    import kfac_jax

    def loss(params, batch):
        out = problem.model_fn(params, batch)
        if problem.task == "classification":
            kfac_jax.register_softmax_cross_entropy_loss(out, batch[1])
        else:
            kfac_jax.register_squared_error_loss(out, batch[1])
        return problem.loss_fn(out, batch)

    opt = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss), l2_reg=0.0,
        use_adaptive_learning_rate=True, use_adaptive_momentum=True, use_adaptive_damping=True,
        initial_damping=1.0, num_burnin_steps=KFAC_BURNIN, multi_device=False)
    key = jax.random.PRNGKey(seed)
    b, n = problem.batch_size, problem.train[0].shape[0]
    # consecutive slices of the (already shuffled) training set: kfac-jax traces the loss on
    # the first, and its default burn-in (10 curvature estimates before the first step, done
    # inside step 0, so counted in its compile time) needs batches from an iterator
    starts = [(k * b) % max(n - b + 1, 1) for k in range(max(KFAC_BURNIN, 1))]
    slices = [jax.tree.map(lambda a, s=s: a[s:s + b], problem.train) for s in starts]

    def init(params):
        return opt.init(params, key, slices[0])

    def host_step(params, state, batch, i):
        rng = jax.random.fold_in(key, i)
        if i == 0:
            burnin = slices[:KFAC_BURNIN]
            params, state, _ = opt.step(params, state, rng, data_iterator=iter([*burnin, batch]),
                                        global_step_int=i)
        else:
            params, state, _ = opt.step(params, state, rng, batch=batch, global_step_int=i)
        return params, state

    return tm.Trainer("kfac-jax", init, host_step=host_step)


def guarded(label, fn):
    """(result, None) or (None, "Error: message") so that one failing optimizer does not end
    the benchmark."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001
        print(traceback.format_exc(limit=6), flush=True)
        msg = str(e).splitlines()[0] if str(e) else ""
        # where it was raised: the innermost frame, shortened to the package's own path
        frame = traceback.extract_tb(e.__traceback__)[-1]
        where = "/".join(frame.filename.split(os.sep)[-3:])
        return None, f"{type(e).__name__}: {msg} (in {where}:{frame.lineno}, {frame.name})"


def run_problem(name, config, sophia_lrs):
    """All optimizers on one problem: (problem, runs, grids, errors)."""
    problem = tm.build_problem(name, config)
    runs, grids, errors = [], {}, {}

    def add(label, fn):
        t = time.perf_counter()
        run, err = guarded(label, fn)
        if err:
            errors[label] = err
            print(f"  {label}: {err}", flush=True)
            return None
        print(f"  {run.name}: final loss {run.final_loss:.4g}, run {run.run_s:.3f} s, compile "
              f"{run.compile_s:.2f} s ({time.perf_counter() - t:.1f} s)", flush=True)
        runs.append(run)
        return run

    for opt in tm.JAXOPT2_OPTIMIZERS:
        add(opt, lambda opt=opt: tm.train(problem, tm.jaxopt2_trainer(opt, problem), config))

    def tuned(label, make, lrs):
        best, grid = tm.tune(problem, make, lrs, config, label)
        grids[label] = grid
        return best

    add("adam", lambda: tuned("adam", lambda lr: tm.adam_trainer(problem, lr),
                              config["adam_learning_rates"]))
    add("lbfgs", lambda: tm.train(problem, tm.lbfgs_trainer(problem), config))
    add("sophia", lambda: tuned("sophia", lambda lr: sophia_trainer(problem, lr), sophia_lrs))
    add("kfac-jax", lambda: tm.train(problem, kfac_trainer(problem, int(config["seed"])),
                                     config))
    return problem, runs, grids, errors


def problem_section(problem, runs, grids, errors, target):
    adam = next((r for r in runs if r.name.startswith("adam")), None)
    header = tm.SUMMARY_HEADER[:-1] + (problem.metric_name, "time to target / adam")
    table = markdown_table(header, tm.summary_rows(runs, target, reference=adam), ".4g")
    n_params = sum(x.size for x in jax.tree.leaves(problem.params0))
    lines = [f"### {problem.name}: {problem.train[0].shape[0]} training examples, "
             f"{n_params} parameters, batch {problem.batch_size}, {problem.steps} steps; "
             f"target training loss {target:g}", "", table, ""]
    for label, grid in grids.items():
        lines.append(f"- {label} learning-rate grid (final training loss): "
                     + ", ".join(f"{lr:g}: {loss:.3g}" for lr, loss in grid))
    for label, err in errors.items():
        lines.append(f"- {label}: failed: `{err}`")
    return "\n".join(lines)


def target_check(results):
    """Whether the best jaxopt2 transformation reaches the target in at most half of tuned
    adam's time on every problem; one line per problem."""
    lines, met = [], True
    for problem, runs, target in results:
        adam = next((r for r in runs if r.name.startswith("adam")), None)
        adam_hit = adam.to_target(target) if adam else None
        ours = [(r.to_target(target), r.name) for r in runs
                if r.name in tm.JAXOPT2_OPTIMIZERS]
        ours = sorted((hit[1], name) for hit, name in ours if hit)
        if not adam_hit or not ours:
            met = False
            lines.append(f"- {problem.name}: " + ("no jaxopt2 transformation reached the "
                                                  "target" if not ours else
                                                  "tuned adam did not reach the target"))
            continue
        ratio = ours[0][0] / adam_hit[1] if adam_hit[1] > 0 else math.inf
        met &= ratio <= 0.5
        lines.append(f"- {problem.name}: best jaxopt2 {ours[0][1]} {ours[0][0]:.3g} s vs tuned "
                     f"adam {adam_hit[1]:.3g} s: ratio {ratio:.2f} "
                     f"({'met' if ratio <= 0.5 else 'NOT met'})")
    return met, lines


def versions():
    out = []
    for m in ("jax", "optax", "equinox", "kfac-jax"):
        try:
            out.append(f"{m} {importlib.metadata.version(m)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{m} not installed")
    return ", ".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the smoke config's sizes")
    p.add_argument("--config", default=None, help="YAML config (default: the example's)")
    p.add_argument("--problems", nargs="*", default=None)
    # Sophia's steps are clipped to lr per coordinate: its good rates sit below adam's
    p.add_argument("--sophia-lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per optimizer")
    p.add_argument("--budget", type=float, default=6.0,
                   help="no further repeats of an optimizer once its runs took this long (s)")
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args(argv)
    path = args.config or os.path.join(
        ROOT, "configs", "train_mlp_smoke.yaml" if args.quick else "train_mlp.yaml")
    config = load_config(tm.DEFAULTS, path)
    config.update(progress=False, repeats=args.repeats, repeat_budget_s=args.budget)
    if args.problems:
        config["problems"] = args.problems
    tm.enable_x64(config)
    t_start = time.perf_counter()
    out = os.path.join(ROOT, "outputs")
    os.makedirs(out, exist_ok=True)
    results, sections, raw = [], [], {}
    for name in config["problems"]:
        print(f"{name}:", flush=True)
        problem, runs, grids, errors = run_problem(name, config, args.sophia_lrs)
        target = tm.resolve_target(problem, runs)
        results.append((problem, runs, target))
        tm.plot_runs(problem, runs, target, out, f"optimizers_{name}.png")
        sections.append(problem_section(problem, runs, grids, errors, target))
        raw[name] = {"target_loss": target, "grids": grids, "errors": errors,
                     "runs": [tm.run_to_json(r) for r in runs]}
    met, check = target_check(results)
    device = jax.devices()[0]
    pin = f", one thread pinned to core {PINNED_CPU}" if PINNED_CPU is not None else ""
    head = (
        "## Curvature-aware optax transformations on small networks (`optimizers.py`)\n\n"
        f"{datetime.date.today()}, {cpu_name()} ({device.platform}{pin}), {versions()}; "
        f"{config['dtype']}, config `{os.path.relpath(path, ROOT)}`, whole run "
        f"{time.perf_counter() - t_start:.0f} s. Times in seconds, compile excluded; *s to "
        "target*: run time to the first evaluation (every "
        f"{config['eval_every']} steps) with the full training loss at or below the target; "
        f"medians of up to {args.repeats} runs. jaxopt2 rows: default settings, [GGN] = given "
        "the model_fn / loss_fn split. Issue target (best jaxopt2 transformation at most "
        f"0.5x tuned adam's time to target on both problems): **{'met' if met else 'not met'}**"
        ".\n\n" + "\n".join(check))
    text = head + "\n\n" + "\n\n".join(sections)
    print(text)
    with open(os.path.join(out, "optimizers.md"), "w") as fh:
        fh.write(text + "\n")
    with open(os.path.join(out, "optimizers.json"), "w") as fh:
        json.dump(raw, fh, indent=1)
    if not args.quick and args.config is None and args.problems is None:
        write_section("optimizers", text)
        print("updated the optimizers section of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
