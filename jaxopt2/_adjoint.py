"""How solutions are differentiated.

`ImplicitAdjoint` applies the implicit function theorem: if the solution x*(θ) satisfies the
optimality condition F(x*, θ) = 0 (for minimisation F = ∇ₓf), then

    ∂x*/∂θ · θ̇ = −(∂ₓF)⁻¹ (∂_θF · θ̇).

Only the forward-mode rule is defined. The solve with ∂ₓF is a `jax.lax.custom_linear_solve`,
so reverse mode (a solve with (∂ₓF)ᵀ), `vmap` and higher derivatives follow, and the solve
functions are ours: they can report a failed solve per problem (NaN derivatives, and an error
when not batched) instead of lineax raising for a whole batch. The iterations are never
differentiated. θ here is `(fn, args)`: `fn` is closure-converted, so arrays the objective
closes over are differentiated like `args`.

`UnrolledAdjoint` differentiates through the iterations instead (for comparison, and for
problems whose optimality condition is not available).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from ._branch import every_member_cond

# A FunctionLinearOperator whose output structure is its input's and whose `mv` gives the
# vector the structure's shardings: lineax's abstract evaluation drops shardings, and the
# closure-converted product then refuses a vector sharded over Explicit mesh axes.
from ._curvature import _Symmetric as _Square
from ._front import raise_if_failed
from ._jacobi import auto_inverse_diagonal, scaling
from ._linalg.cg import truncated_cg
from ._loops import unrolled_loops
from ._results import RESULTS
from ._tree import (
    ravel,
    result_dtype,
    tree_add,
    tree_all_finite,
    tree_axpy,
    tree_dot,
    tree_neg,
    tree_sub,
)
from .distributed import explicit_spec


class AbstractAdjoint(eqx.Module):
    @abc.abstractmethod
    def apply(self, primal_fn, optimality_fn, params0, inputs, tags):
        """Return `primal_fn(params0, inputs)`, a pair `(root, residual)`, differentiable in
        `inputs` through `root`; `residual` carries no derivative."""


class Neumann(eqx.Module):
    """Truncated Neumann series for the adjoint system A x = b (Lorraine, Vicol & Duvenaud,
    "Optimizing millions of hyperparameters by implicit differentiation", 2020):

        x ≈ α Σ_{k<K} (I − αA)ᵏ b,

    i.e. K steps of Richardson iteration from 0. Cheap (K matrix-vector products, no inner
    products) and approximate by design: it converges when the spectrum of αA lies in (0, 2),
    for example A symmetric positive definite and α ≤ 1/λ_max. `scale=None` takes
    α = 1/λ̂ with λ̂ from `power_iterations` steps of the power method, inflated by 10% because
    the power method approaches λ_max from below.
    """

    steps: int = 50
    scale: float | None = None
    power_iterations: int = 20

    def __check_init__(self):
        if self.steps < 1:
            raise ValueError(f"`steps` must be a positive int; got {self.steps!r}.")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"`scale` must be > 0 (or None); got {self.scale!r}.")

    def solve(self, matvec, b):
        if self.scale is None:
            def power(_, v):
                w = matvec(v)
                return jtu.tree_map(lambda x: x / jnp.maximum(_norm(w), _tiny(w)), w)

            v = jtu.tree_map(lambda x: jnp.ones_like(x) / jnp.sqrt(_size(b)), b)
            v = jax.lax.fori_loop(0, self.power_iterations, power, v)
            lam = tree_dot(v, matvec(v)) / jnp.maximum(tree_dot(v, v), _tiny(b))
            alpha = 1.0 / (1.1 * jnp.abs(lam))
        else:
            alpha = self.scale

        def richardson(_, x):
            return tree_axpy(alpha, tree_sub(b, matvec(x)), x)

        x = jax.lax.fori_loop(0, self.steps, richardson, jtu.tree_map(jnp.zeros_like, b))
        return x, tree_all_finite(x)


def _norm(x):
    return jnp.sqrt(tree_dot(x, x))


def _size(x):
    return sum(leaf.size for leaf in jtu.tree_leaves(x))


def _tiny(x):
    return jnp.finfo(result_dtype(x)).tiny


class ImplicitAdjoint(AbstractAdjoint):
    """Differentiate the solution by the implicit function theorem (the default).

    - `linear_solver`: how the adjoint system (∂ₓF) v = w is solved: any lineax solver
      (`lx.CG`, `lx.GMRES`, `lx.BiCGStab`, or a dense `lx.LU()`/`lx.Cholesky()` for small
      problems, which materialises ∂ₓF), or `jaxopt2.Neumann(steps)`. `None` (default): up to
      1000 unknowns, a dense solve (∂ₓF formed from batched products, then an eigen- or
      least-squares pseudo-inverse, so singular but consistent systems are fine), which for
      symmetric positive semi-definite systems (minimisation, least squares) is tried after
      conjugate gradients within a budget of n/6 products, about the matrix's cost (given up
      early when its rate cannot meet the budget): a well-conditioned system is solved
      without forming ∂ₓF, an ill-conditioned one forms it after about 8 products; above that,
      matrix-free conjugate gradients for symmetric systems (minimisation, least squares),
      preconditioned by the Jacobi diagonal from 16 products with coloured probes (as
      `NewtonCG`'s "auto"), and GMRES otherwise, to relative and absolute tolerance
      eps^0.75 in float64 (eps^0.6 in lower precision).
    - `preconditioner`: optional, with NewtonCG's protocol
      `preconditioner(fun, params, args, operator) -> (v -> M⁻¹v)` (only `operator`, the
      adjoint system, is passed; the others are None), e.g.
      `jaxopt2.sketch.NystromPreconditioner(rank=50)`. With it the adjoint is solved by
      preconditioned CG at any size (the system must be symmetric positive definite).
    - `throw`: if the solve fails (e.g. CG on an indefinite or singular Hessian), that
      problem's derivatives are NaN, and with `throw=True` (default) an error says why (never
      under `vmap`, where one failure must not stop the others).

    - `differentiate_unconverged`: by default the derivatives of a solve that did not succeed
      (any status but `successful`) are NaN for that problem, and raise outside `vmap` with
      the front door's `throw=True`, even under `jit(grad)`: the implicit function theorem
      holds only at a solution. `True` differentiates the point reached as if it were one:
      for warm-started inner solves of a bilevel loop that stop at a small `max_steps` on
      purpose (pass `throw=False` too, or the primal raises).
    - `refine`: under differentiation, take one Newton step on the optimality condition
      from the point the solver returned (x ← x − (∂ₓF)⁻¹F, by the same linear solver as the
      adjoint; kept only where it lowers ‖F‖) before differentiating there, and return that
      point as the solution. The derivative's error is first order in the solution's, so a
      solver that stops at its tolerance (L-BFGS at the default rtol: hypergradients ~3e-7
      relative) gives derivatives no better than that; one step squares the error (2e-10 in
      `benchmarks/hypergradient.py`'s ridge problem). Costs one more linear solve, only when
      differentiated; the primal value of a differentiated call can then differ from an
      undifferentiated one by up to the solve's tolerance. `None` (default): `minimize`
      refines the answers of solvers without curvature (L-BFGS, BFGS, gradient descent),
      whose errors sit at the tolerance, and nothing else (Newton-type answers are already
      quadratically converged; composite and constrained optimality maps are not smooth;
      with `differentiate_unconverged=True` the derivative is that of the point reached).

    - `matrix`: optional `matrix(root, inputs) -> (n, n) array`, ∂ₓF at the root in the
      flattened order of the parameters, used by the default dense solve (up to 1000
      unknowns, no `linear_solver` or `preconditioner` given) instead of n batched products.
      `minimize` sets it from `Newton(sqrt_hessian=...)` / `SketchedNewton(sqrt_hessian=...)`
      (BᵀB + R in one matrix product). The solution is still checked against the true
      products, so a matrix that is not ∂ₓF gives a failed (NaN, or raising) derivative,
      never a quietly wrong one.
    - `solver_preconditioner`: optional `solver_preconditioner(out) -> (v -> M⁻¹v)`, the
      curvature the forward solve ended with (`out`: what the primal function returned
      beside the root), for the default small solve's conjugate gradients. `minimize` sets it
      from the solver's `adjoint_preconditioner` (Newton's last Cholesky factor), so CG needs
      a few products where the matrix would be formed; a preconditioner that does not help
      only costs CG its budget, after which the matrix is formed as without it.

    Works in forward and reverse mode, under `vmap`, and to higher order (`jax.hessian` of an
    outer loss through a solve).
    """

    linear_solver: lx.AbstractLinearSolver | Neumann | None = None
    throw: bool = True
    preconditioner: Callable | None = None
    differentiate_unconverged: bool = False
    refine: bool | None = None
    matrix: Callable | None = None
    solver_preconditioner: Callable | None = None

    def __check_init__(self):
        if self.refine not in (None, True, False):
            raise TypeError(f"`refine` must be True, False or None (the front door decides); "
                            f"got {self.refine!r}.")

    def apply(self, primal_fn, optimality_fn, params0, inputs, tags):
        return _implicit(params0, inputs, primal_fn=primal_fn, optimality_fn=optimality_fn,
                         tags=frozenset(tags), adjoint=self)

    def dense_matrix(self, root, inputs):
        """`matrix(root, inputs)` on primal values where the default dense solve will use it,
        else None."""
        if (self.matrix is None or self.linear_solver is not None
                or self.preconditioner is not None or _size(root) > DENSE_MAX):
            return None
        n = _size(root)
        A = jnp.asarray(self.matrix(jax.lax.stop_gradient(root), inputs))
        if A.shape != (n, n):
            raise ValueError(f"ImplicitAdjoint: `matrix` must return the ({n}, {n}) matrix "
                             f"∂ₓF in the flattened order of the parameters; got {A.shape}.")
        return jax.lax.stop_gradient(A.astype(result_dtype(root)))

    def solve(self, matvec, rhs, root, tags, matrix=None, from_solver=None):
        """Solve matvec(x) = rhs, with `root` fixing the structure and dtype (and `matrix`,
        from `dense_matrix`, the system as an array; `from_solver`, v ↦ M⁻¹v from the forward
        solver, for the small symmetric solve). Returns x, NaN where the solve failed."""
        symmetric = lx.symmetric_tag in tags
        solver = self.linear_solver

        eps = float(jnp.finfo(result_dtype(root)).eps)

        def solve(matvec, b):
            # (custom_linear_solve hands this the transposed map for the transposed solve.)
            if isinstance(solver, Neumann):
                x, ok = solver.solve(matvec, b)  # approximate by design: only finiteness
            elif self.preconditioner is not None and symmetric:
                op = _Square(matvec, jax.eval_shape(lambda: b), tags=frozenset(tags))
                apply = self.preconditioner(None, None, None, op)
                precond = _Square(apply, jax.eval_shape(lambda: b), tags=frozenset(tags))
                chosen = solver if solver is not None else _default_solver(tags, eps)
                x = lx.linear_solve(op, b, chosen, options={"preconditioner": precond},
                                    throw=False).value
                ok = tree_all_finite(x) & (_norm(tree_sub(matvec(x), b)) <= eps**0.5 * _norm(b))
            elif solver is None and _size(b) <= DENSE_MAX:
                if (matrix is None and symmetric and lx.positive_semidefinite_tag in tags
                        and not _explicitly_sharded(b)):
                    x = _cg_then_dense(matvec, b, eps, from_solver)
                else:
                    x = _dense_solve(matvec, b, symmetric, eps, matrix)
                ok = tree_all_finite(x) & (_norm(tree_sub(matvec(x), b)) <= eps**0.5 * _norm(b))
            else:
                op = _Square(matvec, jax.eval_shape(lambda: b), tags=frozenset(tags))
                chosen = solver if solver is not None else _default_solver(tags, eps)
                if isinstance(chosen, lx.CG) and _explicitly_sharded(b):
                    # lineax's CG takes jnp.dot of the vectors, which JAX refuses on arrays
                    # sharded over Explicit mesh axes: jaxopt2's CG (same method, its dot
                    # products sum locally and all-reduce a scalar).
                    steps = chosen.max_steps if chosen.max_steps is not None else 10 * _size(b)
                    x = truncated_cg(matvec, b, rtol=chosen.rtol, atol=chosen.atol,
                                     max_iters=steps).x
                elif solver is None and isinstance(chosen, lx.CG):
                    # The default matrix-free solve: Jacobi-preconditioned CG, the diagonal
                    # from 16 coloured probes (NewtonCG's "auto" build). It removes the bad
                    # scaling of the variables, most of a GLM's ill-conditioning.
                    precond = _Square(scaling(auto_inverse_diagonal(op)),
                                      jax.eval_shape(lambda: b),
                                      tags=frozenset(tags))
                    x = lx.linear_solve(op, b, chosen, options={"preconditioner": precond},
                                        throw=False).value
                else:
                    x = lx.linear_solve(op, b, chosen, throw=False).value
                # Judged by the residual, not lineax's code: a solve that stopped at its
                # budget a little short of a tight tolerance is still a good derivative,
                # one that failed outright (indefinite or singular system) is not.
                r = tree_sub(matvec(x), b)
                ok = tree_all_finite(x) & (_norm(r) <= eps**0.5 * _norm(b))
            x = jtu.tree_map(lambda v: jnp.where(ok, v, jnp.nan), x)
            if self.throw:
                # A NaN right-hand side comes from a failure already reported upstream (a
                # failed solve's NaN derivatives): propagate it without a second error.
                upstream = ~tree_all_finite(b)
                status = RESULTS.where(ok | upstream, RESULTS.successful,
                                       RESULTS.adjoint_failed)
                hint = ("Pass ImplicitAdjoint(throw=False) to get NaN derivatives for the "
                        "failed problems instead.")
                if matrix is not None and solver is None and self.preconditioner is None:
                    hint = ("The solve used the matrix given by ImplicitAdjoint(matrix=...) or "
                            "the solver's `sqrt_hessian`, and its answer fails the true "
                            "Hessian-vector products: check that it is the exact Hessian "
                            "(BᵀB + R). " + hint)
                x = raise_if_failed(x, status, hint=hint, problem=root)
            return x

        x = jax.lax.custom_linear_solve(matvec, rhs, solve, solve, symmetric=symmetric)
        # Tie the leaves together (0 · Σx, still linear) so that none gets a symbolic-zero
        # cotangent when an outer loss uses only some of them: the transpose of
        # custom_linear_solve in jax 0.4.x cannot take one (tests/test_adjoint_partial.py).
        link = 0.0 * sum(jnp.sum(leaf) for leaf in jtu.tree_leaves(x))
        return jtu.tree_map(lambda v: v + link.astype(v.dtype), x)


DENSE_MAX = 1000  # the default adjoint solve is dense up to this many unknowns


def _explicitly_sharded(tree) -> bool:
    return any(explicit_spec(leaf) is not None for leaf in jtu.tree_leaves(tree))


def _dense_solve(matvec, b, symmetric: bool, eps: float, matrix=None):
    """Solve by forming the (small) matrix: n batched products (or `matrix`, the system
    given as an array), then a pseudo-inverse (an eigendecomposition when symmetric, else
    least squares), so a singular but consistent system (unpenalised directions, a redundant
    parametrisation) still gets its minimum-norm solution; an inconsistent one fails the
    caller's residual test."""
    flat_b, unravel = ravel(b)
    n = flat_b.size
    if matrix is None:
        columns = jax.vmap(lambda v: ravel(matvec(unravel(v)))[0], out_axes=1)
        A = columns(jnp.eye(n, dtype=flat_b.dtype))
    else:
        A = matrix.astype(flat_b.dtype)
    if symmetric:
        w, Q = jnp.linalg.eigh(0.5 * (A + A.T))
        cutoff = n * eps * jnp.max(jnp.abs(w), initial=0.0)
        inv = jnp.where(jnp.abs(w) > cutoff, 1.0 / jnp.where(w == 0, 1.0, w), 0.0)
        x = Q @ (inv * (Q.T @ flat_b))
    else:
        x = jnp.linalg.lstsq(A, flat_b)[0]
    return unravel(x)


