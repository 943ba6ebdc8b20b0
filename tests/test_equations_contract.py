"""The contract every least-squares, root-finding and fixed-point solver keeps, through its
front door (solvers register in tests/solvers.py): jit, vmap equals a loop with one poisoned
problem isolated, float32 kept, no recompilation, max_steps status, implicit gradients
(reverse and forward) against finite differences, pytree unknowns."""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxopt2
from jaxopt2 import RESULTS
from jaxopt2._front import raise_if_failed

from .solvers import (
    FIXED_POINT,
    LEAST_SQUARES,
    ROOT_FINDERS,
    SCALAR_ROOT_FINDERS,
    contract_params,
)

pytestmark = pytest.mark.float64  # written for float64 tolerances

tmap = jax.tree_util.tree_map


# --- The problems: each takes args = (data, s) where s is a scalar the gradient test varies.

def fit_residuals(p, args):
    """Exponential decay plus offset, fitted to noisy data: a nonzero-residual problem."""
    (t, y), s = args
    return p["A"] * jnp.exp(-p["k"] * t) + p["c"][0] - s * y


def fit_data(seed, dtype):
    t = jnp.linspace(0.0, 3.0, 25, dtype=dtype)
    noise = 0.05 * jax.random.normal(jax.random.PRNGKey(seed), t.shape, dtype)
    return (t, (2.0 + 0.1 * seed) * jnp.exp(-1.3 * t) + 0.5 + noise)


def fit_reference(args):
    (t, y), s = tmap(np.asarray, args)
    res = scipy.optimize.least_squares(
        lambda x: x[0] * np.exp(-x[1] * t) + x[2] - s * y, np.array([1.0, 1.0, 0.0]),
        method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return {"A": res.x[0], "k": res.x[1], "c": res.x[2:]}


def system(y, args):
    """A monotone (hence uniquely solvable) nonlinear system on a dict of arrays."""
    (B, b), s = args
    z = jnp.concatenate([y["u"], y["v"][None]])
    F = z + 0.5 * jnp.tanh(B @ z) + 0.1 * z**3 - s * b
    return {"u": F[:3], "v": F[3]}


def system_data(seed, dtype):
    kB, kb = jax.random.split(jax.random.PRNGKey(seed))
    A = jax.random.normal(kB, (4, 4), dtype)
    return ((A + A.T) / 4, jax.random.normal(kb, (4,), dtype))


@jax.jit
def system_reference(args):
    flat = lambda z: jax.flatten_util.ravel_pytree(system({"u": z[:3], "v": z[3]}, args))[0]
    newton = lambda z, _: (z - jnp.linalg.solve(jax.jacfwd(flat)(z), flat(z)), None)
    z = jax.lax.scan(newton, jnp.zeros(4, args[1].dtype), None, length=40)[0]
    return {"u": z[:3], "v": z[3]}


def contraction(y, args):
    """g(y) = 0.5 tanh(W y) + s b with ‖W‖₂ ≤ 1: a contraction with factor ≤ 0.5."""
    (W, b), s = args
    z = jnp.concatenate([y["u"], y["v"][None]])
    g = 0.5 * jnp.tanh(W @ z) + s * b
    return {"u": g[:3], "v": g[3]}


def contraction_data(seed, dtype):
    kW, kb = jax.random.split(jax.random.PRNGKey(seed))
    W = jax.random.normal(kW, (4, 4), dtype)
    return (W / jnp.linalg.norm(W, 2), jax.random.normal(kb, (4,), dtype))


@jax.jit
def contraction_reference(args):
    y = {"u": jnp.zeros(3, args[1].dtype), "v": jnp.zeros((), args[1].dtype)}
    return jax.lax.fori_loop(0, 200, lambda _, y: contraction(y, args), y)


def cubic(y, args):
    a, s = args
    return y**3 + y - s * a


def cubic_data(seed, dtype):
    return jnp.asarray(1.0 + seed, dtype)


def cubic_reference(args):
    a, s = tmap(float, args)
    return jnp.asarray(np.real([r for r in np.roots([1, 0, 1, -s * a]) if abs(r.imag) < 1e-12][0]))


@dataclasses.dataclass(frozen=True)
class Door:
    call: Callable  # jaxopt2.least_squares / root_find / fixed_point
    fn: Callable
    data: Callable
    reference: Callable
    y0: Callable  # dtype -> initial point

    def poison(self, data):
        leaves, treedef = jax.tree_util.tree_flatten(data)
        leaves[-1] = leaves[-1].at[(0,) * leaves[-1].ndim].set(jnp.nan)
        return jax.tree_util.tree_unflatten(treedef, leaves)


def _dict_point(dtype):
    return {"u": jnp.zeros(3, dtype), "v": jnp.zeros((), dtype)}


DOORS = {
    "least_squares": Door(
        jaxopt2.least_squares, fit_residuals, fit_data, fit_reference,
        lambda dt: {"A": jnp.ones((), dt), "k": jnp.ones((), dt), "c": jnp.zeros(1, dt)}),
    "root_find": Door(jaxopt2.root_find, system, system_data, system_reference, _dict_point),
    "scalar_root": Door(jaxopt2.root_find, cubic, cubic_data, cubic_reference,
                        lambda dt: jnp.zeros((), dt)),
    "fixed_point": Door(jaxopt2.fixed_point, contraction, contraction_data,
                        contraction_reference, _dict_point),
}

CASES = (
    [("least_squares", name, *LEAST_SQUARES[name]) for name in sorted(LEAST_SQUARES)]
    + [("root_find", name, *ROOT_FINDERS[name]) for name in sorted(ROOT_FINDERS)]
    + [("scalar_root", name, *SCALAR_ROOT_FINDERS[name]) for name in sorted(SCALAR_ROOT_FINDERS)]
    + [("fixed_point", name, *FIXED_POINT[name]) for name in sorted(FIXED_POINT)]
)
# Root finders through `fixed_point` (on g(y) − y): the loop, dtype and tracing checks are those
# of `root_find`, so only what the wrapping changes is re-checked (solution, value, gradient).
WRAPPED = [("fixed_point", name, *ROOT_FINDERS[name]) for name in sorted(ROOT_FINDERS)]
IDS = [f"{door}-{name}" for door, name, *_ in CASES]
WRAPPED_IDS = [f"{door}-{name}" for door, name, *_ in WRAPPED]
# Variants of one solver (another inner solve, another start-up) share its loop and tracing:
# they skip the recompilation and max_steps checks, to keep the suite's compile time down.
VARIANTS = ("-cg", "-expanding", "-nystrom")
BASE = [case for case in CASES if not case[1].endswith(VARIANTS)]
BASE_IDS = [f"{door}-{name}" for door, name, *_ in BASE]


def solve(case, data, s=1.0, dtype=jnp.float64, throw=True, **kw):
    door_name, _, factory, budget = case
    door = DOORS[door_name]
    args = (data, jnp.asarray(s, dtype))
    return door.call(door.fn, door.y0(dtype), args, solver=factory(),
                     max_steps=kw.pop("max_steps", budget), throw=throw, **kw)


def assert_tree_close(a, b, **kw):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), **kw)


