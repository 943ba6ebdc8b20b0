"""Pieces shared by the example scripts: configuration, command line, timing and output files.

Not part of jaxopt2. Each example puts `examples/` on `sys.path` and imports this module as
`_common`. Heavy modules (jax, yaml, matplotlib) are imported inside the functions, as in the
examples themselves, so that `--help` stays fast.

Configuration: an example's ``DEFAULTS`` dict is its schema. A YAML file (``--config``) and
``--set key=value`` options update it key by key (mappings are merged, at any depth); an
unknown key is an error with a "did you mean" suggestion, and every value must have the type
of its default (an int where a float is expected is fine; ``null`` only where the default is
``None`` or the example lists the key as nullable). `setup` is the one call an example's
``main`` makes: command line, device, dtype, the resolved config printed and saved as
``config.yaml`` beside the outputs. Any configuration error is one line on stderr and exit
code 2.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import glob
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ("float32", "float64")
DEVICES = ("cpu", "gpu", "tpu")


class ConfigError(ValueError):
    """A configuration the example cannot run: the message is one line, for the user."""


def _did_you_mean(word, valid) -> str:
    close = difflib.get_close_matches(str(word), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a mapping"}


def _type_name(kind) -> str:
    return _TYPE_NAMES.get(kind, kind.__name__)


def _describe(value) -> str:
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping"}.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})"


def _check_value(name: str, value, default, nullable):
    """`value` converted to the type of `default`, or a ConfigError naming `name`."""
    if value is None:
        if default is None or name in nullable:
            return None
        raise ConfigError(f"config key {name!r}: expected {_type_name(type(default))}, got null")
    if default is None:  # no type to check against
        return value
    expected = type(default)
    if expected is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is list:
        if isinstance(value, list):
            if default:  # elements typed like the default's first element
                return [_check_value(f"{name}[{i}]", v, default[0], nullable)
                        for i, v in enumerate(value)]
            return list(value)
    elif isinstance(value, expected):
        return value
    raise ConfigError(f"config key {name!r}: expected {_type_name(expected)}, got "
                      f"{_describe(value)}")


def merge_config(base: dict, update, schema: dict, nullable=(), prefix: str = "") -> dict:
    """A copy of `base` with the keys of `update` replaced, checked against `schema` (the
    example's defaults): unknown keys and wrong types raise ConfigError; a mapping updates
    the mapping of the same key key by key, at any depth."""
    if not isinstance(update, dict):
        where = f"config key {prefix[:-1]!r}" if prefix else "the config"
        raise ConfigError(f"{where}: expected a mapping of keys to values, got "
                          f"{_describe(update)}")
    out = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in schema:
            valid = ", ".join(map(str, schema))
            raise ConfigError(f"unknown config key {name!r}{_did_you_mean(key, schema)}; "
                              f"valid keys{' under ' + repr(prefix[:-1]) if prefix else ''}: "
                              f"{valid}")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r}: expected a mapping, got "
                                  f"{_describe(value)}")
            base_value = out[key] if isinstance(out.get(key), dict) else schema[key]
            out[key] = merge_config(base_value, value, schema[key], nullable, name + ".")
        else:
            out[key] = _check_value(name, value, schema[key], nullable)
    return out


def read_yaml_file(path: str) -> dict:
    """The mapping in the YAML file at `path` ({} for an empty file); ConfigError, with a
    one-line message, for a missing, unreadable or malformed file or one that is not a
    mapping."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path!r} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path!r} is not valid YAML: {problem}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must be a mapping of keys to values, got "
                          f"a {_describe(data).rsplit('(', 1)[-1].rstrip(')')}")
    return data


