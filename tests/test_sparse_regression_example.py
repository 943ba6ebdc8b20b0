"""examples/sparse_regression.py at smoke size: the elastic-net path against scikit-learn, the
implicit dL/dlog λ against a finite difference, and the numbers its docstring promises."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import yaml

# float64: the example's configs ask for it (and setup switches it on for the process)
pytestmark = pytest.mark.float64

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "sparse_regression_smoke.yaml"


def _load():
    spec = importlib.util.spec_from_file_location(
        "sparse_regression", ROOT / "examples" / "sparse_regression.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a whole example: ~15 s of CPU, mostly compiling (make test-slow)
def test_sparse_regression_smoke(tmp_path):
    example = _load()
    assert example.main(["--config", str(SMOKE), "--output-dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["path_all_ok"] and m["descent"]["all_ok"]

    # the path agrees with scikit-learn's coordinate descent on the same data, which minimises
    # the same objective: 1/(2n)‖y − Xw − b‖² + λ(α‖w‖₁ + (1 − α)‖w‖²/2)
    from sklearn.linear_model import ElasticNet

    config = yaml.safe_load(SMOKE.read_text())
    (X, y), _, _ = example.load_data(config, np.float64)
    coefs = np.asarray(m["coefficients"])
    for k in (2, len(m["lambdas"]) // 2, len(m["lambdas"]) - 1):
        ref = ElasticNet(alpha=m["lambdas"][k], l1_ratio=config["l1_ratio"], tol=1e-14,
                         max_iter=100_000).fit(X, y).coef_
        np.testing.assert_allclose(coefs[k], ref, atol=1e-6)
        assert set(np.flatnonzero(coefs[k])) == set(np.flatnonzero(ref))  # same support
    # λ_max is where w leaves zero: the first point is all zeros, the second is not
    assert not coefs[0].any() and coefs[1].any()
    assert m["cold_warm_max_abs_diff"] < 1e-6  # warm and cold starts reach the same path

    # the implicit derivative against the central finite difference printed by the example
    fd = m["fd_check"]
    assert fd["relative_error"] < 1e-5 and abs(fd["implicit"]) > 1e-2, fd

    # the numbers the module docstring promises at smoke size (float64)
    assert abs(m["lambda_max"] - 0.6934) < 1e-3, m["lambda_max"]
    assert abs(fd["implicit"] - 0.09611) < 1e-3, fd
    best = m["grid_best"]
    assert best["lambda"] == pytest.approx(0.03002, rel=1e-3), best
    assert abs(best["val_loss"] - 0.2078) < 0.002 and abs(best["test_loss"] - 0.2644) < 0.002
    descent = m["descent"]
    val = descent["val_loss"]
    assert abs(val[0] - 0.2773) < 0.002 and abs(val[-1] - 0.2076) < 0.002, val
    assert all(b <= a for a, b in zip(val, val[1:], strict=False)), val  # Armijo: monotone
    assert val[-1] <= best["val_loss"] + 1e-4  # the gradient does at least as well as the grid
    assert descent["lambda"][-1] == pytest.approx(0.0252, rel=0.1), descent["lambda"]
    assert abs(descent["test_loss_last"] - 0.2637) < 0.002, descent
    assert (tmp_path / "sparse_regression.png").stat().st_size > 10_000


def test_sparse_regression_rejects_out_of_range_keys(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # a type error: the shared config layer
        _load().main(["--config", str(SMOKE), "--set", "l1_ratio=high",
                      "--output-dir", str(tmp_path)])
    assert e.value.code == 2
    code = _load().main(["--config", str(SMOKE), "--set", "l1_ratio=0",
                         "--output-dir", str(tmp_path)])
    assert code == 2
    assert "'l1_ratio': 0.0 must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_sparse_regression_full_config(tmp_path):
    # a cheap full config (issue 14): 20 s of CPU time, 79 s wall on a loaded 2-core CPU
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sparse_regression.py"), "--config",
         str(ROOT / "configs" / "sparse_regression.yaml"), "--output-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["path_all_ok"] and m["descent"]["all_ok"]
    # the numbers the module docstring promises for the full config
    assert len(m["lambdas"]) == 50 and abs(m["lambda_max"] - 0.6934) < 1e-3
    fd = m["fd_check"]
    assert fd["relative_error"] < 1e-5 and abs(fd["implicit"] - 0.08680) < 1e-3, fd
    best = m["grid_best"]
    assert best["lambda"] == pytest.approx(0.01775, rel=1e-3), best
    assert abs(best["val_loss"] - 0.2304) < 0.002 and abs(best["test_loss"] - 0.2816) < 0.002
    val = m["descent"]["val_loss"]
    assert abs(val[0] - 0.2768) < 0.002 and abs(val[-1] - 0.2303) < 0.002, val
    assert val[-1] <= best["val_loss"] + 1e-4
    assert m["descent"]["lambda"][-1] == pytest.approx(0.0188, rel=0.1), m["descent"]
    assert abs(m["descent"]["test_loss_last"] - 0.2812) < 0.002, m["descent"]
    assert m["cold_warm_max_abs_diff"] < 1e-6  # over the cold solves that succeeded
