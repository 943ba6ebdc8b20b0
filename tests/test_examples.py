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


def test_readme_quickstart_runs(capsys):
    text = (ROOT / "README.md").read_text()
    code = text.split("## Quickstart", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("jaxopt2._results.RESULTS<>")  # successful has an empty message
    assert len(out) == 2 and float(out[1]) != 0.0


def test_equations_example_smoke(tmp_path):
    example = _load("equations")
    assert example.main(["--config", str(ROOT / "configs" / "equations_smoke.yaml"),
                         "--output-dir", str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    rows = [line for line in table.splitlines()[2:] if line.strip()]
    assert len(rows) == 3
    assert all(line.rstrip(" |").endswith("ok") for line in rows), table
    assert (tmp_path / "equations.png").stat().st_size > 10_000


def test_readme_equations_snippet_runs(capsys):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Least squares, roots and fixed points", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert abs(float(out[0].split()[0]) - 1.3) < 1e-4  # exact data: the rate is recovered


def test_readme_implicit_snippet_runs(capsys):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Implicit differentiation", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    exec(compile("import jax, jax.numpy as jnp\n" + code, "README.md", "exec"), {})
    assert abs(float(capsys.readouterr().out) - 1 / 12) < 1e-6
