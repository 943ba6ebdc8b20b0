"""Matrix-free curvature operators as lineax linear operators.

Every operator acts on pytrees shaped like `params` (its `in_structure()` is the structure of
`params`) and is built from `jax.linearize` / `jax.linear_transpose`: the function is linearised
once when the operator is built, so each product costs one forward (and one transposed) pass
through the stored linearisation, never a re-trace of the nonlinear function. The data in
`args` is closed over, never flattened or copied, so it may be sharded across devices.
Nothing here jits itself; build the operators inside your own `jit` / `vmap` / `grad`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from .distributed import like, on_mesh

_SYM_PSD = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


def _structure(tree):
    return jax.eval_shape(lambda: tree)


class _Symmetric(lx.FunctionLinearOperator):
    """A symmetric `lx.FunctionLinearOperator` whose output structure is its input structure.
    lineax infers the output structure by an abstract evaluation that drops shardings
    (equinox's cached eval_shape), so over data sharded on Explicit mesh axes the inferred
    types differ from the input's and lineax refuses the symmetric tag."""

    def out_structure(self):
        return self.in_structure()

    def mv(self, vector):
        # A scalar made by jnp.ones(()) under the mesh is typed without it: give the vector
        # the structure's shardings, which the closure-converted product checks.
        return super().mv(like(vector, self.in_structure()))


def _transpose(linear_fn, in_structure) -> Callable:
    """The adjoint of a linear function, as a function of one cotangent pytree."""
    transposed = jax.linear_transpose(linear_fn, in_structure)
    return lambda cotangent: transposed(cotangent)[0]


def hessian(fun: Callable, params: Any, args: Any = None) -> lx.FunctionLinearOperator:
    """The Hessian ∇²f(params) of `fun(params, args) -> scalar`, matrix-free.

    Products are forward-over-reverse, `H v = d/dt ∇f(params + t v)|₀` (`jvp` of `grad`). The
    gradient is linearised once when the operator is built, so each product costs about one
    gradient. Tagged symmetric only: the Hessian of a nonconvex function is indefinite. If
    you know `fun` is convex, add the tag yourself to solve with `lx.CG`:
    `lx.TaggedLinearOperator(H, lx.positive_semidefinite_tag)`.

    Use it for Newton-type steps on small-to-medium problems or when the exact curvature
    matters; prefer `gauss_newton` when f = loss(model(params)) and you want a PSD operator.

    ```python
    import jax.numpy as jnp, jaxopt2
    H = jaxopt2.curvature.hessian(lambda p, a: jnp.sum(p ** 4), jnp.ones(3))
    H.mv(jnp.ones(3))  # 12 * ones
    ```
    """
    params = jtu.tree_map(on_mesh, params)
    grad_fn = jax.grad(lambda p: fun(p, args))
    _, hvp = jax.linearize(grad_fn, params)
    return _Symmetric(lambda v: like(hvp(v), params), _structure(params),
                      tags=lx.symmetric_tag)


def gauss_newton(
    model_fn: Callable, loss_fn: Callable, params: Any, args: Any = None
) -> lx.FunctionLinearOperator:
    """The generalized Gauss-Newton (GGN) matrix of f(p) = L(m(p)), matrix-free:

        G = Jᵀ ∇²L(m(p)) J,    J = ∂m/∂p,

    with `m(p) = model_fn(p, args)` (outputs: any pytree) and `L(o) = loss_fn(o, args)` (a
    scalar). It drops the term Σₖ ∂L/∂oₖ ∇²mₖ from the Hessian, so it equals the Hessian when
    the model is linear in `params`, and is positive semidefinite whenever `loss_fn` is convex
    in the outputs (squared error, cross-entropy, any NLL of an exponential family in its
    natural parameters). That is why it is the curvature of choice for Newton / Levenberg-
    Marquardt / natural-gradient steps on nonconvex models: CG on it never meets negative
    curvature. The operator is tagged symmetric and PSD; the PSD tag is only true for convex
    `loss_fn`.

    The model is linearised once (`J v` by the stored `jax.linearize`, `Jᵀ u` by its
    `jax.linear_transpose`) and the loss Hessian in output space by forward-over-reverse at
    the outputs, also linearised once. A product costs about one forward plus one backward
    pass through the model (≈ 1.5 gradients) and never forms J.

    Reference: Schraudolph, "Fast curvature matrix-vector products for second-order gradient
    descent", Neural Computation 2002; Martens, "New insights and perspectives on the natural
    gradient method", JMLR 2020.

    ```python
    import jax, jax.numpy as jnp, jaxopt2
    X, y = jnp.ones((5, 3)), jnp.zeros(5)
    model = lambda p, a: jnp.tanh(a[0] @ p)
    loss = lambda out, a: 0.5 * jnp.sum((out - a[1]) ** 2)
    G = jaxopt2.curvature.gauss_newton(model, loss, jnp.zeros(3), (X, y))
    G.mv(jnp.ones(3))  # Xᵀ X 1 = 5 * 3 * ones, since tanh'(0) = 1
    ```
    """
    params = jtu.tree_map(on_mesh, params)
    outputs, jvp_fn = jax.linearize(lambda p: model_fn(p, args), params)
    vjp_fn = _transpose(jvp_fn, _structure(params))
    _, loss_hvp = jax.linearize(jax.grad(lambda o: loss_fn(o, args)), outputs)

    def mv(vector):
        return like(vjp_fn(loss_hvp(jvp_fn(vector))), params)

    return _Symmetric(mv, _structure(params), tags=_SYM_PSD)


def fisher(
    model_fn: Callable, loss_fn: Callable, params: Any, args: Any = None
) -> lx.FunctionLinearOperator:
    """The Fisher information of the predictive distribution, F = E_{y~p(y|m(p))}[∇ log p ∇
    log pᵀ], for losses that are negative log-likelihoods of an exponential family in its
    natural parameters: squared error (Gaussian with fixed variance), logistic loss on logits
    (Bernoulli), softmax cross-entropy on logits (categorical).

    For those losses the Fisher in output space equals the loss Hessian ∇²L (which does not
    depend on the labels), so F = Jᵀ ∇²L J is exactly the generalized Gauss-Newton matrix,
    and this function returns `gauss_newton(model_fn, loss_fn, params, args)`. For any other
    loss (e.g. outputs that are not natural parameters, or a non-likelihood loss) it is the
    GGN, not the Fisher. Symmetric and PSD. Use it for natural-gradient steps; for the
    "empirical Fisher" (outer products of observed per-example gradients) see
    `empirical_fisher`.

    Reference: Martens, "New insights and perspectives on the natural gradient method", JMLR
    2020, §9.2.

    ```python
    import jax, jax.numpy as jnp, jaxopt2
    X, y = jnp.ones((4, 2)), jnp.array([0.0, 1.0, 1.0, 0.0])
    model = lambda p, a: a[0] @ p  # logits
    loss = lambda z, a: jnp.sum(jax.nn.softplus(z) - a[1] * z)
    F = jaxopt2.curvature.fisher(model, loss, jnp.zeros(2), (X, y))
    F.mv(jnp.ones(2))  # Xᵀ diag(σ(z)(1-σ(z))) X 1 = 0.25 * 4 * 2 * ones
    ```
    """
    return gauss_newton(model_fn, loss_fn, params, args)


def empirical_fisher(
    per_example_loss: Callable, params: Any, args: Any = None
) -> lx.FunctionLinearOperator:
    """The empirical Fisher EF = (1/n) Σᵢ gᵢ gᵢᵀ, gᵢ = ∇ℓᵢ(params), matrix-free, where
    `per_example_loss(params, args)` returns the n per-example losses ℓ₁…ℓₙ (a vector, or
    any pytree whose entries are the examples).

    With J the n × dim Jacobian of the loss vector (row i is gᵢᵀ), EF = (1/n) Jᵀ J, applied as
    `(1/n) Jᵀ (J v)`: `J v` by the stored `jax.linearize`, `Jᵀ u` by its transpose. This is
    the per-example-gradient outer product without ever materialising per-example gradients
    or vmapping over the data, so sharded data stays sharded. Symmetric and PSD.

    It is cheap and always PSD, but unlike the Fisher it is not a curvature estimate away
    from a well-fitted optimum (Kunstner, Balles and Hennig, "Limitations of the empirical
    Fisher approximation for natural gradient descent", NeurIPS 2019). Use it for
    preconditioning, M-FAC-style methods, or diagnostics; prefer `gauss_newton` / `fisher`
    as a Newton curvature.

    ```python
    import jax.numpy as jnp, jaxopt2
    X = jnp.eye(2)
    per_example = lambda p, a: 0.5 * (a @ p) ** 2
    EF = jaxopt2.curvature.empirical_fisher(per_example, jnp.ones(2), X)
    EF.mv(jnp.ones(2))  # g₁ = (1, 0), g₂ = (0, 1): EF = I / 2, so [0.5, 0.5]
    ```
    """
    losses, jvp_fn = jax.linearize(lambda p: per_example_loss(p, args), params)
    vjp_fn = _transpose(jvp_fn, _structure(params))
    n = sum(leaf.size for leaf in jtu.tree_leaves(losses))

    def mv(vector):
        per_example = jtu.tree_map(lambda u: u / jnp.asarray(n, u.dtype), jvp_fn(vector))
        return vjp_fn(per_example)

    return lx.FunctionLinearOperator(mv, _structure(params), tags=_SYM_PSD)


def jacobian(fn: Callable, params: Any, args: Any = None) -> lx.FunctionLinearOperator:
    """The Jacobian J = ∂r/∂p of a residual function `fn(params, args) -> residuals` (any
    pytree), as a matrix-free operator from params-structure to residual-structure.

    `J.mv(v)` is a forward-mode product (the function is linearised once when the operator is
    built); `J.transpose().mv(u)` is the reverse-mode product Jᵀu, obtained by
    `jax.linear_transpose` of the stored linearisation. Not square in general, so untagged.
    Use it for Gauss-Newton / Levenberg-Marquardt on least squares (e.g. with `lx.LSMR`, or
    `lx.NormalCG` on JᵀJ) and Newton-Krylov root finding (`lx.GMRES` on a square J).

    ```python
    import jax.numpy as jnp, jaxopt2
    residual = lambda p, a: {"r": a @ p["w"] - 1.0, "reg": p["w"]}
    J = jaxopt2.curvature.jacobian(residual, {"w": jnp.zeros(2)}, jnp.ones((3, 2)))
    J.mv({"w": jnp.ones(2)})                                   # {"r": [2, 2, 2], "reg": [1, 1]}
    J.transpose().mv({"r": jnp.ones(3), "reg": jnp.zeros(2)})  # {"w": [3, 3]}
    ```
    """
    _, jvp_fn = jax.linearize(lambda p: fn(p, args), params)
    return lx.FunctionLinearOperator(jvp_fn, _structure(params))
