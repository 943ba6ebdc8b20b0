"""Exact Newton's method with a dense Hessian and a Cholesky solve, for small problems."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from .._base import AbstractMinimizer, Counts, Iterate
from .._linalg import damped_cholesky
from .._linesearch import newton_line_search
from .._sqrt_hessian import add_rest, check_b, check_sqrt_hessian
from .._tree import ravel
from .._validate import check_budget, check_line_search, check_tolerances
from .._xla_cpu import gram


class _NewtonState(eqx.Module):
    damping: jax.Array  # τ added to the Hessian at the last step; 0 when H itself was factored
    # the lower Cholesky factor of the last step's H + τI (zeros before the first step), for
    # the implicit derivative's solve (`adjoint_preconditioner`)
    factor: jax.Array


class Newton(AbstractMinimizer):
    """Newton's method with a dense Hessian: solve ∇²f(xₖ) dₖ = −∇f(xₖ) by Cholesky, then
    xₖ₊₁ = xₖ + tₖ dₖ with tₖ from Armijo backtracking starting at the full step tₖ = 1.

    When ∇²f(xₖ) is not positive definite (the Cholesky factor has NaNs: indefinite or
    singular), the solve uses H + τI instead, with τ increased geometrically from
    max(0, −min Hᵢᵢ) + 10⁻³‖H‖_F until the factorisation succeeds (Nocedal & Wright, Alg. 3.3).
    H + τI is positive definite, so dₖ is always a descent direction; the τ used is kept in
    the state (`Solution.state.damping`) for diagnosis, and the last factor
    (`Solution.state.factor`, n × n) preconditions the implicit derivative's solve, which
    then takes a few Hessian-vector products instead of forming the Hessian again.

    The parameters are flattened into one vector (`jax.flatten_util.ravel_pytree`) and the
    n × n Hessian is formed with forward-over-reverse differentiation: n Hessian-vector
    products, O(n²) memory and an O(n³) factorisation per step. Use it for problems up to a
    few thousand parameters, where it converges quadratically near a minimizer with no
    tuning; for larger problems use `NewtonCG`, which never forms the Hessian.

    **Gauss–Newton structure at BLAS speed** (`sqrt_hessian`): where ∇²f(x) = BᵀB + R with
    B one row per example, as for every generalized linear model f = (1/n)Σ φ(aᵢᵀx, yᵢ) + r(x)
    (B = diag(√(φ''(Ax)/n)) A, R = ∇²r) and every least-squares loss, pass
    `sqrt_hessian(params, args) -> (B, R)` (B an n × d array, columns in the flattened order
    of the parameters; R a d × d matrix, a scalar meaning R·I, or None for 0; the same
    function as `SketchedNewton`'s Newton sketch). The Hessian is then BᵀB + R from one
    matrix product, about half the arithmetic of the d Hessian-vector products
    `jax.hessian` costs, in one GEMM (scikit-learn's newton-cholesky forms XᵀDX the same
    way). It must be the exact Hessian of `fun`: a wrong B gives wrong steps (the stopping
    test, on the true gradient, still holds the answer to the tolerance). It counts one
    `num_jac` per step.

    Each step counts one dense Hessian (`num_hessian`) plus the line search's objective
    evaluations and one gradient. A line search that finds no decrease stops the solve with
    `RESULTS.line_search_failed`. Near a minimizer, where the predicted decrease −gᵀd falls
    below the rounding of f, the full step is taken unless f measurably rises, so tight
    tolerances remain reachable.

    Reference: J. Nocedal and S. J. Wright, Numerical Optimization, 2nd ed., §3.3–3.4.

    ```python
    import jax.numpy as jnp, jaxopt2
    rosen = lambda p, a: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
    sol = jaxopt2.minimize(rosen, jnp.array([-1.2, 1.0]), solver=jaxopt2.Newton())
    ```
    """

    forms_dense_matrix: ClassVar[bool] = True  # the n×n Hessian

    uses_curvature: ClassVar[bool] = True  # minima are checked for negative curvature

    rtol: float | None = None
    atol: float = 0.0
    c1: float = 1e-4
    max_backtracks: int = 30
    max_damping_tries: int = 12
    sqrt_hessian: Callable | None = None

    def __check_init__(self):
        check_sqrt_hessian(self.sqrt_hessian, "Newton")
        check_tolerances(self)
        check_line_search(self)
        check_budget("max_damping_tries", self.max_damping_tries)

    def init(self, fn, iterate: Iterate, args) -> _NewtonState:
        x, _ = ravel(iterate.params)
        return _NewtonState(jnp.zeros((), iterate.value.dtype),
                            jnp.zeros((x.size, x.size), x.dtype))

    def adjoint_preconditioner(self, state: _NewtonState, params):
        """(H + τI)⁻¹ of the last step, from its Cholesky factor: at a converged solve H is
        the Hessian a step away from the solution, so the adjoint's CG needs a few products.
        Before any step (a start at the solution) the factor is zero and the product not
        finite: the adjoint's CG gives up after 8 iterations and forms the matrix."""
        _, unravel = ravel(params)

        def apply(v):
            flat, _ = ravel(v)
            out = jsl.cho_solve((state.factor.astype(flat.dtype), True), flat)
            return unravel(out)

        return apply

    def step(self, fn, iterate: Iterate, args, state: _NewtonState):
        x, unravel = ravel(iterate.params)
        g, _ = ravel(iterate.grad)
        if self.sqrt_hessian is None:
            h = jax.hessian(lambda v: fn(unravel(v), args)[0])(x).astype(x.dtype)
            h = 0.5 * (h + h.T)
            extra = Counts.of(hessian=1)
        else:
            b, rest = self.sqrt_hessian(iterate.params, args)
            b = check_b(b, x.size, x.dtype, "Newton")
            h = add_rest(gram(b), rest, "Newton")  # symmetric when R is
            extra = Counts.of(hessian=1, jac=1)
        factor, tau = damped_cholesky(h, self.max_damping_tries)
        d = jsl.cho_solve((factor, True), -g)
        new, counts, result = newton_line_search(fn, iterate, unravel(d), args, self.c1,
                                                 self.max_backtracks)
        counts = counts + extra
        return new, _NewtonState(tau.astype(iterate.value.dtype), factor), counts, result
