"""Examples run in CI: the cheap ones (demo, equations, hyperparameter optimization) at their
full configs, the others at a small size (configs/*_smoke.yaml)."""

import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

# slow: each test runs a whole example or README block (make test-slow, run by .ci/run)
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_mlp_example_smoke(tmp_path):
    example = _load("train_mlp")
    assert example.main(["--config", str(ROOT / "configs" / "train_mlp_smoke.yaml"),
                         "--output-dir", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("digits", "regression"):
        runs = metrics["problems"][name]["runs"]
        assert len(runs) == 2  # regularized_newton, tuned adam
        assert all(r["losses"][-1] < r["losses"][0] for r in runs), name  # all made progress
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    # the numbers the module docstring promises at smoke size (float32): (final training
    # loss, test metric) of regularized_newton and adam, each with its tolerances
    promised = {"digits": [(0.339, 0.03, 0.898, 0.03), (1.371, 0.05, 0.633, 0.05)],
                "regression": [(0.0652, 0.01, 0.0708, 0.01), (0.1438, 0.01, 0.162, 0.01)]}
    for name, expected in promised.items():
        runs = metrics["problems"][name]["runs"]
        assert [r["name"].split()[0] for r in runs] == ["regularized_newton", "adam"]
        for run, (loss, loss_tol, metric, metric_tol) in zip(runs, expected, strict=True):
            assert abs(run["losses"][-1] - loss) < loss_tol, (name, run["name"], run["losses"])
            assert abs(run["metric"] - metric) < metric_tol, (name, run["name"], run["metric"])
        assert runs[0]["losses"][-1] < runs[1]["losses"][-1], name


def test_train_mlp_kronecker_example_smoke(tmp_path):
    """configs/train_mlp_kronecker_smoke.yaml: 20 steps of the deep autoencoder (issue 17's
    first benchmark task) with soap, shampoo and kfac against adam, all at lr 3e-3 (kfac sets
    its own): each Kronecker-factored optimizer ends below adam, at the losses the module
    docstring promises."""
    example = _load("train_mlp")
    assert example.main(["--config", str(ROOT / "configs" / "train_mlp_kronecker_smoke.yaml"),
                         "--output-dir", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    runs = {r["name"].split()[0]: r for r in metrics["problems"]["autoencoder"]["runs"]}
    assert list(runs) == ["soap", "shampoo", "kfac", "adam"]
    promised = {"soap": 0.0286, "shampoo": 0.0150, "kfac": 0.0292, "adam": 0.0322}
    for name, loss in promised.items():
        losses = runs[name]["losses"]
        assert abs(losses[-1] - loss) < 0.003 and losses[-1] < losses[0], (name, losses)
        if name != "adam":
            assert losses[-1] < runs["adam"]["losses"][-1], name
    assert set(metrics["problems"]["autoencoder"]["grids"]) == {"soap", "shampoo", "adam"}
    assert (tmp_path / "autoencoder.png").stat().st_size > 10_000


@pytest.mark.float64
def test_failed_inner_solve_gives_nonzero_exit_smoke(tmp_path, capsys):
    # one Newton-CG step cannot meet the inner tolerance: every inner solve fails, the
    # hypergradients are NaN, and the example must say so and return non-zero (it returned 0)
    example = _load("hyperparameter_optimization")
    code = example.main([
        "--config", str(ROOT / "configs" / "hyperparameter_optimization_smoke.yaml"),
        "--set", "inner_max_steps=1", "--set", "outer_steps=1", "--set", "grid=[0.0]",
        "--set", "extra_features.count=10", "--output-dir", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED: inner solve failed" in err and "FAILED: grid search" in err
    assert not (tmp_path / "validation_loss.png").exists()  # no plot of NaN weights
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["inner_max_steps"] == 1


RANDOM_EXAMPLES = ("demo", "equations", "hyperparameter_optimization", "dataset_distillation",
                   "deq", "train_mlp")


@pytest.mark.parametrize("name", RANDOM_EXAMPLES)
def test_every_example_drawing_random_numbers_has_a_seed_key(name):
    # issue 14: demo and equations hard-coded their seeds; the seed is a config key (printed
    # and saved with the resolved config), and no example seeds a generator with a literal
    source = (ROOT / "examples" / f"{name}.py").read_text()
    assert _load(name).DEFAULTS["seed"] == 0
    hard_coded = re.findall(r"(?:PRNGKey|random\.key|default_rng|random_state=)\(?\s*\d", source)
    assert not hard_coded, hard_coded


def test_demo_synthetic_data_follows_the_seed():
    demo = _load("demo")
    config = {**demo.DEFAULTS, "dataset": "synthetic", "synthetic": {"n": 50, "d": 4}}
    X0, y0 = demo.load_data(config, "float64")
    X0_again, _ = demo.load_data(config, "float64")
    X1, _ = demo.load_data({**config, "seed": 1}, "float64")
    assert (X0 == X0_again).all() and not (X0 == X1).all()


def test_run_all_smoke_writes_its_table_into_the_output_dir(tmp_path):
    # examples/run_all.py (make examples-gpu) on one cheap example: each example runs in its own
    # process; the table, the logs and the example's outputs go under --output-dir
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "run_all.py"), "--smoke", "--device", "cpu",
         "--only", "deq", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in (tmp_path / "results.md").read_text().splitlines()[2:] if line]
    assert len(rows) == 1, rows
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:3] == ["deq", "deq_smoke.yaml", "0"], cells
    assert "(cpu)" in cells[4], cells  # the device line the example printed
    assert (tmp_path / "deq" / "metrics.json").exists()
    assert "training loss" in (tmp_path / "deq.log").read_text()


@pytest.mark.slow
def test_demo_full_config(tmp_path):
    # the full config of the cheap examples runs in CI (issue 14): the demo's (configs/
    # default.yaml) took 55 s on a shared 2-core CPU; train_mlp's, dataset_distillation's and
    # the DEQ's take 5-20 min there (docs/guides/examples.md)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--config",
         str(ROOT / "configs" / "default.yaml"), "--output-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (tmp_path / "results.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        row = dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True))
        rows[row["solver"]] = row
    # the numbers the module docstring promises for the full config
    assert list(rows) == yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())["solvers"]
    for row in rows.values():
        assert row["status"] == "ok" and abs(float(row["objective"]) - 0.0598) < 1e-4, row
    for name, iters, tol in (("GradientDescent", 135, 15), ("LBFGS", 68, 10), ("Newton", 10, 1)):
        assert abs(int(rows[name]["iters"]) - iters) <= tol, rows[name]
    assert rows["Newton"]["dense Hessians"] == rows["Newton"]["iters"]  # one per iteration
    assert "HVPs" in header
    # valid Markdown: as many cells on every line as the separator (no stray "|" in a cell)
    assert {line.count("|") for line in lines if line.strip()} == {lines[1].count("|")}, lines
    assert (tmp_path / "convergence.png").stat().st_size > 10_000


