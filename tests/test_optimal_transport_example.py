"""examples/optimal_transport.py at smoke size: both solvers reach every tolerance, agree on W2,
SNS needs fewer iterations, and the implicit derivative matches a finite difference."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

pytestmark = pytest.mark.float64  # the example's configs ask for float64

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "optimal_transport_smoke.yaml"


def _load():
    spec = importlib.util.spec_from_file_location(
        "optimal_transport", ROOT / "examples" / "optimal_transport.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a whole example: five solver compilations and the digits' derivative
def test_optimal_transport_smoke(tmp_path):
    example = _load()
    assert example.main(["--config", str(SMOKE), "--output-dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("sinkhorn", "sns"):
        for point in m["history"][name]:
            assert point["status"] == "successful", (name, point)
            assert point["error"] <= point["tolerance"], (name, point)
    # both solve the same problem: the same W2 once the marginals are tight
    assert m["w2_gap"] is not None and m["w2_gap"] < 1e-6
    # SNS: fewer iterations to the tightest tolerance
    assert m["history"]["sns"][-1]["iterations"] < m["history"]["sinkhorn"][-1]["iterations"]
    fd = m["fd_check"]
    np.testing.assert_allclose(fd["implicit"], fd["finite_difference"], rtol=1e-5)
    assert abs(m["digits"]["sns"]["w2"] - m["digits"]["sinkhorn"]["w2"]) < 1e-6
    assert (tmp_path / "optimal_transport.png").stat().st_size > 10_000


def test_optimal_transport_rejects_bad_config(tmp_path, capsys):
    code = _load().main(["--config", str(SMOKE), "--set", "epsilon=-1",
                         "--output-dir", str(tmp_path)])
    assert code == 2
    assert "'epsilon'" in capsys.readouterr().err
