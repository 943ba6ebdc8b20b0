"""The flat view of a constrained problem that every constrained solver works on.

The user writes

    min_x f(x, args)  s.t.  c_E(x, args) = 0,  c_I(x, args) ≤ 0,  l ≤ x ≤ u

with x any pytree and c_E, c_I returning pytrees. The front door ravels x (n entries), c_E
(m entries) and c_I (p entries) once, so the solvers see vectors: these problems are small or
medium (a dense KKT matrix of order n + m is formed by the dense variants), and the parameter
pytree is restored on the way out.

**KKT conditions.** With multipliers λ ∈ ℝᵐ, μ ∈ ℝᵖ and ν ∈ ℝⁿ (the bounds' multiplier, ν ≤ 0
at a lower bound, ν ≥ 0 at an upper one),

    ∇f + J_Eᵀλ + J_Iᵀμ + ν = 0,   c_E = 0,   c_I ≤ 0 ≤ μ,   μᵢ c_I,ᵢ = 0,   l ≤ x ≤ u.

`kkt_residuals` measures the three parts in the max-norm: stationarity as the projected
Lagrangian gradient ‖x − clip(x − ∇ₓL, l, u)‖ (ν is then implied: minus ∇ₓL on the
variables at a bound), feasibility as the largest violation, complementarity as
max |min(μᵢ, −c_I,ᵢ)|, zero exactly when μᵢ ≥ 0, c_I,ᵢ ≤ 0 and one of them vanishes.

**Implicit derivatives** (`optimality`). At a solution with the active set A (inequalities
with μᵢ > 0, bounds that hold with equality) fixed, the KKT conditions become the square
system

    F(x, λ, μ, ν) = (∇f + J_Eᵀλ + J_Iᵀμ + ν,  c_E,  [c_I,ᵢ for i ∈ A; μᵢ otherwise],
                     [xⱼ − bound for bounds in A; νⱼ otherwise]) = 0,

whose Jacobian is nonsingular under LICQ and second-order sufficiency with strict
complementarity (Fiacco 1976), so the implicit function theorem differentiates (x*, λ*, μ*,
ν*) with respect to `args`, arrays the functions close over, and the bounds. The active set is
read from the root itself; it is piecewise constant, so it carries no derivative.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu


class Problem(eqx.Module):
    """f, c_E and c_I on flat vectors, with the box. `fun`, `eq`, `ineq` are the user's
    (closure-converted) functions; `unravel` restores the parameter pytree. The sizes are
    static; `eq`/`ineq` are None when absent (m = 0 / p = 0)."""

    fun: Callable
    eq: Callable | None
    ineq: Callable | None
    lower: jax.Array
    upper: jax.Array
    unravel: Callable = eqx.field(static=True)
    bounded: bool = eqx.field(static=True)
    n: int = eqx.field(static=True)
    m: int = eqx.field(static=True)
    p: int = eqx.field(static=True)

    def f(self, x, args):
        return self.fun(self.unravel(x), args)[0].astype(x.dtype)

    def c_eq(self, x, args):
        if self.eq is None:
            return jnp.zeros((0,), x.dtype)
        return jax.flatten_util.ravel_pytree(self.eq(self.unravel(x), args))[0].astype(x.dtype)

    def c_ineq(self, x, args):
        if self.ineq is None:
            return jnp.zeros((0,), x.dtype)
        return jax.flatten_util.ravel_pytree(self.ineq(self.unravel(x), args))[0].astype(
            x.dtype)

    def lagrangian(self, x, lam, mu, args):
        """L(x, λ, μ) = f + λᵀc_E + μᵀc_I (the bounds enter through the projection)."""
        return (self.f(x, args) + jnp.dot(lam, self.c_eq(x, args))
                + jnp.dot(mu, self.c_ineq(x, args)))

    def lagrangian_grad(self, x, lam, mu, args):
        return jax.grad(self.lagrangian)(x, lam, mu, args)


def bound_multiplier(problem: Problem, x, grad_lagrangian):
    """ν: minus ∇ₓL on the variables at a bound, zero elsewhere."""
    at_bound = (x <= problem.lower) | (x >= problem.upper)
    return jnp.where(at_bound, -grad_lagrangian, 0.0)


class KKT(eqx.Module):
    """The three KKT residuals (max-norms) and the tolerances they are judged by."""

    stationarity: jax.Array
    feasibility: jax.Array
    complementarity: jax.Array


def kkt_residuals(problem: Problem, x, lam, mu, args) -> KKT:
    """Stationarity, feasibility and complementarity at (x, λ, μ) (module docstring)."""
    gl = problem.lagrangian_grad(x, lam, mu, args)
    proj = x - jnp.clip(x - gl, problem.lower, problem.upper)
    c_eq = problem.c_eq(x, args)
    c_in = problem.c_ineq(x, args)
    box = jnp.maximum(jnp.maximum(problem.lower - x, x - problem.upper), 0.0)
    feas = jnp.maximum(_inf(c_eq), jnp.maximum(_inf(jnp.maximum(c_in, 0.0)), _inf(box)))
    comp = _inf(jnp.minimum(mu, -c_in)) if problem.p else jnp.zeros((), x.dtype)
    return KKT(_inf(proj), feas, comp)


def _inf(v):
    return jnp.max(jnp.abs(v), initial=0.0) if v.size else jnp.zeros((), v.dtype)


def default_rtol(dtype) -> float:
    """1e-8 in float64; 3·√eps (1e-3) in float32, where the KKT residuals of a solution are
    only resolved to about √eps times the scale of the problem."""
    eps = float(jnp.finfo(dtype).eps)
    return 1e-8 if eps < 1e-10 else 3 * eps**0.5


def converged(kkt: KKT, problem: Problem, x, args, rtol, atol):
    """Every KKT residual within atol + rtol·scale, with the scale of stationarity
    max(1, ‖∇f(x)‖∞) (a relative gradient test) and 1 for feasibility and complementarity
    (constraints are taken as given in their own units; scale them to O(1))."""
    g = jax.grad(problem.f)(x, args)
    tol_stat = atol + rtol * jnp.maximum(1.0, _inf(g))
    tol = atol + rtol
    return ((kkt.stationarity <= tol_stat) & (kkt.feasibility <= tol)
            & (kkt.complementarity <= tol))


def optimality(problem_of: Callable, root, inputs):
    """F(x, λ, μ, ν) of the module docstring: the residual the adjoint differentiates.
    `problem_of(inputs)` rebuilds the problem from the differentiable inputs."""
    problem = problem_of(inputs)
    args = inputs[0]
    x, lam, mu, nu = root
    gl = problem.lagrangian_grad(x, lam, mu, args) + nu
    c_in = problem.c_ineq(x, args)
    active = jax.lax.stop_gradient(mu > 0)
    r_in = jnp.where(active, c_in, mu)
    xs = jax.lax.stop_gradient(x)
    at_lower = xs <= jax.lax.stop_gradient(problem.lower)
    at_upper = xs >= jax.lax.stop_gradient(problem.upper)
    r_box = jnp.where(at_lower, x - problem.lower, jnp.where(at_upper, x - problem.upper, nu))
    return gl, problem.c_eq(x, args), r_in, r_box


def flat_dtype(params0) -> Any:
    return jax.flatten_util.ravel_pytree(params0)[0].dtype


def tree_of(values, like):
    """`values` (flat) unravelled into the structure of `like` (a pytree of
    ShapeDtypeStructs), or None when `like` is None."""
    if like is None:
        return None
    zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), like)
    return jax.flatten_util.ravel_pytree(zeros)[1](values)
