"""The bilevel examples (implicit differentiation through solves) at seconds-long sizes.

Each runs its `configs/*_smoke.yaml` and checks that the outer problem made real progress, not
only that the script finished.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

# float64: written for float64 tolerances; slow: whole examples at smoke size (make test-slow)
pytestmark = [pytest.mark.float64, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(name, tmp_path):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--config", str(ROOT / "configs" / f"{name}_smoke.yaml"),
                        "--output-dir", str(tmp_path)]) == 0
    return json.loads((tmp_path / "metrics.json").read_text())


def test_dataset_distillation_smoke(tmp_path):
    m = _run("dataset_distillation", tmp_path)
    loss = m["outer_loss"]
    assert loss[-1] < 0.5 * loss[0], (loss[0], loss[-1])
    assert m["inner_all_ok"]
    # 10 distilled images train a much better classifier than 10 random real ones
    random_real = float(np.mean(m["random_real_test_acc"]))
    assert m["distilled_test_acc"] > random_real + 0.15, (m["distilled_test_acc"], random_real)
    assert m["distilled_test_acc"] > 0.85
    # the numbers the module docstring promises at smoke size (float32)
    assert abs(m["distilled_test_acc"] - 0.956) < 0.01, m["distilled_test_acc"]
    assert abs(loss[0] - 1.106) < 0.01 and abs(loss[-1] - 0.333) < 0.01, (loss[0], loss[-1])
    assert abs(random_real - 0.652) < 0.01, random_real
    # the whole-training-set baseline is tuned (its own l2 by validation), and beats 10 images
    assert m["full_training_set_l2"] == pytest.approx(1e-4)
    assert abs(m["full_training_set_test_acc"] - 0.970) < 0.01, m["full_training_set_test_acc"]
    assert m["full_training_set_test_acc"] > m["distilled_test_acc"]
    images = np.load(tmp_path / "distilled_images.npy")
    assert images.shape == (10, 8, 8) and np.all(np.isfinite(images))
    assert np.min(np.std(images.reshape(10, -1), axis=1)) > 0.05  # no blank images
    assert (tmp_path / "distilled_images.png").stat().st_size > 10_000


def test_deq_smoke(tmp_path):
    m = _run("deq", tmp_path)
    losses = m["epoch_train_loss"]
    assert losses[-1] < 0.6 * losses[0], losses
    assert m["epoch_test_acc"][-1] > 0.7
    assert m["all_fixed_points_ok"]
    # Anderson converges well inside its budget, and W stays a contraction
    assert max(m["anderson_steps_train"]) < 0.5 * m["max_steps"]
    assert max(m["spectral_norm_W"]) < 1.0
    # the numbers the module docstring promises at smoke size (float32)
    assert abs(losses[0] - 1.804) < 0.05 and abs(losses[-1] - 0.566) < 0.05, losses
    assert abs(m["epoch_test_acc"][-1] - 0.913) < 0.02, m["epoch_test_acc"]
    assert abs(np.mean(m["anderson_steps_train"]) - 8.9) < 1.0, m["anderson_steps_train"]
    assert (tmp_path / "training.png").stat().st_size > 10_000