# The default small solve tries CG first, within n // CG_SHARE iterations: about what forming
# the matrix costs (n batched products and an eigendecomposition took the time of 75 single
# products at n = 500, logistic regression 5000 × 500 on one core).
CG_SHARE = 6
CG_GIVE_UP = 8  # from this iteration on, CG stops as soon as its rate cannot meet the budget


def _cg_then_dense(matvec, b, eps: float, precond=None):
    """The default solve of a symmetric positive semi-definite system of up to `DENSE_MAX`
    unknowns: conjugate gradients within a budget of n/6 products (what forming the matrix
    costs), given up from the 8th iteration once the rate of the residual so far cannot reach
    the tolerance within it; and only where CG did not reach it, the dense pseudo-inverse
    solve of what is left (x + A⁺r, A from n batched products).

    A well-conditioned system costs a few dozen products instead of the matrix (25 against
    the time of 75 on `benchmarks/hypergradient.py`'s unscaled problems, condition 4–6), an
    ill-conditioned one about 8–12 products more than the matrix alone. (A Jacobi-preconditioned
    try, as above 1,000 unknowns, is not made: its 16 probes cost a fifth of the matrix, and
    the probed diagonal of a dense Hessian whose scales span two decades still left 57–87
    iterations, as costly as the matrix.) Under `vmap` the dense solve runs only when some
    member needs it (`_branch.every_member_cond`).

    The tolerance is eps^0.75 in every dtype (1.8e-12 in float64, 6.5e-6 in float32, tighter
    than the matrix-free solve's eps^0.6 there), so a small derivative stays as accurate as the
    dense solve made it: where CG cannot get there, the dense solve does."""
    tol = eps**0.75
    n = _size(b)
    if precond is not None:
        apply = precond
        precond = lambda v: jtu.tree_map(lambda m, u: m.astype(u.dtype), apply(v), v)  # noqa: E731
    x = truncated_cg(matvec, b, rtol=tol, max_iters=max(16, n // CG_SHARE),
                     precond=precond, give_up_after=CG_GIVE_UP).x
    # (a useless preconditioner, e.g. Newton's zero factor from no step at all, can leave x
    # non-finite: the dense solve then starts from zero)
    x = jtu.tree_map(lambda v: jnp.where(tree_all_finite(x), v, jnp.zeros_like(v)), x)
    r = tree_sub(b, matvec(x))
    # (the true residual may sit a little above the recursive one CG stopped on; a NaN one
    # fails the test)
    done = _norm(r) <= 4 * tol * _norm(b)
    # the products as an explicit function of all their traced constants (integer and
    # boolean ones too, which `jax.closure_convert` leaves closed over): the branch takes no
    # traced closures
    closed = jax.make_jaxpr(matvec)(b)
    out_tree = jtu.tree_structure(b)

    def product(v, *consts):
        jaxpr = jax.extend.core.ClosedJaxpr(closed.jaxpr, list(consts))
        return jtu.tree_unflatten(out_tree, jax.extend.core.jaxpr_as_fun(jaxpr)(
            *jtu.tree_leaves(v)))

    consts = closed.consts

    def dense(x, r, *consts):
        # A is symmetric, so its columns are formed as rows, by the transposed product: inside
        # the branch XLA:CPU ran the product's own batch 35 ms slower than outside it
        # (logistic regression 5000 × 500, 0.17 against 0.13 s for the backward pass: the
        # data's layout is fixed by its uses outside), the transposed one as fast as outside.
        rows = jax.linear_transpose(lambda v: product(v, *consts), r)
        correction = _dense_solve(lambda v: rows(v)[0], r, True, eps)
        return tree_add(x, correction)

    return every_member_cond(done, lambda x, r, *consts: x, dense, x, r, *consts)


def _default_solver(tags, eps: float):
    """CG (symmetric positive semi-definite) or GMRES, to eps^0.75 in float64 (1.8e-12) and
    eps^0.6 in lower precision (7e-5 in float32, where CG stagnates near eps·κ)."""
    tol = eps**0.75 if eps < 1e-10 else eps**0.6
    if lx.symmetric_tag in tags and lx.positive_semidefinite_tag in tags:
        return lx.CG(rtol=tol, atol=tol)
    return lx.GMRES(rtol=tol, atol=tol)


class UnrolledAdjoint(AbstractAdjoint):
    """Differentiate through the iterations (automatic differentiation of the solver loop),
    for comparison with `ImplicitAdjoint` and for when only the iterations are trusted.

    Every loop of the solver runs as a bounded loop with `checkpoints` checkpoints (binomial
    checkpointing, as `equinox.internal.while_loop`), so reverse mode stores O(checkpoints)
    states instead of one per iteration, at the cost of recomputation. The derivative is that
    of the iterations actually taken: it approaches the implicit one only as the solve
    converges, and it includes the derivative of line-search decisions (zero almost
    everywhere). `checkpoints=None` picks about √max_steps. `differentiate_unconverged`: as
    for `ImplicitAdjoint` (by default a failed solve has NaN derivatives, or raises).
    """

    checkpoints: int | None = None
    differentiate_unconverged: bool = False

    def __check_init__(self):
        if self.checkpoints is not None and not (isinstance(self.checkpoints, int)
                                                 and self.checkpoints >= 1):
            raise ValueError(f"`checkpoints` must be a positive int or None; "
                             f"got {self.checkpoints!r}.")

    def apply(self, primal_fn, optimality_fn, params0, inputs, tags):
        del optimality_fn, tags
        with unrolled_loops(self.checkpoints):
            root, residual = primal_fn(params0, inputs)
        return root, jax.lax.stop_gradient(residual)


def _is_differentiable(x) -> bool:
    """Floating arrays, and JAX's typed scalars (float subclasses carrying a dtype: the
    values `fun` closes over reach the derivative rules as those, and must keep their
    tangents). A plain Python float or complex in `args` is a constant: whatever `jax.grad`
    or `jax.jvp` differentiates reaches the front door traced, never as a plain Python
    number (counting one as differentiable made `jacfwd` retrace the closure-converted
    objective with an array where it was built with a float, and fail)."""
    if type(x) in (float, complex):
        return False
    if isinstance(x, (float, complex)):
        return True
    return eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)


