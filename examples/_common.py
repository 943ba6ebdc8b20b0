"""Pieces shared by the example scripts: configuration, command line, timing and output files.

Not part of jaxopt2. Each example puts `examples/` on `sys.path` and imports this module as
`_common`. Heavy modules (jax, yaml, matplotlib) are imported inside the functions, as in the
examples themselves, so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def load_config(defaults: dict, path: str | None, nested: bool = True) -> dict:
    """A copy of `defaults` updated from the YAML file at `path` (if given).

    With `nested`, a mapping in the file updates the default mapping of the same key, one level
    deep (``anderson: {rtol: 1e-6}`` keeps the other Anderson settings); without it, every key
    in the file replaces the default value whole. `defaults` itself is never modified.
    """
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in defaults.items()}
    if path:
        import yaml

        with open(path) as f:
            for key, value in (yaml.safe_load(f) or {}).items():
                if nested and isinstance(value, dict):
                    config[key].update(value)
                else:
                    config[key] = value
    return config


def parse_cli(doc: str, defaults: dict, argv=None, nested: bool = True) -> dict:
    """The configuration an example's command line asks for.

    Options: ``--config FILE`` (YAML merged into `defaults` by `load_config`) and
    ``--output-dir DIR`` (overrides the config's ``output_dir``). `doc` is the script's
    docstring: its first line describes the script in ``--help``. `argv` defaults to
    ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML config (defaults built in)")
    parser.add_argument("--output-dir", default=None, help="overrides the config's output_dir")
    cli = parser.parse_args(argv)
    config = load_config(defaults, cli.config, nested)
    if cli.output_dir:
        config["output_dir"] = cli.output_dir
    return config


def enable_x64(config: dict) -> None:
    """Switch on jax's float64 support when ``config["dtype"]`` is ``"float64"``.

    Call it before creating any array.
    """
    import jax

    if config["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)


def timed(fn, *args):
    """(result, compile seconds, run seconds) of a jitted call.

    Calls ``fn(*args)`` twice: the first call compiles and runs, the second only runs; the
    compile time is the difference (never negative).
    """
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    run = time.perf_counter() - start
    return out, max(first - run, 0.0), run


def markdown_table(header, rows, float_format: str = ".4g") -> str:
    """A Markdown table with padded columns; floats are written with `float_format`."""

    def fmt(x):
        return format(x, float_format) if isinstance(x, float) else str(x)

    cells = [list(header)] + [[fmt(x) for x in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def prepare_output_dir(config: dict) -> str:
    """Create ``config["output_dir"]`` (and its parents) if needed; return its path."""
    out = config["output_dir"]
    os.makedirs(out, exist_ok=True)
    return out


def write_results(out: str, *sections: str) -> None:
    """Write `sections` to ``out/results.md``, separated by blank lines, ending in a newline."""
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n\n".join(sections) + "\n")


def write_metrics(out: str, metrics: dict) -> None:
    """Write `metrics` to ``out/metrics.json`` (indented JSON)."""
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str, name: str) -> str:
    """Save `fig` as ``out/name`` at 120 dpi, close it, and return the file's path."""
    import matplotlib.pyplot as plt

    path = os.path.join(out, name)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def digits_split(config: dict, dtype):
    """scikit-learn's bundled digits scaled to [0, 1], split (stratified, seeded by
    ``config["seed"]``) into ``(X_train, y_train, X_test, y_test)`` with a test share of
    ``config["test_fraction"]``; labels as int32."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X / 16.0, y, test_size=config["test_fraction"], random_state=config["seed"], stratify=y)
    return X_tr.astype(dtype), y_tr.astype(np.int32), X_te.astype(dtype), y_te.astype(np.int32)
