"""Layout rules: a solver module imports shared modules only, never another solver module
(retuning one solver must not silently change another)."""

import ast
import pathlib

import pytest

SOLVER_DIR = pathlib.Path(__file__).resolve().parent.parent / "jaxopt2" / "_solver"
SOLVER_FILES = sorted(p for p in SOLVER_DIR.glob("*.py") if p.name != "__init__.py")


def _imported_modules(path: pathlib.Path):
    """Absolute dotted names of the modules `path` imports (relative imports resolved
    against the package `jaxopt2._solver`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["jaxopt2", "_solver"]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package[: len(package) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.append(base)
            # `from . import x` / `from .._solver import x` import submodules by name
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def test_solver_files_found():
    assert len(SOLVER_FILES) >= 10


@pytest.mark.parametrize("path", SOLVER_FILES, ids=lambda p: p.name)
def test_no_solver_imports_another_solver(path):
    own = f"jaxopt2._solver.{path.stem}"
    solver_modules = {f"jaxopt2._solver.{p.stem}" for p in SOLVER_FILES}
    bad = sorted({name for name in _imported_modules(path)
                  if name != own and (name in solver_modules
                                      or any(name.startswith(m + ".") for m in solver_modules))})
    assert not bad, (f"{path.name} imports solver module(s) {bad}; move the shared piece to a "
                     f"shared module (jaxopt2/_linalg/, _linesearch.py, _validate.py, ...).")


def test_rule_detects_a_violation(tmp_path):
    """The parser resolves the relative forms a violation can take."""
    bad = tmp_path / "x.py"
    bad.write_text("from .newton import damped\nfrom . import root_newton\n"
                   "from jaxopt2._solver.broyden import Broyden\nfrom .._linalg import cg\n")
    names = _imported_modules(bad)
    assert "jaxopt2._solver.newton" in names
    assert "jaxopt2._solver.root_newton" in names
    assert "jaxopt2._solver.broyden" in names
    assert "jaxopt2._linalg" in names


def test_no_underscore_shared_modules_left_in_solver_dir():
    """Shared pieces live outside `_solver/` (every file there is a solver family)."""
    shared = [p.name for p in SOLVER_FILES if p.name.startswith("_")]
    assert not shared, f"move {shared} out of jaxopt2/_solver/ into a shared module"


PACKAGE_DIR = SOLVER_DIR.parent
SHARED_FILES = sorted(p for p in PACKAGE_DIR.rglob("*.py")
                      if SOLVER_DIR not in p.parents and p != PACKAGE_DIR / "__init__.py")


def _package_of(path: pathlib.Path) -> list[str]:
    """The package a relative import in `path` resolves against (for `a/__init__.py`, `a`)."""
    return list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts[:-1])


@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_shared_modules_import_no_solver(path):
    """Shared pieces (the trust-region rules, Levenberg–Marquardt's two paths, ...) never
    import a solver module: a solver's retuning must not reach another through them. Only
    the top-level `jaxopt2/__init__.py` re-exports the solvers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = (node.module or "") if node.level == 0 else ".".join(
                package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        bad += [n for n in names if n == "jaxopt2._solver" or n.startswith("jaxopt2._solver.")]
    assert not bad, f"{path.relative_to(PACKAGE_DIR)} imports {sorted(set(bad))}"