def _fill_zeros(diff, tangent):
    """Materialise symbolic-zero (`None`) tangents as zeros matching `diff`."""
    if tangent is None:
        return jtu.tree_map(jnp.zeros_like, diff)
    return jtu.tree_map(
        lambda x, t: x if x is None else (jnp.zeros_like(x) if t is None else t),
        diff, tangent, is_leaf=lambda v: v is None)


@eqx.filter_custom_jvp
def _implicit(params0, inputs, *, primal_fn, optimality_fn, tags, adjoint):
    return primal_fn(params0, inputs)


@_implicit.def_jvp
def _implicit_jvp(primals, tangents, *, primal_fn, optimality_fn, tags, adjoint):
    params0, inputs = primals
    _, t_inputs = tangents
    root, residual = _implicit(params0, inputs, primal_fn=primal_fn,
                               optimality_fn=optimality_fn, tags=tags, adjoint=adjoint)
    from_solver = getattr(adjoint, "solver_preconditioner", None)
    precond = None if from_solver is None else from_solver(jax.lax.stop_gradient(residual))
    if getattr(adjoint, "refine", False):
        root = refine_root(optimality_fn, root, inputs, tags, adjoint, precond)
    t_residual = jtu.tree_map(lambda _: None, residual)
    t_root = implicit_tangent(optimality_fn, root, inputs, t_inputs, tags, adjoint, precond)
    return (root, residual), (t_root, t_residual)


