"""jaxopt-, optimistix- and SciPy-style keywords fail with a TypeError that names ours, for
every public solver class and every front door."""

import inspect

import equinox as eqx
import jax.numpy as jnp
import pytest

import jaxopt2

SOLVERS = sorted(
    (obj for obj in vars(jaxopt2).values()
     if isinstance(obj, type)
     and issubclass(obj, (jaxopt2.AbstractMinimizer, jaxopt2.AbstractLeastSquaresSolver,
                          jaxopt2.AbstractRootFinder, jaxopt2.AbstractFixedPointSolver))
     and not inspect.isabstract(obj) and not obj.__name__.startswith("Abstract")),
    key=lambda c: c.__name__)


def _door(cls):
    if issubclass(cls, jaxopt2.AbstractMinimizer):
        return "minimize"
    if issubclass(cls, jaxopt2.AbstractLeastSquaresSolver):
        return "least_squares"
    if issubclass(cls, jaxopt2.AbstractRootFinder):
        return "root_find"
    return "fixed_point"


def _keywords(cls):
    return list(inspect.signature(cls).parameters)


def test_every_public_solver_is_covered():
    names = {c.__name__ for c in SOLVERS}
    assert {"LBFGS", "BFGS", "GradientDescent", "LevenbergMarquardt", "GaussNewton",
            "NewtonKrylov", "NewtonRaphson", "Broyden", "Bisection", "Anderson",
            "FixedPointIteration"} <= names
    assert len(SOLVERS) >= 17


@pytest.mark.parametrize("cls", SOLVERS, ids=lambda c: c.__name__)
def test_solver_rejects_jaxopt_keywords_with_ours(cls):
    keywords = _keywords(cls)
    with pytest.raises(TypeError) as info:
        cls(tol=1e-6, maxiter=100)
    message = str(info.value)
    assert message.startswith(f"jaxopt2.{cls.__name__} got unexpected keyword arguments")
    assert "`tol`" in message and "`maxiter`" in message
    tolerances = [t for t in ("rtol", "atol", "ftol", "xtol", "gtol") if t in keywords]
    assert tolerances and all(f"`{t}`" in message for t in tolerances)
    assert "max_steps" in message and f"jaxopt2.{_door(cls)}(" in message
    # Every accepted keyword is listed, so the message is a complete reference.
    assert all(f"`{k}`" in message for k in keywords)

    with pytest.raises(TypeError) as info:
        cls(maxls=5)
    budget = [k for k in keywords if "backtrack" in k or "linesearch" in k]
    if budget:
        assert f"`{budget[0]}`" in str(info.value).splitlines()[1]
    else:
        assert "no line-search budget" in str(info.value)

    with pytest.raises(TypeError, match="argument of the front door"):
        cls(init_params=jnp.zeros(2))
    with pytest.raises(TypeError, match="argument of the front door"):
        cls(fun=lambda x: x)


@pytest.mark.parametrize("cls", SOLVERS, ids=lambda c: c.__name__)
def test_solver_suggests_close_names_and_still_builds(cls):
    keywords = _keywords(cls)
    typo = keywords[0] + "x"
    with pytest.raises(TypeError, match=f"Did you mean `{keywords[0]}`"):
        cls(**{typo: 1})
    # Accepted keywords are untouched by the check.
    default = cls()
    assert type(cls(**{keywords[0]: getattr(default, keywords[0])})) is cls


def test_optimistix_and_jaxopt_front_door_names_on_solvers():
    with pytest.raises(TypeError, match=r"jaxopt2\.minimize\(\.\.\., verbose=\.\.\.\)"):
        jaxopt2.LBFGS(verbose=True)
    with pytest.raises(TypeError, match="UnrolledAdjoint"):
        jaxopt2.GradientDescent(implicit_diff=False)
    with pytest.raises(TypeError, match="jax.jit"):
        jaxopt2.NewtonRaphson(jit=True)
    with pytest.raises(TypeError, match="Did you mean `step_size`"):
        jaxopt2.GradientDescent(stepsize=0.1)
    with pytest.raises(TypeError, match="Did you mean `history`"):
        jaxopt2.LBFGS(history_size=5)
    with pytest.raises(TypeError, match="atol=t, rtol=0.0"):
        jaxopt2.LBFGS(tol=1e-3)


def test_user_defined_solver_gets_the_same_check():
    class MyDescent(jaxopt2.AbstractMinimizer):
        rtol: float | None = None
        atol: float = 0.0
        rate: float = 0.1

        def init(self, fn, iterate, args):
            return None

        def step(self, fn, iterate, args, state):
            raise NotImplementedError

    assert MyDescent(rate=0.5).rate == 0.5
    with pytest.raises(TypeError, match="MyDescent's tolerances are `rtol`, `atol`"):
        MyDescent(tol=1e-3)


def _objective(x, a):
    return jnp.sum((x - a) ** 2)


FRONT_DOORS = [
    ("minimize", jaxopt2.minimize, _objective, jaxopt2.GradientDescent(), "params0"),
    ("least_squares", jaxopt2.least_squares, lambda y, a: y - a, jaxopt2.GaussNewton(),
     "params0"),
    ("root_find", jaxopt2.root_find, lambda y, a: y**3 - 2 * a, jaxopt2.NewtonRaphson(), "y0"),
    ("fixed_point", jaxopt2.fixed_point, lambda y, a: jnp.cos(y) * a / 4,
     jaxopt2.FixedPointIteration(), "y0"),
]


@pytest.mark.parametrize("door", FRONT_DOORS, ids=lambda d: d[0])
def test_front_door_rejects_foreign_keywords_with_ours(door):
    name, front, fn, solver, start = door
    x0, a = jnp.ones(2, jnp.float32), jnp.ones(2, jnp.float32)
    with pytest.raises(TypeError) as info:
        front(fn, x0, a, solver=solver, tol=1e-6, maxiter=10)
    message = str(info.value)
    assert message.startswith(f"jaxopt2.{name} got unexpected keyword arguments `tol`, "
                              "`maxiter`.")
    assert "Tolerances belong to the solver" in message
    assert "`maxiter` is spelled `max_steps`" in message
    assert "`verbose`" in message and "`max_steps`" in message
    with pytest.raises(TypeError, match=f"second positional argument, `{start}`"):
        front(fn, solver=solver, args=a, x0=x0)
    with pytest.raises(TypeError, match="Pass a solver object"):
        front(fn, x0, a, method="BFGS")
    with pytest.raises(TypeError, match="Did you mean `max_steps`"):
        front(fn, x0, a, solver=solver, max_step=3)
    # The wrapper keeps the signature, the docstring, and ordinary calls.
    assert "verbose" in inspect.signature(front).parameters
    assert front.__doc__ and front.__name__ == name
    sol = front(fn, x0, a, solver=solver, max_steps=64)
    assert bool(sol.success)


def test_front_door_check_happens_before_any_work():
    calls = []

    def fn(x, a):
        calls.append(1)
        return jnp.sum(x**2)

    with pytest.raises(TypeError, match="spelled `max_steps`"):
        jaxopt2.minimize(fn, jnp.zeros(2), solver=jaxopt2.LBFGS(), maxiter=3)
    assert calls == []
    # Solvers are plain modules otherwise: equal fields, equal solvers.
    assert eqx.tree_equal(jaxopt2.LBFGS(rtol=1e-3), jaxopt2.LBFGS(rtol=1e-3))