def parse_set(option: str) -> dict:
    """``key=value`` (``a.b=value`` for a nested key; the value read as YAML) as a nested
    dict ``{"a": {"b": value}}``."""
    import yaml

    key, sep, text = option.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {option!r}: expected key=value (a.b=value for a nested key)")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"--set {option!r}: the value is not valid YAML") from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def check_choices(config: dict, choices: dict) -> None:
    """ConfigError unless every dotted key of `choices` has an allowed value (for a list,
    allowed elements). A choice set may be a callable returning it (evaluated here)."""
    for name, allowed in choices.items():
        value = config
        for part in name.split("."):
            value = value[part]
        allowed = list(allowed() if callable(allowed) else allowed)
        for v in (value if isinstance(value, list) else [value]):
            if v not in allowed:
                raise ConfigError(f"config key {name!r}: unknown value {v!r}"
                                  f"{_did_you_mean(v, allowed)}; valid: "
                                  f"{', '.join(map(str, allowed))}")


def check_dtype(config: dict) -> None:
    dtype = config.get("dtype")
    if dtype not in DTYPES:
        raise ConfigError(f"config key 'dtype': {dtype!r} is not supported; use float32 or "
                          "float64 (jaxopt2's solvers and tolerances assume at least single "
                          "precision)")


def load_config(defaults: dict, path: str | None = None, sets=(), nullable=(),
                choices=None) -> dict:
    """`defaults` updated from the YAML file at `path` (if given), then from the ``--set``
    options in `sets` (``"key=value"`` strings), validated (ConfigError on any problem).
    `defaults` itself is never modified."""
    config = copy.deepcopy(defaults)
    if path:
        config = merge_config(config, read_yaml_file(path), defaults, nullable)
    for option in sets:
        config = merge_config(config, parse_set(option), defaults, nullable)
    if "dtype" in defaults:
        check_dtype(config)
    if choices:
        check_choices(config, choices)
    return config


