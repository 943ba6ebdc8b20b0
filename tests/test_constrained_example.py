"""examples/constrained.py at smoke size: the portfolio against SLSQP, dw*/dμ against finite
differences, and the claims of its docstring."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

pytestmark = pytest.mark.float64  # the example's configs ask for float64

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "constrained_smoke.yaml"


def _load():
    spec = importlib.util.spec_from_file_location("constrained_example",
                                                  ROOT / "examples" / "constrained.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~10 s of CPU, mostly compiling the solve and its Jacobian
def test_constrained_example_smoke(tmp_path):
    example = _load()
    assert example.main(["--config", str(SMOKE), "--output-dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "successful"
    assert max(m["kkt"].values()) < 1e-8
    w = np.asarray(m["weights"])
    assert abs(w.sum() - 1.0) < 1e-9 and w.min() >= 0.0 and w.max() <= 0.25
    assert m["risk_multiplier"] > 0 and abs(m["risk"] - m["sigma2"]) < 1e-9  # risk active
    assert m["slsqp_max_abs_diff"] < 1e-5
    assert m["fd_relative_error"] < 1e-4
    assert m["jacobian_bound_rows_zero"] and m["jacobian_column_sums_max"] < 1e-8
    assert m["what_if"]["taylor_error"] <= 1e-2 * m["what_if"]["change"]
