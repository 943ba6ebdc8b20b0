"""Guards on the size of the compiled programs (issue 20: compile time is the users' most
common complaint). XLA's compile time grows with the optimized program, so the size of that
program (its HLO instruction count: exact, machine-independent, unaffected by load) is what is
bounded here, never a time. The bounds sit about 1.5× above the sizes measured when they were
set (jax 0.10.2, noted per bound), so a change that doubles a program fails, while a JAX
upgrade that moves the count by a few percent does not; benchmarks/compile_time.py reports
the sizes and the compile seconds per solver."""

import jax
import jax.numpy as jnp
import pytest

import jaxopt2

pytestmark = pytest.mark.float64


def _rosenbrock(x, args):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _decay(p, data):
    t, y = data
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


X0 = jnp.array([-1.2, 1.0, -1.2, 1.0])


def _hlo_instructions(fn, *args):
    """(instructions of the optimized HLO of jit(fn), the compiled executable)."""
    compiled = jax.jit(fn).trace(*args).lower().compile()
    count = sum(1 for line in compiled.as_text().splitlines() if " = " in line)
    return count, compiled


# (measured when set, bound): NewtonCG on 4-D Rosenbrock measured 1,577 instructions here
# (1,436 in compile_time.py, where x0 is a constant; 1,795 there before the cuts of issue 20),
# 1,543 before issue 20's third pass and 1,474 after it; LBFGS 2,444 -> 2,182 and Newton
# 1,592 -> 1,497 over that pass (their bounds added with it); LevenbergMarquardt on a
# 3-parameter fit 1,144.
@pytest.mark.parametrize("name, bound", [("NewtonCG", 2_400), ("LBFGS", 3_300),
                                         ("Newton", 2_300), ("LevenbergMarquardt", 1_700)])
def test_program_size_is_bounded(name, bound):
    if name != "LevenbergMarquardt":
        def solve(x0):
            sol = jaxopt2.minimize(_rosenbrock, x0, solver=getattr(jaxopt2, name)(),
                                   throw=False)
            return sol.params, sol.status.code
        arg = X0
    else:
        t = jnp.linspace(0.0, 3.0, 40)
        data = (t, 2.0 * jnp.exp(-1.3 * t) + 0.5)

        def solve(data):
            sol = jaxopt2.least_squares(_decay, jnp.array([1.0, 1.0, 0.0]), data,
                                        solver=jaxopt2.LevenbergMarquardt(), throw=False)
            return sol.params, sol.status.code
        arg = data
    count, compiled = _hlo_instructions(solve, arg)
    # the program measured is one that works
    params, code = compiled(arg)
    assert jaxopt2.status_name(code) == "successful"
    assert count > 100  # the count itself works (a whole solve is hundreds of instructions)
    assert count <= bound, f"{name}: {count} HLO instructions, bound {bound}"


@pytest.mark.parametrize("solver", [jaxopt2.NewtonCG(), jaxopt2.LBFGS(), jaxopt2.Newton()],
                         ids=lambda s: type(s).__name__)
def test_objective_traced_a_fixed_number_of_times(solver):
    """The objective is closure-converted once at the front door: the line search, the
    solver's products and the final curvature check reuse that trace, so the number of
    Python calls of `fun` while tracing a whole solve does not grow with the solver."""
    calls = []

    def counted(x, args):
        calls.append(1)
        return _rosenbrock(x, args)

    jax.jit(lambda x0: jaxopt2.minimize(counted, x0, solver=solver, throw=False).params
            ).trace(X0)
    assert 1 <= len(calls) <= 2