@pytest.mark.slow
def test_hyperparameter_optimization_full_config(tmp_path):
    # the second cheap full config (issue 14): 52 s wall on a shared 2-core CPU, float64
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "hyperparameter_optimization.py"), "--config",
         str(ROOT / "configs" / "hyperparameter_optimization.yaml"), "--output-dir",
         str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    # the numbers the module docstring promises for the full config
    assert m["num_hyperparameters"] == 564 and m["inner_all_ok"]
    assert m["fd_check"]["relative_error"] < 1e-6, m["fd_check"]
    val = m["val_loss"]
    assert abs(val[0] - 0.1623) < 0.005 and abs(val[-1] - 0.0248) < 0.005, (val[0], val[-1])
    assert abs(m["test_loss_first"] - 0.1527) < 0.005, m["test_loss_first"]
    assert abs(m["test_loss_last"] - 0.1042) < 0.005, m["test_loss_last"]
    assert abs(m["test_acc_first"] - 0.944) < 0.01 and abs(m["test_acc_last"] - 0.965) < 0.01
    grid = m["grid_best"]
    assert grid["l2"] == pytest.approx(np.exp(-4.0)), grid
    assert abs(grid["val_loss"] - 0.1489) < 0.005 and abs(grid["test_acc"] - 0.946) < 0.01, grid
    # per-feature weights beat the best single λ on the test loss too, not only on validation
    assert m["test_loss_last"] < grid["test_loss"]
    assert (tmp_path / "validation_loss.png").stat().st_size > 10_000


@pytest.mark.slow
def test_equations_full_config(tmp_path):
    # the third cheap full config (issue 14): 33 s of CPU time (2 min wall on a loaded 2-core
    # CPU), most of it compiling; float64 (its config says why)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "equations.py"), "--config",
         str(ROOT / "configs" / "equations.yaml"), "--output-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "results.md").read_text().split("\n\n")[0]
    rows = [line for line in table.splitlines()[2:] if line.strip()]
    assert len(rows) == 5 and all(line.rstrip(" |").endswith("ok") for line in rows), table
    # the numbers the module docstring promises for the full config (Bratu n = 10,000)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert abs(m["du_dlam_mid"] - 0.1592) < 1e-3, m
    assert m["fd_relative_error"] < 1e-5, m
    assert abs(m["deq_spectral_radius"] - 0.95) < 0.02, m
    steps = m["deq_steps_max"]
    assert abs(steps["Anderson"] - 161) <= 30, steps
    assert abs(steps["FixedPointIteration"] - 784) <= 80, steps
    assert steps["FixedPointIteration"] > 3 * steps["Anderson"], steps
    assert (tmp_path / "equations.png").stat().st_size > 10_000