def refine_root(optimality_fn, root, inputs, tags, adjoint: ImplicitAdjoint, precond=None):
    """One Newton step x − (∂ₓF)⁻¹F(x) on primal values (the adjoint's linear solver, never
    raising), kept only where it is finite and lowers ‖F‖: at a regular root it squares the
    error; at a singular or failed one it is dropped and x is returned unchanged."""
    x = jax.lax.stop_gradient(root)
    F, matvec = jax.linearize(lambda y: optimality_fn(y, inputs), x)
    F = jtu.tree_map(lambda f, v: f.astype(v.dtype), F, x)
    quiet = eqx.tree_at(lambda a: a.throw, adjoint, False)
    delta = quiet.solve(matvec, tree_neg(F), x, tags, adjoint.dense_matrix(x, inputs), precond)
    moved = tree_add(x, delta)
    F_moved = optimality_fn(moved, inputs)
    better = tree_all_finite(moved) & (_norm(F_moved) < _norm(F))
    step = jtu.tree_map(lambda d: jnp.where(better, d, jnp.zeros_like(d)), delta)
    # the step is a constant: differentiating this rule again still sees root's dependence
    return tree_add(root, jax.lax.stop_gradient(step))


def implicit_tangent(optimality_fn, root, inputs, t_inputs, tags, adjoint: ImplicitAdjoint,
                     precond=None):
    """−(∂ₓF)⁻¹ ∂_θF·θ̇ at x = root: the tangent of the root along the input tangent θ̇."""
    _check_square(optimality_fn, root, inputs)
    diff_inputs, static_inputs = eqx.partition(inputs, _is_differentiable)
    t_diff = _fill_zeros(diff_inputs, t_inputs)
    # No stop_gradient on root: differentiating this rule again (second derivatives) must see
    # root's own dependence on the inputs, which `_implicit` provides by the same rule.

    def F_of_inputs(diff):
        return optimality_fn(root, eqx.combine(diff, static_inputs))

    _, rhs = jax.jvp(F_of_inputs, (diff_inputs,), (t_diff,))
    F, matvec = jax.linearize(lambda x: optimality_fn(x, inputs), root)
    rhs = jtu.tree_map(lambda r, x: r.astype(x.dtype), rhs, root)
    # Tie every leaf of the right-hand side to the tangent (0 · Σ rhs, still linear): leaves
    # that do not depend on it (e.g. the stationarity rows of KKT conditions when only the
    # constraints move) would otherwise be constants, which custom_linear_solve cannot
    # transpose.
    link = 0.0 * sum(jnp.sum(leaf) for leaf in jtu.tree_leaves(rhs))
    rhs = jtu.tree_map(lambda r: r + link.astype(r.dtype), rhs)
    matrix = adjoint.dense_matrix(root, inputs) if isinstance(adjoint, ImplicitAdjoint) else None
    tangent = (adjoint.solve(matvec, tree_neg(rhs), root, tags, matrix, precond)
               if isinstance(adjoint, ImplicitAdjoint)
               else adjoint.solve(matvec, tree_neg(rhs), root, tags, matrix))
    stable = _jacobian_stable(optimality_fn, root, inputs, F, matvec)
    scale = jnp.where(stable, 1.0, jnp.nan).astype(result_dtype(root))
    if getattr(adjoint, "throw", False):
        status = RESULTS.where(stable, RESULTS.successful, RESULTS.adjoint_failed)
        scale = raise_if_failed(scale, status, problem=root, hint=(
            "The Jacobian of the optimality condition changes by more than a quarter between the "
            "point returned and the solution a Newton step from it predicts: the solution is "
            "(nearly) singular and its derivative unbounded or not resolved. Pass "
            "ImplicitAdjoint(throw=False) to get NaN derivatives instead."))
    return jtu.tree_map(lambda t: t * scale.astype(t.dtype), tangent)


