"""benchmarks/gpu_logistic.py's CPU smoke mode runs to the end (the full size is for a GPU:
its products, both mixed-precision rows and every end-to-end row must at least run here, so
that a lent GPU's few minutes are not lost to a broken script)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # ~70 s: eight solves compiled
def test_gpu_logistic_small_runs(capsys):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import gpu_logistic
    finally:
        sys.path.pop(0)
    gpu_logistic.main(["--small", "--no-write"])
    out = capsys.readouterr().out
    assert "bf16 products (MixedPrecision)" in out
    assert "jaxopt2.NewtonCG, bf16 products" in out
    # every jaxopt2 row reached the tolerance and says successful
    rows = [line for line in out.splitlines() if line.startswith("| ") and "jaxopt2." in line]
    assert len(rows) == 5, rows
    assert all("| yes |" in row and "successful" in row for row in rows), rows


def test_gpu_logistic_refuses_the_full_size_on_a_cpu():
    import jax

    if jax.devices()[0].platform != "cpu":
        pytest.skip("an accelerator is present")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import gpu_logistic
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit, match="--small"):
        gpu_logistic.main(["--no-write"])
