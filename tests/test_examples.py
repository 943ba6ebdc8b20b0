"""Examples run in CI at a small size (configs/smoke.yaml)."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_smoke(tmp_path):
    demo = _load("demo")
    assert demo.main(["--config", str(ROOT / "configs" / "smoke.yaml"),
                      "--output-dir", str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    rows = [line for line in table.splitlines()[2:] if line.strip()]
    assert len(rows) == 2
    assert all(line.rstrip(" |").endswith("ok") for line in rows), table
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
