"""Every ```python block in README.md and docs/**/*.md runs as written, in a fresh process,
with JAX's default float32 (x64 off), as a reader who copies it would run it.

A block that is a fragment on purpose is fenced ```python notest (keep them rare). A block
that fails because of a known solver bug is listed in KNOWN_FAILURES below with the reason;
it is a strict xfail, so fixing the bug makes the test fail until the entry is removed.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

# Each block runs in a fresh process (about 8 s each): run by .ci/run, not by make test.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# (file relative to the repository root, a string the block contains) ->
# (why it fails today, a string its error output must contain). Any other failure of such a
# block is a real failure, not the expected one.
KNOWN_FAILURES: dict = {}


def _quickstart(out):
    lines = out.splitlines()  # the status prints its name; the hypergradient is not zero
    assert lines[0].startswith("RESULTS.successful") and len(lines) == 2, out
    assert float(lines[1]) != 0.0, out


def _equations(out):
    lines = out.splitlines()  # exact data: the decay rate is recovered
    assert len(lines) == 3 and abs(float(lines[0].split()[0]) - 1.3) < 1e-4, out


def _implicit(out):
    assert abs(float(out) - 1 / 12) < 1e-6, out  # d∛a/da at a = 8


def _sketching(out):
    steps, hvps = (int(v) for v in out.split())
    assert 1 <= steps <= 40 and hvps >= 1, out


def _optimizers(out):
    # v = 0 predicts 0: the initial loss is the mean of sin(X @ 1)², about 0.43 here
    import jax
    import jax.numpy as jnp

    X = jax.random.normal(jax.random.key(0), (256, 8))
    initial = float(jnp.mean(jnp.sin(X @ jnp.ones(8)) ** 2))
    assert float(out) < 0.3 * initial, (out, initial)


# (file, a string the block contains) -> a check of what the block printed, for the blocks
# whose comments promise a result (the README's sections).
OUTPUT_CHECKS: dict = {
    ("README.md", "print(jax.grad(lambda lam: jnp.sum(solve(lam)"): _quickstart,
    ("README.md", "bratu = lambda u, lam"): _equations,
    ("README.md", "print(jax.grad(cube_root, argnums=1)(1.0, 8.0))"): _implicit,
    ("README.md", "solver=jaxopt2.SketchedNewton())"): _sketching,
    ("README.md", "jaxopt2.optimizers.hessian_free(model_fn=model_fn"): _optimizers,
}


class KnownSolverFailure(Exception):
    """A block listed in KNOWN_FAILURES failed in the way recorded there."""


def python_blocks(text: str):
    """The ```python blocks of a Markdown text as (line number of the opening fence, counted
    from 1; code; the info words after "python").
    Fences may be indented (inside lists or admonitions); the indentation is removed."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith("```"):
            indent = len(lines[i]) - len(stripped)
            info = stripped[3:].split()
            start, body, i = i + 1, [], i + 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
                i += 1
            if info and info[0] == "python":
                blocks.append((start, "\n".join(body) + "\n", info[1:]))
        i += 1
    return blocks


def _cases():
    cases = []
    for path in FILES:
        rel = path.relative_to(ROOT).as_posix()
        for line, code, info in python_blocks(path.read_text(encoding="utf-8")):
            if "notest" in info:
                continue
            known = [(reason, expected) for (file, needle), (reason, expected)
                     in KNOWN_FAILURES.items() if file == rel and needle in code]
            marks = [pytest.mark.xfail(strict=True, raises=KnownSolverFailure, reason=reason)
                     for reason, _ in known]
            expected = known[0][1] if known else None
            checks = [check for (file, needle), check in OUTPUT_CHECKS.items()
                      if file == rel and needle in code]
            cases.append(pytest.param(rel, line, code, expected, checks, marks=marks,
                                      id=f"{rel}:{line}"))
    return cases


CASES = _cases()


def _float32_env():
    env = dict(os.environ)
    for name in ("JAX_ENABLE_X64", "JAX_DEFAULT_DTYPE_BITS"):
        env.pop(name, None)
    env["JAX_ENABLE_X64"] = "0"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


@pytest.mark.parametrize("rel, line, code, expected_failure, output_checks", CASES)
def test_snippet_runs_in_float32(rel, line, code, expected_failure, output_checks, tmp_path):
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_float32_env(),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and expected_failure and expected_failure in proc.stderr:
        raise KnownSolverFailure(proc.stderr[-2000:])
    assert proc.returncode == 0, (
        f"the ```python block at {rel}:{line} failed (exit {proc.returncode}) in a fresh "
        f"float32 process.\n--- stdout ---\n{proc.stdout[-3000:]}\n"
        f"--- stderr ---\n{proc.stderr[-6000:]}")
    for check in output_checks:
        check(proc.stdout)


def test_blocks_are_collected():
    # The parser finds the blocks (a broken fence would silently drop every test above).
    text = "x\n```python\na = 1\n```\n  ```python notest\n  b\n  ```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "a = 1\n", []), (5, "b\n", ["notest"])]
    assert any(c.values[0] == "README.md" for c in CASES)
    assert len(CASES) >= 5


def test_known_failures_still_match_a_block():
    # An entry whose block was edited away would silently stop guarding anything.
    for file, needle in [*KNOWN_FAILURES, *OUTPUT_CHECKS]:
        codes = [c.values[2] for c in CASES if c.values[0] == file]
        assert any(needle in code for code in codes), (file, needle)
