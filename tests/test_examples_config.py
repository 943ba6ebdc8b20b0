"""The examples' shared config layer (examples/_common.py): validation, --set, --help, saved
config, exit code 2 on a bad config. Nothing here solves anything: a bad config must fail
before any work, and the good ones are stopped right after validation."""

import importlib.util
import math
import pathlib
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ("demo", "equations", "hyperparameter_optimization", "dataset_distillation", "deq",
            "train_mlp", "sparse_regression", "optimal_transport", "constrained")
sys.path.insert(0, str(ROOT / "examples"))
import _common  # noqa: E402


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rejected(capsys, name, *argv) -> str:
    """main(argv) exits with code 2 and one line (no traceback) on stderr; that line."""
    with pytest.raises(SystemExit) as e:
        _load(name).main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"python examples/{name}.py: error: "), err
    return err


def _yaml(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------- unknown keys


def test_misspelt_key_in_file_is_rejected_with_a_suggestion(tmp_path, capsys):
    path = _yaml(tmp_path, "outer_steps: 3\nlernig_rate: 0.1\n")
    err = _rejected(capsys, "hyperparameter_optimization", "--config", path)
    assert "'lernig_rate'" in err and "did you mean 'learning_rate'?" in err


def test_misspelt_key_on_the_command_line(capsys):
    err = _rejected(capsys, "demo", "--set", "max_step=5")
    assert "'max_step'" in err and "did you mean 'max_steps'?" in err


@pytest.mark.parametrize("name, argv, bad, suggestion", [
    ("deq", ["--set", "anderson.histroy=3"], "'anderson.histroy'", "'history'"),
    ("train_mlp", ["--set", "digits.hiden=[8]"], "'digits.hiden'", "'hidden'"),
    ("hyperparameter_optimization", ["--set", "split.valdation=10"], "'split.valdation'",
     "'validation'"),
])
def test_misspelt_nested_key(capsys, name, argv, bad, suggestion):
    err = _rejected(capsys, name, *argv)
    assert bad in err and f"did you mean {suggestion}?" in err
    assert "valid keys under" in err


def test_nested_typo_in_a_file(tmp_path, capsys):
    path = _yaml(tmp_path, "anderson: {history: 5, rtoll: 1.0e-4}\n")
    err = _rejected(capsys, "deq", "--config", path)
    assert "'anderson.rtoll'" in err and "did you mean 'rtol'?" in err


# ---------------------------------------------------------------------------------- types


@pytest.mark.parametrize("name, text, message", [
    ("demo", "max_steps: fast", "'max_steps': expected an integer, got 'fast'"),
    ("demo", "max_steps: 5.5", "'max_steps': expected an integer, got 5.5"),
    ("demo", "l2: null", "'l2': expected a number, got null"),
    ("demo", "l2: small", "'l2': expected a number, got 'small'"),
    ("demo", "solvers: LBFGS", "'solvers': expected a list"),
    ("demo", "synthetic: 3", "'synthetic': expected a mapping"),
    ("train_mlp", "progress: 1", "'progress': expected a boolean"),
    ("train_mlp", "digits: {hidden: [16, wide]}", "'digits.hidden[1]': expected an integer"),
    ("deq", "epochs: true", "'epochs': expected an integer, got True"),
    ("dataset_distillation", "solver: 3", "'solver': expected a string"),
])
def test_wrong_type_is_rejected(tmp_path, capsys, name, text, message):
    assert message in _rejected(capsys, name, "--config", _yaml(tmp_path, text))


def test_int_for_float_and_exponent_without_dot_are_numbers(tmp_path):
    # YAML 1.1 reads 1e-6 (no dot) as a string: a float key converts it
    demo = _load("demo")
    config = _common.load_config(demo.DEFAULTS, _yaml(tmp_path, "l2: 1\nrtol: 1e-6\n"))
    assert config["l2"] == 1.0 and isinstance(config["l2"], float)
    assert config["rtol"] == 1e-6 and isinstance(config["rtol"], float)


def test_null_only_where_allowed():
    mlp = _load("train_mlp")
    rules = {"nullable": ("digits.target_loss",)}
    config = _common.load_config(mlp.DEFAULTS, sets=["digits.target_loss=null"], **rules)
    assert config["digits"]["target_loss"] is None
    with pytest.raises(_common.ConfigError, match="'regression.target_loss'.*got null"):
        _common.load_config(mlp.DEFAULTS, sets=["regression.target_loss=null"], **rules)


def test_dtype_float16_is_rejected_clearly(capsys):
    err = _rejected(capsys, "deq", "--set", "dtype=float16")
    assert "'float16' is not supported" in err and "float32 or float64" in err


# --------------------------------------------------------------------------------- files


def test_missing_file(capsys):
    err = _rejected(capsys, "equations", "--config", "configs/no_such_file.yaml")
    assert "'configs/no_such_file.yaml' not found" in err


def test_yaml_list_is_not_a_config(tmp_path, capsys):
    err = _rejected(capsys, "train_mlp", "--config", _yaml(tmp_path, "- dtype: float32\n"))
    assert "must be a mapping" in err and "list" in err


def test_malformed_yaml(tmp_path, capsys):
    err = _rejected(capsys, "deq", "--config", _yaml(tmp_path, "anderson: {history: 5\n"))
    assert "not valid YAML" in err and "line" in err


def test_empty_file_gives_the_defaults(tmp_path):
    deq = _load("deq")
    assert _common.load_config(deq.DEFAULTS, _yaml(tmp_path, "# nothing\n")) == deq.DEFAULTS


# -------------------------------------------------------------------------------- --set


def test_set_overrides_single_keys_after_the_file():
    demo = _load("demo")
    config, _ = _common.parse_cli(demo.__doc__, demo.DEFAULTS, [
        "--config", str(ROOT / "configs" / "smoke.yaml"), "--set", "max_steps=7",
        "--set", "synthetic.n=10", "--set", "solvers=[Newton, BFGS]", "--set", "l2=1e-4"])
    assert config["max_steps"] == 7  # smoke.yaml says 100
    assert config["synthetic"] == {"n": 10, "d": 50}  # nested: d keeps its default
    assert config["solvers"] == ["Newton", "BFGS"]
    assert config["l2"] == 1e-4
    assert config["rtol"] == 1e-6  # from smoke.yaml
    assert demo.DEFAULTS["synthetic"] == {"n": 2000, "d": 50}  # the defaults are untouched


def test_set_needs_key_equals_value(capsys):
    assert "expected key=value" in _rejected(capsys, "demo", "--set", "max_steps")


def test_output_dir_option_wins():
    deq = _load("deq")
    config, _ = _common.parse_cli(deq.__doc__, deq.DEFAULTS,
                                  ["--set", "output_dir=a", "--output-dir", "b"])
    assert config["output_dir"] == "b"


# ----------------------------------------------------------------------------- solvers


def test_unknown_solver_in_the_demo(capsys):
    err = _rejected(capsys, "demo", "--set", "solvers=[LBFGS, Newtn]")
    assert "'Newtn'" in err and "did you mean 'Newton'?" in err
    assert "valid: " in err and "NewtonCG" in err and "LBFGS" in err


def test_unknown_solver_in_equations(capsys):
    err = _rejected(capsys, "equations", "--set", "deq.solvers=[Andersen]")
    assert "'deq.solvers'" in err and "did you mean 'Anderson'?" in err


# ------------------------------------------------------------------------------- --help


@pytest.mark.parametrize("name", EXAMPLES)
def test_help_lists_every_key_and_the_shipped_configs(capsys, name):
    module = _load(name)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key, _ in _common.flatten(module.DEFAULTS):
        assert f"\n  {key} " in out, key
    for option in ("--config", "--set", "--device", "--output-dir"):
        assert option in out
    shipped = out.split("shipped configs:", 1)[1].split()
    assert len(shipped) >= 2, out
    for path in shipped:
        assert (ROOT / path).is_file(), path
    assert any("smoke" in path for path in shipped)


class _Validated(Exception):
    """Raised in place of the first step after validation."""


def _stop_after_validation(*args, **kwargs):
    raise _Validated


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_shipped_config_is_valid(monkeypatch, name):
    # the full check (keys, types, dtype, solver names) runs before enable_x64
    monkeypatch.setattr(_common, "enable_x64", _stop_after_validation)
    module = _load(name)
    configs = _common.shipped_configs(module.__file__, ["default.yaml", "smoke.yaml"]
                                      if name == "demo" else None)
    assert len(configs) >= 2
    for path in configs:
        with pytest.raises(_Validated):
            module.main(["--config", str(ROOT / path)])


# ---------------------------------------------------------------------- saved config, device


def test_resolved_config_is_printed_and_saved(tmp_path, capsys):
    demo = _load("demo")
    argv = ["--config", str(ROOT / "configs" / "smoke.yaml"), "--set", "max_steps=7",
            "--set", "synthetic.d=3", "--output-dir", str(tmp_path / "out")]
    config = _common.setup(demo.__doc__, demo.DEFAULTS, argv, script=demo.__file__)
    out = capsys.readouterr().out
    assert out.startswith("device: ") and "dtype: float64" in out.splitlines()[0]
    assert "max_steps: 7" in out
    saved = tmp_path / "out" / "config.yaml"
    assert yaml.safe_load(saved.read_text()) == config
    # the saved file reproduces the run
    again, _ = _common.parse_cli(demo.__doc__, demo.DEFAULTS, ["--config", str(saved)])
    assert again == config and again["synthetic"] == {"n": 2000, "d": 3}


def test_unavailable_device_is_a_clear_error(tmp_path, capsys):
    import jax

    try:
        jax.devices("tpu")
        pytest.skip("this machine has a TPU")
    except RuntimeError:
        pass
    err = _rejected(capsys, "deq", "--device", "tpu", "--output-dir", str(tmp_path / "o"))
    assert "--device tpu: no tpu device is available" in err
    assert not (tmp_path / "o").exists()


def test_device_must_be_one_of_cpu_gpu_tpu(capsys):
    with pytest.raises(SystemExit) as e:
        _load("demo").main(["--device", "npu"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------- progress, exit code


class _Terminal:
    def isatty(self):
        return True

    def write(self, text):
        return len(text)


def test_progress_bars_only_on_a_terminal_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert not _common.show_progress()  # pytest captures stdout: not a terminal
    monkeypatch.setattr(sys, "stdout", _Terminal())
    assert _common.show_progress()
    assert not _common.show_progress(False)
    monkeypatch.setenv("CI", "true")
    assert not _common.show_progress()


def test_exit_code_and_all_finite(capsys):
    assert _common.exit_code([]) == 0
    assert _common.exit_code(["Bratu: du/dλ is not finite"]) == 1
    assert capsys.readouterr().err == "FAILED: Bratu: du/dλ is not finite\n"
    assert _common.all_finite(1.0, [2.0, 3], {"a": 0.0})
    assert not _common.all_finite(1.0, {"a": [0.0, math.nan]})
    assert not _common.all_finite(math.inf)