@pytest.mark.parametrize("case", contract_params(CASES + WRAPPED, IDS + WRAPPED_IDS))
def test_jit_vmap_equals_loop_and_isolates_failures(case):
    door = DOORS[case[0]]
    batch = [door.data(seed, jnp.float64) for seed in range(3)]
    batch[1] = door.poison(batch[1])
    stacked = tmap(lambda *xs: jnp.stack(xs), *batch)
    # throw=True must not raise under vmap: statuses are per problem.
    vsol = jax.jit(jax.vmap(lambda d: solve(case, d, throw=True)))(stacked)
    codes = np.asarray(vsol.status._value)
    assert codes[1] == RESULTS.nonfinite._value
    assert codes[0] == codes[2] == RESULTS.successful._value
    single = jax.jit(lambda d: solve(case, d, throw=False))
    for i, data in enumerate(batch):
        sol = single(data)
        assert sol.status._value == codes[i]
        if i == 1:
            continue
        assert_tree_close(tmap(lambda x, i=i: x[i], vsol.params), sol.params, rtol=1e-6, atol=1e-9)
        ref = door.reference((data, jnp.asarray(1.0)))
        assert_tree_close(sol.params, ref, rtol=1e-5, atol=1e-7)
        # value is fn's output at the solution
        assert_tree_close(sol.value, door.fn(sol.params, (data, jnp.asarray(1.0))),
                          rtol=1e-10, atol=1e-12)
        assert int(sol.stats["num_steps"]) >= 1 and int(sol.stats["num_fun"]) >= 1


@pytest.mark.parametrize("case", contract_params(CASES, IDS))
def test_float32_kept(case):
    door = DOORS[case[0]]
    data = door.data(0, jnp.float32)
    sol = jax.jit(lambda d: solve(case, d, dtype=jnp.float32))(data)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(sol.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(sol.value))
    assert sol.status == RESULTS.successful
    ref = door.reference((tmap(lambda x: x.astype(jnp.float64), data), jnp.asarray(1.0)))
    assert_tree_close(sol.params, ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("case", contract_params(BASE, BASE_IDS))
def test_no_recompilation_and_max_steps(case):
    door = DOORS[case[0]]
    traces = []

    def counted(y, args):
        traces.append(1)
        return door.fn(y, args)

    _, _, factory, budget = case
    run = jax.jit(lambda d: door.call(counted, door.y0(jnp.float64), (d, jnp.asarray(1.0)),
                                      solver=factory(), max_steps=budget).params)
    run(door.data(0, jnp.float64))
    n = len(traces)
    run(door.data(1, jnp.float64))
    assert len(traces) == n

    sol = solve(case, door.data(0, jnp.float64), throw=False, max_steps=1)
    assert sol.status == RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 1
    # what throw=True does with that status (the wiring is tested once, in test_checks.py)
    with pytest.raises(RuntimeError, match="max_steps"):
        raise_if_failed(sol.params, sol.status)


@pytest.mark.parametrize("case", contract_params(CASES + WRAPPED, IDS + WRAPPED_IDS))
def test_implicit_gradient_matches_finite_differences(case):
    door = DOORS[case[0]]
    data = door.data(2, jnp.float64)

    def outer(s):
        sol = solve(case, data, s=s)
        return sum(jnp.sum(jnp.sin(x)) for x in jax.tree_util.tree_leaves(sol.params))

    h = 1e-5
    # one compiled program: the value (for finite differences), reverse and forward mode
    run = jax.jit(lambda x: (outer(x), jax.grad(outer)(x), jax.jacfwd(outer)(x)))
    fd = (run(1.0 + h)[0] - run(1.0 - h)[0]) / (2 * h)
    _, g_rev, g_fwd = run(1.0)
    np.testing.assert_allclose(g_rev, fd, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(g_fwd, g_rev, rtol=1e-6, atol=1e-10)
