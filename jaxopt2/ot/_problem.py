"""What both OT solvers share: input checks, the result type, the dual and its implicit
derivatives.

The entropic problem, for a cost C (n × m) and marginals a (n), b (m) of equal mass, is

    min_{P ≥ 0, P1 = a, Pᵀ1 = b}  <C, P> + ε Σᵢⱼ Pᵢⱼ (log Pᵢⱼ − 1),

whose concave dual in the potentials (f, g) is

    max_{f, g}  φ(f, g) = <f, a> + <g, b> − ε Σᵢⱼ exp((fᵢ + gⱼ − Cᵢⱼ)/ε),

with the plan P = exp((f ⊕ g − C)/ε) at the optimum. The solvers work in the scaled potentials
u = f/ε, v = g/ε (one division of C by ε, none per iteration). φ is invariant under
(f + c, g − c); the potentials returned are normalised to Σf = Σg, and the implicit
derivatives respect that normalisation (see `attach_derivatives`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._front import guard_derivatives, raise_if_failed
from .._leafwise import is_concrete
from .._linalg.cg import truncated_cg
from .._results import RESULTS

DERIVATIVE_HINT = (
    "The derivatives of a failed OT solve are not those of a solution. Pass throw=False to get "
    "NaN derivatives for the failed problems instead, or raise max_steps / loosen rtol.")


class OTResult(eqx.Module):
    """The result of [`sinkhorn`][jaxopt2.ot.sinkhorn] and
    [`sinkhorn_newton_sparse`][jaxopt2.ot.sinkhorn_newton_sparse].

    - `f`, `g`: the dual potentials (n and m), normalised to Σf = Σg; the plan is
      P = exp((fᵢ + gⱼ − Cᵢⱼ)/ε) (`plan`, formed on demand: n × m).
    - `transport_cost`: <C, P>; `regularized_cost`: the dual value
      <f, a> + <g, b> − ε ΣP, equal at the solution to <C, P> + ε Σ P(log P − 1).
    - `marginal_errors`: (‖P1 − a‖₁, ‖Pᵀ1 − b‖₁), both measured on the returned potentials.
    - `status`: a `jaxopt2.RESULTS` item per problem: `successful` only when both marginal
      errors meet `atol + rtol·Σa`; `max_steps_reached`; `nonfinite` (a NaN or infinite cost,
      marginal or potential; traced invalid inputs end here).
    - `stats`: `num_steps` (Sinkhorn iterations plus Newton steps), `num_sinkhorn_steps`,
      `num_newton_steps`, `num_cg_steps` (int32; the last two are 0 for `sinkhorn`).

    `f`, `g`, `plan`, and the costs are differentiable with respect to the cost matrix, the
    marginals and ε by the implicit function theorem (see the solvers).
    """

    f: jax.Array
    g: jax.Array
    cost: jax.Array
    epsilon: jax.Array
    transport_cost: jax.Array
    regularized_cost: jax.Array
    marginal_errors: jax.Array
    status: RESULTS
    stats: dict

    @property
    def plan(self) -> jax.Array:
        """The transport plan P = exp((fᵢ + gⱼ − Cᵢⱼ)/ε), n × m."""
        return _plan(self.f, self.g, self.cost, self.epsilon)

    @property
    def success(self) -> jax.Array:
        return self.status == RESULTS.successful


def _plan(f, g, cost, epsilon):
    # `...`: a batch of results (vmap's output) has one epsilon per problem
    epsilon = jnp.asarray(epsilon)[..., None, None]
    return jnp.exp((f[..., :, None] + g[..., None, :] - cost) / epsilon)


def _fail(fname: str, message: str):
    raise ValueError(f"`jaxopt2.ot.{fname}`: {message}")


def prepare(fname: str, cost, a, b, epsilon, rtol, atol):
    """Check and convert the inputs; returns (cost, a, b, epsilon, rtol) as arrays of one
    floating dtype. Concrete invalid values raise; traced ones (under jit/vmap) end in a
    `nonfinite` status instead (see `invalid_mask`)."""
    cost = jnp.asarray(cost)
    if cost.ndim != 2 or cost.shape[0] < 1 or cost.shape[1] < 1:
        _fail(fname, f"`cost` must be a 2-D (n, m) matrix with n, m ≥ 1; got shape "
              f"{cost.shape}. For batches of problems, jax.vmap the solver.")
    n, m = cost.shape
    a = jnp.full((n,), 1.0 / n) if a is None else jnp.asarray(a)
    b = jnp.full((m,), 1.0 / m) if b is None else jnp.asarray(b)
    if a.shape != (n,):
        _fail(fname, f"`a` must have shape ({n},) (one weight per row of `cost`); got "
              f"{a.shape}.")
    if b.shape != (m,):
        _fail(fname, f"`b` must have shape ({m},) (one weight per column of `cost`); got "
              f"{b.shape}.")
    epsilon = jnp.asarray(epsilon)
    if epsilon.ndim != 0:
        _fail(fname, f"`epsilon` must be a scalar; got shape {epsilon.shape} (vmap the "
              "solver for one epsilon per problem).")
    for name, x in (("cost", cost), ("a", a), ("b", b), ("epsilon", epsilon)):
        if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
                or x.dtype == bool):
            _fail(fname, f"`{name}` must hold real numbers; got dtype {x.dtype}.")
    dtype = jnp.result_type(float, cost.dtype, a.dtype, b.dtype)
    cost, a, b, epsilon = (jnp.asarray(x, dtype) for x in (cost, a, b, epsilon))
    rtol = default_rtol(dtype) if rtol is None else rtol
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if is_concrete(tol) and not np.all(np.asarray(tol) >= 0):
            _fail(fname, f"`{name}` must be ≥ 0; got {tol!r}.")
    if is_concrete((cost, a, b, epsilon)):
        with jax.ensure_compile_time_eval():
            c_np, a_np, b_np, e_np = (np.asarray(x) for x in (cost, a, b, epsilon))
        if not np.all(np.isfinite(c_np)):
            _fail(fname, f"`cost` holds {int(np.sum(~np.isfinite(c_np)))} NaN or infinite "
                  "entries; give finite costs (a large finite cost forbids a pair).")
        for name, w in (("a", a_np), ("b", b_np)):
            if not np.all(w > 0) or not np.all(np.isfinite(w)):
                _fail(fname, f"`{name}` must be strictly positive and finite (a probability "
                      f"vector); got {int(np.sum(~(w > 0)))} entries ≤ 0 or NaN and "
                      f"{int(np.sum(np.isinf(w)))} infinite. Drop the points with zero mass "
                      "(their potentials are −∞ and they carry no plan entries).")
        mass_a, mass_b = float(a_np.sum()), float(b_np.sum())
        if abs(mass_a - mass_b) > 1e-4 * max(mass_a, mass_b):
            _fail(fname, f"`a` and `b` must have the same total mass; got Σa = {mass_a:.6g} "
                  f"and Σb = {mass_b:.6g}. Normalise both, e.g. a / a.sum() and b / b.sum() "
                  "(unbalanced transport is not supported).")
        if not (np.isfinite(e_np) and e_np > 0):
            _fail(fname, f"`epsilon` must be positive and finite; got {float(e_np)!r}. For a "
                  "cost of mean 1, epsilon around 1e-3 to 1e-1 is usual.")
    return cost, a, b, epsilon, rtol


FAILURE_HINT = ("Pass throw=False to return the status instead of raising, raise max_steps, "
                "loosen rtol, or use float64.")


def precheck(fname: str):
    """The concrete-value checks of `prepare`, for a top-level call (`jaxopt2._compiled`)."""
    def check(arguments):
        prepare(fname, arguments["cost"], arguments["a"], arguments["b"],
                arguments["epsilon"], arguments["rtol"], arguments["atol"])
    return check


def default_rtol(dtype) -> float:
    # float32 carries ~1e-7 relative error in the potentials, i.e. ~1e-7·|f|/ε in each plan
    # entry: at ε = 1e-3 with costs of order 1 the marginal error cannot go much below 1e-4.
    return 1e-6 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def invalid_mask(cost, a, b, epsilon):
    """True where a (traced) input is invalid: the solvers then return NaN potentials and a
    `nonfinite` status instead of a plausible wrong answer."""
    bad = ~jnp.all(jnp.isfinite(cost)) | ~jnp.all(a > 0) | ~jnp.all(b > 0)
    bad = bad | ~jnp.all(jnp.isfinite(a)) | ~jnp.all(jnp.isfinite(b))
    bad = bad | ~(epsilon > 0) | ~jnp.isfinite(epsilon)
    mass_a, mass_b = jnp.sum(a), jnp.sum(b)
    return bad | (jnp.abs(mass_a - mass_b) > 1e-4 * jnp.maximum(mass_a, mass_b))


def marginals(u, v, cost_scaled):
    """Row and column sums of P = exp(u ⊕ v − C/ε), computed stably per row and column."""
    rows = jnp.exp(u + jax.nn.logsumexp(v[None, :] - cost_scaled, axis=1))
    cols = jnp.exp(v + jax.nn.logsumexp(u[:, None] - cost_scaled, axis=0))
    return rows, cols


def _normalise(f, g):
    # (f + c, g − c) leaves the plan unchanged; pick c with Σf = Σg
    shift = (jnp.sum(f) - jnp.sum(g)) / (f.size + g.size)
    return f - shift, g + shift


def finish(fname, u, v, cost, a, b, epsilon, tol, stats, invalid, throw: bool) -> OTResult:
    """The potentials (with their implicit derivatives), errors, costs and status."""
    f, g = _normalise(jax.lax.stop_gradient(u * epsilon), jax.lax.stop_gradient(v * epsilon))
    nan = jnp.asarray(jnp.nan, f.dtype)
    f, g = jnp.where(invalid, nan, f), jnp.where(invalid, nan, g)
    rows, cols = marginals(f / epsilon, g / epsilon, cost / epsilon)
    errors = jnp.stack([jnp.sum(jnp.abs(rows - a)), jnp.sum(jnp.abs(cols - b))])
    finite = jnp.all(jnp.isfinite(errors)) & jnp.all(jnp.isfinite(f)) & jnp.all(jnp.isfinite(g))
    status = RESULTS.where(~finite, RESULTS.nonfinite,
                           RESULTS.where(jnp.all(errors <= tol), RESULTS.successful,
                                         RESULTS.max_steps_reached))
    if throw:
        f = raise_if_failed(f, status, FAILURE_HINT)
    f, g = attach_derivatives(f, g, cost, a, b, epsilon)
    f, g = guard_derivatives((f, g), status, throw=throw, unconverged=False,
                             hint=DERIVATIVE_HINT)
    plan = _plan(f, g, cost, epsilon)
    transport = jnp.sum(cost * plan)
    regularized = jnp.dot(f, a) + jnp.dot(g, b) - epsilon * jnp.sum(plan)
    return OTResult(f=f, g=g, cost=cost, epsilon=epsilon, transport_cost=transport,
                    regularized_cost=regularized, marginal_errors=errors, status=status,
                    stats={k: jnp.asarray(s, jnp.int32) for k, s in stats.items()})


# --------------------------------------------------------------------- implicit derivatives

def _residual(f, g, cost, a, b, epsilon):
    """The dual gradient ∇φ = (a − P1, b − Pᵀ1): zero exactly at the solution."""
    plan = _plan(f, g, cost, epsilon)
    return a - jnp.sum(plan, axis=1), b - jnp.sum(plan, axis=0)


def _project(du, dv):
    # remove the component along the null direction (1, −1) of the dual Hessian
    c = (jnp.sum(du) - jnp.sum(dv)) / (du.size + dv.size)
    return du - c, dv + c


@jax.custom_jvp
def attach_derivatives(f, g, cost, a, b, epsilon):
    """Identity on the (stopped-gradient) potentials, whose tangent is the implicit one.

    At the solution ∇φ(f, g; C, a, b, ε) = 0, so (df, dg) solves
    −∇²φ (df, dg) = ∂_θ∇φ dθ, with −∇²φ = (1/ε)[[diag(P1), P], [Pᵀ, diag(Pᵀ1)]], positive
    semidefinite with the null direction (1, −1). The right-hand side is projected off that
    direction (a perturbation changing Σa − Σb has no feasible answer; the projection spreads
    the mass difference evenly) and the system gets + s·(1, −1)(1, −1)ᵀ, which makes it
    positive definite without changing the solution, whose Σdf = Σdg keeps the normalisation.
    Solved by Jacobi-preconditioned CG inside `lax.custom_linear_solve`, so reverse mode
    transposes the same symmetric solve. A CG that does not converge gives NaN tangents.
    """
    return f, g


@attach_derivatives.defjvp
def _attach_jvp(primals, tangents):
    f, g, cost, a, b, epsilon = primals
    _, _, dcost, da, db, deps = tangents
    _, rhs = jax.jvp(lambda c, aa, bb, e: _residual(f, g, c, aa, bb, e),
                     (cost, a, b, epsilon), (dcost, da, db, deps))
    rhs = _project(*rhs)
    plan = _plan(f, g, cost, epsilon)
    rows, cols = jnp.sum(plan, axis=1), jnp.sum(plan, axis=0)
    n, m = f.size, g.size
    shift = jnp.mean(jnp.concatenate([rows, cols])) / (n + m)

    def matvec(x):
        du, dv = x
        along = jnp.sum(du) - jnp.sum(dv)
        return ((rows * du + plan @ dv) / epsilon + shift * along,
                (plan.T @ du + cols * dv) / epsilon - shift * along)

    diag = (rows / epsilon + shift, cols / epsilon + shift)

    def solve(_, b_):
        tiny = jnp.finfo(f.dtype).eps
        result = truncated_cg(matvec, b_, rtol=jnp.sqrt(tiny) * 1e-2 if f.dtype == jnp.float64
                              else 1e2 * tiny, max_iters=max(100, 4 * (n + m)),
                              precond=lambda r: (r[0] / diag[0], r[1] / diag[1]))
        ok = result.converged | (jnp.sqrt(sum(jnp.vdot(t, t) for t in b_)) == 0)
        nan = jnp.asarray(jnp.nan, f.dtype)
        return tuple(jnp.where(ok, x, nan) for x in result.x)

    dfg = jax.lax.custom_linear_solve(matvec, rhs, solve, symmetric=True)
    return (f, g), dfg