def flatten(config: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) for every leaf of `config`."""
    items = []
    for key, value in config.items():
        if isinstance(value, dict):
            items += flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def shipped_configs(script: str, configs=None) -> list[str]:
    """The configs/*.yaml files of the example `script` (a path): `configs` if given, else
    ``configs/<name>.yaml`` and ``configs/<name>_*.yaml``; relative to the repository."""
    name = os.path.splitext(os.path.basename(script))[0]
    if configs is None:
        found = glob.glob(os.path.join(ROOT, "configs", f"{name}.yaml"))
        found += glob.glob(os.path.join(ROOT, "configs", f"{name}_*.yaml"))
        configs = [os.path.basename(p) for p in found]
    return [f"configs/{c}" for c in sorted(configs)]


def _help_epilog(defaults: dict, script: str, configs) -> str:
    keys = flatten(defaults)
    width = max(len(k) for k, _ in keys)
    lines = ["config keys (defaults; override with --config FILE or --set key=value):"]
    lines += [f"  {k.ljust(width)}  {json.dumps(v)}" for k, v in keys]
    shipped = shipped_configs(script, configs)
    if shipped:
        lines += ["", "shipped configs:"] + [f"  {c}" for c in shipped]
    return "\n".join(lines)


def parse_cli(doc: str, defaults: dict, argv=None, *, script: str | None = None,
              configs=None, nullable=(), choices=None) -> tuple[dict, argparse.Namespace]:
    """The configuration an example's command line asks for, and the parsed options.

    Options: ``--config FILE`` (YAML merged into `defaults`), ``--set key=value``
    (repeatable, dotted keys for nested ones, the value read as YAML), ``--output-dir DIR``
    (overrides ``output_dir``) and ``--device cpu|gpu|tpu``. `doc` is the script's
    docstring: its first line describes the script in ``--help``, which also lists every key
    with its default and the shipped configs of `script`. A configuration error prints one
    line on stderr and exits with code 2 (SystemExit), as argparse does for a bad option.
    """
    script = script or sys.argv[0]
    parser = argparse.ArgumentParser(
        prog=f"python examples/{os.path.basename(script)}", description=doc.splitlines()[0],
        epilog=_help_epilog(defaults, script, configs),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML config updating the defaults below")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        metavar="KEY=VALUE", help="override one key (after --config); "
                        "repeatable; a.b=value for a nested key; the value is read as YAML")
    parser.add_argument("--output-dir", default=None, help="overrides the config's output_dir")
    parser.add_argument("--device", choices=DEVICES, default=None,
                        help="run on this platform (default: JAX's default device)")
    cli = parser.parse_args(argv)
    try:
        config = load_config(defaults, cli.config, cli.sets, nullable, choices)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if cli.output_dir:
        config["output_dir"] = cli.output_dir
    return config, cli


def select_device(name: str | None):
    """Make `name` (cpu, gpu or tpu; None: JAX's default) the platform jax runs on, and
    return the device. Before jax has started its backends this sets JAX_PLATFORMS (so no
    other accelerator is touched); afterwards it makes the platform's first device the
    default. ConfigError if the platform is not available."""
    if name:
        if "jax" not in sys.modules:
            os.environ["JAX_PLATFORMS"] = name
    import jax

    if not name:
        return jax.devices()[0]
    try:
        device = jax.devices(name)[0]
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--device {name}: no {name} device is available ({first}); "
                          "see docs/guides/examples.md for running on a GPU") from None
    if jax.devices()[0].platform != device.platform:
        jax.config.update("jax_default_device", device)
    return device


def setup(doc: str, defaults: dict, argv=None, *, script: str, configs=None, nullable=(),
          choices=None) -> dict:
    """Everything an example's ``main`` does before its own work: `parse_cli`, the device
    (``--device``), float64 if the config asks for it, the device, dtype and resolved config
    printed, and the config saved as ``config.yaml`` in the output directory (created).
    Exits with code 2 and one line on stderr on any configuration error."""
    config, cli = parse_cli(doc, defaults, argv, script=script, configs=configs,
                            nullable=nullable, choices=None)
    try:
        device = select_device(cli.device)
        if choices:  # may import jaxopt2 (and so jax): after the device is chosen
            check_choices(config, choices)
    except ConfigError as e:
        print(f"python examples/{os.path.basename(script)}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    enable_x64(config)
    print(f"device: {device} ({device.platform}), dtype: {config.get('dtype')}")
    print("config:\n" + format_config(config, indent="  "))
    out = prepare_output_dir(config)
    save_config(config, out, script)
    return config


def format_config(config: dict, indent: str = "") -> str:
    import yaml

    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=96)
    return "\n".join(indent + line for line in text.rstrip().splitlines())


def save_config(config: dict, out: str, script: str) -> str:
    """Write `config` to ``out/config.yaml``, loadable again with ``--config``."""
    path = os.path.join(out, "config.yaml")
    name = os.path.basename(script)
    with open(path, "w") as f:
        f.write(f"# resolved config of examples/{name}; rerun with\n"
                f"#   python examples/{name} --config {path}\n")
        f.write(format_config(config) + "\n")
    return path


def show_progress(requested: bool = True) -> bool:
    """Whether to draw progress bars: asked for, stdout a terminal, and not under CI."""
    return bool(requested) and sys.stdout.isatty() and not os.environ.get("CI")


def all_finite(*values) -> bool:
    """True if every number in `values` (scalars, arrays, lists, pytrees) is finite."""
    import jax
    import numpy as np

    return all(bool(np.all(np.isfinite(np.asarray(leaf, dtype=float))))
               for leaf in jax.tree_util.tree_leaves(values))


def exit_code(failures) -> int:
    """0 if `failures` (messages) is empty; else print each on stderr and return 1."""
    for message in failures:
        print(f"FAILED: {message}", file=sys.stderr)
    return 1 if failures else 0


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


def solver_names(base: str) -> list[str]:
    """The names of jaxopt2's concrete solver classes derived from ``jaxopt2.<base>``
    (``"AbstractMinimizer"``, ``"AbstractLeastSquaresSolver"``, ...)."""
    import jaxopt2

    cls = getattr(jaxopt2, base)
    return sorted(name for name, v in vars(jaxopt2).items()
                  if isinstance(v, type) and issubclass(v, cls) and not name.startswith("Abstract"))
