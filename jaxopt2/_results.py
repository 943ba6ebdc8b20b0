"""Per-problem status codes, each with a message that says what to try."""

from __future__ import annotations

import equinox as eqx


class RESULTS(eqx.Enumeration):
    """The status of a solve. `Solution.status` holds one of these per problem (per batch
    element under `vmap`), so one failing problem never hides the others.

    Compare with `sol.status == jaxopt2.RESULTS.successful`.
    """

    successful = ""
    max_steps_reached = (
        "The solver reached `max_steps` before meeting its tolerance. Increase `max_steps`, "
        "loosen `rtol`/`atol`, rescale the problem, or use a solver with curvature information "
        "(e.g. NewtonCG, LBFGS)."
    )
    nonfinite = (
        "A NaN or infinity appeared in the parameters, objective or gradient. Check `fun` for "
        "overflow, log(0) or division by zero near `params0`, check `params0` and `args` are "
        "finite, start closer to the solution, or use float64."
    )
    line_search_failed = (
        "The line search found no step that decreases the objective. The tolerance may be "
        "below what the dtype resolves (loosen `rtol` or use float64), or the gradient may be "
        "inconsistent with `fun` (is `fun` differentiable and deterministic?)."
    )
    linear_solve_failed = (
        "The inner linear solve failed (the curvature may be singular or indefinite). Add "
        "damping/regularization, increase the linear solver's iteration budget, or use a "
        "solver that handles indefinite curvature (NewtonCG, RegularizedNewton)."
    )
    bracket_invalid = (
        "The function has the same sign at `lower` and `upper`, so the bracket holds no sign "
        "change. Pass `lower`/`upper` with F(lower)·F(upper) ≤ 0, or omit both to search "
        "outwards from y0."
    )
    adjoint_failed = (
        "The linear solve of implicit differentiation did not converge: the Hessian (or "
        "Jacobian) at the solution may be singular or indefinite, e.g. at a saddle point or "
        "with unpenalised directions. Add regularization, or pass "
        "ImplicitAdjoint(linear_solver=...) with a solver for such systems (lx.GMRES, lx.LU) "
        "or a larger iteration budget. The derivatives of the failed problems are NaN."
    )
    diverged = (
        "The iterates diverged: the objective kept decreasing without bound. Check that the "
        "problem has a minimizer (add regularization or constraints) and that `fun` is correct."
    )


def status_name(status: RESULTS) -> str:
    """The name of a concrete (unbatched) status, e.g. `"max_steps_reached"`; the message
    itself is `RESULTS[status]`."""
    code = int(status._value)
    for name in RESULTS._name_to_item:
        if getattr(RESULTS, name)._value == code:
            return name
    raise ValueError(f"{code} is not a RESULTS code")
