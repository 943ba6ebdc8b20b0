"""How solutions are differentiated.

`ImplicitAdjoint` applies the implicit function theorem: if the solution x*(θ) satisfies the
optimality condition F(x*, θ) = 0 (for minimisation F = ∇ₓf), then

    ∂x*/∂θ · θ̇ = −(∂ₓF)⁻¹ (∂_θF · θ̇).

We define the forward-mode rule only; reverse mode follows because the rule is linear in the
tangents and `lineax.linear_solve` is transposable (a solve with (∂ₓF)ᵀ). The iterations are never
differentiated. θ here is `(fn, args)`: `fn` is closure-converted, so arrays the objective closes
over are differentiated like `args`.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from ._tree import result_dtype, tree_neg


class AbstractAdjoint(eqx.Module):
    @abc.abstractmethod
    def apply(self, primal_fn, optimality_fn, params0, inputs, tags):
        """Return `primal_fn(params0, inputs)`, a pair `(root, residual)`, differentiable in
        `inputs` through `root`; `residual` carries no derivative."""


class ImplicitAdjoint(AbstractAdjoint):
    """Differentiate the solution by the implicit function theorem.

    `linear_solver`: the lineax solver for the adjoint system. The default is matrix-free
    conjugate gradients for symmetric systems (minimisation) and GMRES otherwise, with a
    tolerance set by the dtype.
    """

    linear_solver: lx.AbstractLinearSolver | None = None

    def apply(self, primal_fn, optimality_fn, params0, inputs, tags):
        return _implicit(params0, inputs, primal_fn=primal_fn, optimality_fn=optimality_fn,
                         tags=frozenset(tags), linear_solver=self.linear_solver)


def _default_solver(tags, root):
    tol = float(jnp.finfo(result_dtype(root)).eps) ** 0.6
    if lx.symmetric_tag in tags and lx.positive_semidefinite_tag in tags:
        return lx.CG(rtol=tol, atol=tol)
    return lx.GMRES(rtol=tol, atol=tol)


def _is_differentiable(x) -> bool:
    """Floating arrays and Python floats (a Python float in `args` can carry a tangent)."""
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
def _implicit(params0, inputs, *, primal_fn, optimality_fn, tags, linear_solver):
    return primal_fn(params0, inputs)


@_implicit.def_jvp
def _implicit_jvp(primals, tangents, *, primal_fn, optimality_fn, tags, linear_solver):
    params0, inputs = primals
    _, t_inputs = tangents
    root, residual = _implicit(params0, inputs, primal_fn=primal_fn,
                               optimality_fn=optimality_fn, tags=tags,
                               linear_solver=linear_solver)
    t_residual = jtu.tree_map(lambda _: None, residual)
    diff_inputs, static_inputs = eqx.partition(inputs, _is_differentiable)
    t_diff = _fill_zeros(diff_inputs, t_inputs)
    root = jax.lax.stop_gradient(root)

    def F_of_inputs(diff):
        return optimality_fn(root, eqx.combine(diff, static_inputs))

    _, rhs = jax.jvp(F_of_inputs, (diff_inputs,), (t_diff,))
    operator = lx.linearise(lx.JacobianLinearOperator(
        lambda x, _: optimality_fn(x, inputs), root, tags=tags))
    solver = linear_solver if linear_solver is not None else _default_solver(tags, root)
    t_root = lx.linear_solve(operator, tree_neg(rhs), solver).value
    return (root, residual), (t_root, t_residual)


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