def _jacobian_stable(optimality_fn, root, inputs, F, matvec):
    """Whether ∂ₓF is (numerically) constant over the remaining error of `root`, so that the
    implicit function theorem's derivative is that of the solution. The error is estimated by
    the minimal-residual step along F, δ = F·⟨JF, F⟩/‖JF‖² (the Newton step when n = 1; no
    linear solve), and the test is ‖J(x − δ)δ − J(x)δ‖ ≤ ¼‖J(x)δ‖. At a regular, converged
    root δ is round-off and J barely moves; at a root where J is singular (y² − a at a = 0,
    where Newton converges linearly and stops at y ≈ √eps) δ ≈ y/2 and J = 2y halves: the
    derivative 1/(2y) there is an artefact of where the solve stopped. Costs two Jacobian-
    vector products, on primal values only. A cheap, one-direction estimate: it does not see
    a singular direction that F has no component along."""
    F = jax.lax.stop_gradient(jtu.tree_map(lambda f, x: f.astype(x.dtype), F, root))
    x = jax.lax.stop_gradient(root)
    JF = matvec(F)
    denom = tree_dot(JF, JF)
    coef = jnp.where(denom > 0, tree_dot(JF, F) / jnp.where(denom > 0, denom, 1), 0.0)
    delta = jtu.tree_map(lambda f: (coef * f).astype(f.dtype), F)
    J_delta = matvec(delta)
    _, J_moved_delta = jax.jvp(lambda y: optimality_fn(y, inputs), (tree_sub(x, delta),),
                               (delta,))
    change = _norm(tree_sub(J_moved_delta, J_delta))
    return jnp.isfinite(change) & (change <= 0.25 * _norm(J_delta))


