"""Every solver validates its fields at construction with one wording (`jaxopt2._validate`):
tolerances reject negatives, NaN and non-numbers; budgets must be positive Python ints; the
message names the field and the valid range. Renamed keywords raise a TypeError that names
the new one."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt2
from jaxopt2 import _validate as V

SOLVERS = [jaxopt2.GradientDescent, jaxopt2.LBFGS, jaxopt2.BFGS, jaxopt2.Newton,
           jaxopt2.NewtonCG, jaxopt2.DampedNewton, jaxopt2.RegularizedNewton,
           jaxopt2.SketchedNewton, jaxopt2.SubspaceNewton, jaxopt2.GaussNewton,
           jaxopt2.LevenbergMarquardt, jaxopt2.NewtonRaphson, jaxopt2.NewtonKrylov,
           jaxopt2.Broyden, jaxopt2.Bisection, jaxopt2.FixedPointIteration, jaxopt2.Anderson]

TOLERANCES = ("rtol", "atol", "ftol", "xtol", "gtol", "cg_rtol")
BUDGETS = ("max_backtracks", "cg_max_steps", "gmres_max_steps", "gmres_restart", "history",
           "max_damping_tries", "max_retries", "bandwidth")


def _fields(cls):
    return {f.name for f in dataclasses.fields(cls)}


TOL_CASES = [(cls, name) for cls in SOLVERS for name in TOLERANCES if name in _fields(cls)]
BUDGET_CASES = [(cls, name) for cls in SOLVERS for name in BUDGETS if name in _fields(cls)]
C1_CASES = [cls for cls in SOLVERS if "c1" in _fields(cls)]


def test_every_solver_has_tolerances_checked():
    # a solver with no tolerance at all would escape the table below
    assert {cls for cls, _ in TOL_CASES} == set(SOLVERS)
    assert len(TOL_CASES) >= 30 and len(BUDGET_CASES) >= 15


@pytest.mark.parametrize("cls", SOLVERS, ids=lambda c: c.__name__)
def test_defaults_construct(cls):
    cls()


@pytest.mark.parametrize("bad", [-1e-6, float("nan"), float("inf"), "1e-6", True, [1e-6]],
                         ids=["negative", "nan", "inf", "string", "bool", "list"])
@pytest.mark.parametrize("cls,name", TOL_CASES, ids=lambda x: getattr(x, "__name__", x))
def test_tolerance_rejects(cls, name, bad):
    with pytest.raises(ValueError, match=rf"`{name}` must be a finite number in \[0"):
        cls(**{name: bad})


@pytest.mark.parametrize("cls,name", TOL_CASES, ids=lambda x: getattr(x, "__name__", x))
def test_tolerance_accepts(cls, name):
    cls(**{name: 0.0})
    cls(**{name: 1e-3})
    cls(**{name: np.float32(1e-3)})


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", None, True],
                         ids=["zero", "negative", "float", "string", "none", "bool"])
@pytest.mark.parametrize("cls,name", BUDGET_CASES, ids=lambda x: getattr(x, "__name__", x))
def test_budget_rejects(cls, name, bad):
    default = {f.name: f.default for f in dataclasses.fields(cls)}[name]
    if bad is None and default is None:
        cls(**{name: None})  # None selects the default budget
        return
    with pytest.raises(ValueError, match=rf"`{name}` must be a Python int ≥ 1"):
        cls(**{name: bad})


@pytest.mark.parametrize("cls,name", BUDGET_CASES, ids=lambda x: getattr(x, "__name__", x))
def test_budget_accepts(cls, name):
    cls(**{name: 3})


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, float("nan")])
@pytest.mark.parametrize("cls", C1_CASES, ids=lambda c: c.__name__)
def test_c1_in_open_unit_interval(cls, bad):
    with pytest.raises(ValueError, match=r"`c1` must be a finite number in \(0, 1\)"):
        cls(c1=bad)


@pytest.mark.parametrize("cls", [jaxopt2.LBFGS, jaxopt2.BFGS], ids=lambda c: c.__name__)
def test_wolfe_c2_in_unit_interval(cls):
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"`c2` must be a finite number in \(0, 1\)"):
            cls(c2=bad)
    cls(c1=0.1, c2=0.2)
    cls(c2=1e-6)  # below c1: emulates an exact line search (used by the tests)


@pytest.mark.parametrize("cls,field", [
    (jaxopt2.GradientDescent, "step_size"), (jaxopt2.NewtonCG, "initial_radius"),
    (jaxopt2.DampedNewton, "lipschitz0"), (jaxopt2.RegularizedNewton, "gamma0"),
    (jaxopt2.LevenbergMarquardt, "factor"), (jaxopt2.Bisection, "initial_step"),
    (jaxopt2.FixedPointIteration, "damping"), (jaxopt2.Anderson, "damping"),
    (jaxopt2.NewtonCG, "forcing")], ids=str)
def test_positive_and_unit_fields(cls, field):
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=f"`{field}`"):
            cls(**{field: bad})


@pytest.mark.parametrize("cls,old,new", [
    (jaxopt2.NewtonCG, "max_cg_steps", "cg_max_steps"),
    (jaxopt2.DampedNewton, "cg_max_iters", "cg_max_steps"),
    (jaxopt2.RegularizedNewton, "cg_max_iters", "cg_max_steps"),
    (jaxopt2.GaussNewton, "cg_max_iters", "cg_max_steps"),
    (jaxopt2.LevenbergMarquardt, "cg_max_iters", "cg_max_steps"),
    (jaxopt2.NewtonKrylov, "gmres_max_iters", "gmres_max_steps"),
    (jaxopt2.LBFGS, "max_linesearch_steps", "max_backtracks"),
    (jaxopt2.BFGS, "max_linesearch_steps", "max_backtracks"),
], ids=lambda x: getattr(x, "__name__", x))
def test_renamed_keyword_names_the_new_one(cls, old, new):
    with pytest.raises(TypeError, match=rf"`{old}` is now `{new}`"):
        cls(**{old: 5})
    assert getattr(cls(**{new: 5}), new) == 5


def test_traced_hyperparameters_are_let_through():
    """A solver built inside jit from traced values cannot be checked; it must not fail."""
    @jax.jit
    def build(rtol):
        return jaxopt2.LBFGS(rtol=rtol).rtol * 2

    assert float(build(jnp.asarray(1e-3))) == pytest.approx(2e-3)


def test_validator_messages():
    with pytest.raises(ValueError, match=r"`x` must be a finite number in \[0, inf\) "
                                         r"\(or None: the default\); got -1"):
        V.check_tolerance("x", -1, allow_none=True)
    with pytest.raises(ValueError, match=r"`x` must be a finite number in \[0, 1\); got 1.0"):
        V.check_tolerance("x", 1.0, below_one=True)
    with pytest.raises(ValueError, match=r"`n` must be a Python int ≥ 1; got 0"):
        V.check_budget("n", 0)
    with pytest.raises(ValueError, match=r"`d` must be a finite number in \(0, 1\]"):
        V.check_unit_interval("d", 0.0, high_open=False)
    with pytest.raises(ValueError, match=r"`k` must be one of \('a', 'b'\); got 'c'"):
        V.check_choice("k", "c", ("a", "b"))
    V.check_tolerance("x", jnp.asarray(0.5))  # a concrete 0-d array is a number
    V.check_budget("n", np.int64(3))
