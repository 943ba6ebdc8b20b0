"""Per-problem status codes, each with a message that says what to try."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class RESULTS(eqx.Enumeration):
    """The status of a solve. `Solution.status` holds one of these per problem (per batch
    element under `vmap`), so one failing problem never hides the others.

    Compare with `sol.status == jaxopt2.RESULTS.successful`; `sol.status.code` is the int32
    code (usable inside `jit`), `RESULTS.names[code]` its name, `RESULTS[sol.status]` its
    message. See `Status`.
    """

    successful = ""
    max_steps_reached = (
        "The solver reached `max_steps` before meeting its tolerance. Increase `max_steps`, "
        "loosen `rtol`/`atol`, rescale the problem, or use a faster-converging solver "
        "(minimization: NewtonCG, LBFGS; root finding: NewtonKrylov; least squares: "
        "LevenbergMarquardt; fixed points: Anderson)."
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
    saddle_point = (
        "The gradient vanished at a point where the curvature is negative in some direction: "
        "a saddle point or a maximum, not a minimum, and no step along that direction "
        "decreased the objective (or the solver already escaped 3 saddles). Start elsewhere "
        "(or perturb `params0`), or check `fun` for non-smooth terms near this point."
    )
    not_a_root = (
        "The solver given to custom_root / custom_fixed_point returned a point where the "
        "optimality condition is not zero (a Newton step from it is not negligible), so the "
        "implicit function theorem does not apply there. Solve more accurately, check that "
        "optimality_fn matches the solver, or the Jacobian may be singular at the root (the "
        "derivative is then unbounded)."
    )
    plateau = (
        "The objective, its gradient and its curvature are all exactly flat here: f is "
        "constant in this precision around `params`, so nothing certifies a minimum (a start "
        "far out on a plateau, e.g. where exp(-|x|²) has underflowed). Start closer to the "
        "solution, rescale the problem, or use float64."
    )
    ill_conditioned = (
        "The gradient met the tolerance, but a Newton step from the final point did not: along "
        "some direction the curvature is so small that the distance left to the minimum "
        "(‖H⁻¹g‖, bounded from below by a few Hessian-vector products) exceeds "
        "rtol·max(‖params‖, 1). The problem is nearly singular or badly scaled for this "
        "solver and dtype: rescale or precondition the parameters, add regularization, use "
        "float64, or use Newton (exact Hessian solves)."
    )
    primal_infeasible = (
        "The constraints have no common point: for a QP the solver found a certificate "
        "(multipliers y, z with Aᵀy + Gᵀz = 0 and bᵀy + hᵀz < 0) that no x satisfies them "
        "all; for nonlinear constraints the penalty reached its cap with no progress towards "
        "feasibility (a local certificate: a point of least infeasibility). Check the "
        "constraint data (signs, units, lower ≤ upper), or relax the constraints, or start "
        "elsewhere."
    )
    dual_infeasible = (
        "The objective is unbounded below on the feasible set: the solver found a direction "
        "d with Qd = 0, cᵀd < 0 that keeps every constraint satisfied (a QP certificate of "
        "unboundedness). Add bounds or constraints along d, or a regularization to Q."
    )


# equinox does not export the item class; every item is an instance of it.
EnumerationItem = type(RESULTS.successful)


class Status(EnumerationItem):
    """One `RESULTS` item, or an array of them (one per problem under `vmap`). What
    `Solution.status` holds.

    - `status == RESULTS.successful` is a boolean array; `RESULTS.where` and `RESULTS[status]`
      (the message) work as for any `eqx.Enumeration`.
    - `status.code` is the int32 array of codes, usable inside `jit` and under `vmap`: return
      it from a jitted function, then `jaxopt2.status_name(code)` turns it into names.
    - `int(status)` is the code of a single concrete status; `status.name` and
      `status.message` are its name and message (arrays of strings for a batch).
    - `print(status)` shows `RESULTS.successful`, or for a failure its name and the first
      sentence of its message; `repr` shows the name only. Inside `jit`,
      `jax.debug.print("{}", sol.status)` prints the same at run time.
    """

    @property
    def code(self) -> jax.Array:
        """The int32 code(s), as an array: works inside `jit` and under `vmap`."""
        return jnp.asarray(self._value, jnp.int32)

    @property
    def name(self) -> str | np.ndarray:
        """The name (`"max_steps_reached"`), or a numpy array of names for a batch. Outside
        `jit` only: names are strings, which a traced array cannot hold."""
        return status_name(self)

    @property
    def message(self) -> str | np.ndarray:
        """What the status means and what to try, or a numpy array of messages for a
        batch. Outside `jit` only."""
        codes = _concrete_codes(self._value, "status.message")
        messages = np.asarray(self._enumeration._index_to_message, dtype=object)[codes]
        return str(messages) if codes.ndim == 0 else messages

    def __int__(self) -> int:
        codes = _concrete_codes(self._value, "int(status)")
        if codes.ndim != 0:
            raise TypeError(
                f"int(status) needs a single status; this one holds {codes.size} (shape "
                f"{codes.shape}, e.g. from vmap). Use `status.code` for the int32 array of "
                "codes, or `jaxopt2.status_name(status)` for their names.")
        return int(codes)

    def _render(self, long: bool) -> str:
        prefix = self._enumeration.__qualname__
        value = self._value
        if isinstance(value, jax.core.Tracer):
            return f"{prefix}<traced>"
        if not isinstance(value, (np.ndarray, np.generic, jax.Array)):
            return f"{prefix}<?>"  # a placeholder leaf, e.g. from jax.eval_shape
        codes = np.asarray(value)
        names = _names_of(self._enumeration)
        if codes.ndim == 0:
            name = names[int(codes)]
            message = self._enumeration._index_to_message[int(codes)]
            if long and message:
                return f"{prefix}.{name}: {message.split('. ')[0].rstrip('.')}."
            return f"{prefix}.{name}"
        text = np.array2string(np.asarray(names, dtype=object)[codes], separator=", ",
                               formatter={"all": str}, threshold=64)
        return f"{prefix}{text}"

    def __repr__(self) -> str:
        return self._render(long=False)

    def __str__(self) -> str:
        return self._render(long=True)


def _names_of(enumeration) -> tuple[str, ...]:
    names = [""] * len(enumeration)
    for name, item in enumeration._name_to_item.items():
        names[int(item._value)] = name
    return tuple(names)


def _concrete_codes(value, what: str) -> np.ndarray:
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{what} needs a concrete status, but this one is traced (inside jit, vmap or "
            "grad). Inside a transformation use `sol.status.code` (an int32 array), e.g. "
            "return it from the jitted function and call `jaxopt2.status_name(code)` on the "
            "result; or compare `sol.status == jaxopt2.RESULTS.successful`.")
    codes = np.asarray(value)
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"{what} needs integer status codes; got dtype {codes.dtype}.")
    if codes.size and (codes.min() < 0 or codes.max() >= len(RESULTS)):
        bad = codes[(codes < 0) | (codes >= len(RESULTS))].ravel()[0]
        raise ValueError(f"{int(bad)} is not a RESULTS code: codes run from 0 to "
                         f"{len(RESULTS) - 1} ({', '.join(RESULTS.names)}).")
    return codes


def status_name(status) -> str | np.ndarray:
    """The name of a status, e.g. `"max_steps_reached"`; its message is `RESULTS[status]`.

    `status` is a `RESULTS` item (`sol.status`) or its code(s): a Python int, or a numpy or
    JAX integer array such as `sol.status.code` returned from a jitted or vmapped function.
    A single status gives a `str`; an array gives a numpy array of names of the same shape.
    Names are strings, so this runs outside `jit`: inside, keep `sol.status.code`.

    ```python
    codes = jax.jit(jax.vmap(lambda x0: jaxopt2.minimize(f, x0, solver=s, throw=False)
                             .status.code))(x0s)
    jaxopt2.status_name(codes)  # array(['successful', 'nonfinite', ...])
    ```
    """
    if isinstance(status, EnumerationItem):
        if status._enumeration is not RESULTS:
            raise TypeError(f"status_name takes jaxopt2.RESULTS statuses; got an item of "
                            f"{status._enumeration.__qualname__}.")
        status = status._value
    elif isinstance(status, bool) or not isinstance(
            status, (int, np.integer, np.ndarray, jax.Array)):
        raise TypeError("status_name takes a RESULTS status (`sol.status`) or integer "
                        f"codes (`sol.status.code`); got {type(status).__name__}.")
    codes = _concrete_codes(status, "status_name")
    names = np.asarray(RESULTS.names)[codes]
    return str(names) if codes.ndim == 0 else names


def _where(cls, pred, a, b):
    out = eqx.Enumeration.where.__func__(cls, pred, a, b)
    return out if type(out) is Status else Status(out._value, out._enumeration)


# Every RESULTS item, including those `where` builds, is a `Status`, so the pytree structure of
# a status never depends on how it was made (`lax.cond` branches must agree).
for _name, _item in RESULTS._name_to_item.items():
    RESULTS._name_to_item[_name] = Status(_item._value, RESULTS)
RESULTS.where = classmethod(_where)
RESULTS.names = _names_of(RESULTS)
del _name, _item