def _check_square(optimality_fn, root, inputs):
    """The implicit function theorem needs F(x, θ) with x's structure, shapes and dtypes."""
    out = jax.eval_shape(lambda x: optimality_fn(x, inputs), root)
    spec = lambda t: jtu.tree_map(lambda x: (x.shape, jnp.dtype(x.dtype).name), t)  # noqa: E731
    if jtu.tree_structure(out) != jtu.tree_structure(root) or spec(out) != spec(root):
        raise ValueError(
            "The optimality condition must return a pytree with the structure, shapes and dtypes "
            f"of the solution (a square system): got {spec(out)} for a solution with "
            f"{spec(root)}. For custom_root, check that optimality_fn(root, *args) returns "
            "one residual per unknown (e.g. the gradient, or g(x) − x for a fixed point).")


@eqx.filter_custom_jvp
def attach_tangent(out, root, inputs, *, fn):
    """Return `out == fn(root, inputs)` (already computed) with the derivative of
    `fn(root, inputs)`, so values at the solution are differentiable at no primal cost."""
    return out


@attach_tangent.def_jvp
def _attach_tangent_jvp(primals, tangents, *, fn):
    out, root, inputs = primals
    _, t_root, t_inputs = tangents
    diff, static = eqx.partition((root, inputs), _is_differentiable)
    t_diff = _fill_zeros(diff, (t_root, t_inputs))
    _, t_out = jax.jvp(lambda d: fn(*eqx.combine(d, static)), (diff,), (t_diff,))
    return out, t_out
