"""Randomized subspace Newton: a Newton step restricted to a random low-dimensional subspace."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._base import Counts, Iterate
from .._prng import as_key
from .._random_newton import AbstractRandomNewton, RandomNewtonState, damped_newton_step
from .._tree import ravel

SUBSPACES = ("coordinate", "gaussian")


class SubspaceNewton(AbstractRandomNewton):
    """Randomized subspace Newton: each step is a Newton step inside a random k-dimensional
    subspace, for problems too large for a Hessian or even many Hessian-vector products.

    With Sₖ a random d × k matrix (`subspace_dim` = k ≪ d), the step solves the k × k system

        (Sₖᵀ ∇²f(xₖ) Sₖ) zₖ = −Sₖᵀ ∇f(xₖ),    pₖ = Sₖ zₖ,

    i.e. it minimises the quadratic model of f over xₖ + range(Sₖ), then takes
    xₖ₊₁ = xₖ + tₖpₖ with Armijo backtracking from tₖ = 1. The projected Hessian costs k
    Hessian-vector products (one vmapped batch through a single linearisation of ∇f) and a
    k × k Cholesky factorisation (damped when the projection is not positive definite, as in
    `Newton`), so a step costs about k + 2 gradients whatever d is. pₖ is a descent direction
    whenever Sₖᵀ∇f ≠ 0. For convex f with relatively smooth and strongly convex Hessians,
    the method converges linearly in expectation at a rate governed by k/d and the relative
    condition number, not the ordinary one (Gower et al., 2019): it is Newton's method's
    affine invariance at the price of a k-dimensional solve.

    `subspace`: `"coordinate"` (default; k distinct coordinates of the flattened parameters,
    uniformly at random: randomized block-coordinate Newton, and the projected Hessian is a
    principal k × k submatrix) or `"gaussian"` (an orthonormalised Gaussian d × k matrix).
    `key`: the PRNG key (a `jax.random.key`, or a legacy `jax.random.PRNGKey`), split once per
    step and kept in the state, so solves are deterministic; `seed` (an int, default 0) is the
    shortcut used when no key is given. The key is an array field, not static: to give a
    batch of problems solved under `jax.vmap` independent subspaces, split a key and build the
    solver inside the vmapped function (a fixed `seed` would give every member the same
    subspaces): `jax.vmap(lambda k: jaxopt2.minimize(fun, x0, solver=SubspaceNewton(key=k))
    .params)(jax.random.split(jax.random.key(0), n))`.

    Counts per step: k `num_hvp` and one `num_grad` (the unit step is tried with value and
    gradient together), plus `num_fun` and one more `num_grad` when it must backtrack.

    Reference: R. M. Gower, D. Kovalev, F. Lieder and P. Richtárik, "RSN: Randomized Subspace
    Newton", NeurIPS 2019; for the coordinate case, Qu, Richtárik, Takáč and Fercoq, "SDNA:
    stochastic dual Newton ascent for empirical risk minimization", ICML 2016.

    ```python
    import jax.numpy as jnp, jaxopt2
    fun = lambda x, a: jnp.sum(jnp.logaddexp(0.0, x)) + 0.5 * jnp.sum((x[1:] - x[:-1]) ** 2)
    sol = jaxopt2.minimize(fun, jnp.ones(1000),
                           solver=jaxopt2.SubspaceNewton(subspace_dim=50), max_steps=500)
    ```
    """

    subspace_dim: int = eqx.field(static=True, default=20)
    subspace: str = eqx.field(static=True, default="coordinate")
    # Declared here rather than in the base so that a bad key's error names this solver.
    key: jax.Array | None = eqx.field(default=None, kw_only=True,
                                      converter=lambda k: as_key(k, "SubspaceNewton", batched=True))

    def __check_init__(self):
        if self.subspace not in SUBSPACES:
            raise ValueError(f"`subspace` must be one of {SUBSPACES}; got {self.subspace!r}.")
        if self.subspace_dim < 1:
            raise ValueError(f"`subspace_dim` must be a positive int; got {self.subspace_dim}.")

    def step(self, fn, iterate: Iterate, args, state: RandomNewtonState):
        key, sub = jax.random.split(state.key)
        x, unravel = ravel(iterate.params)
        g, _ = ravel(iterate.grad)
        d = x.size
        k = min(self.subspace_dim, d)
        _, hvp = jax.linearize(jax.grad(lambda v: fn(unravel(v), args)[0]), x)
        if self.subspace == "coordinate":
            idx = jax.random.choice(sub, d, (k,), replace=False)
            basis = jnp.zeros((d, k), x.dtype).at[idx, jnp.arange(k)].set(1)
        else:
            basis, _ = jnp.linalg.qr(jax.random.normal(sub, (d, k), x.dtype))
        h_basis = jax.vmap(hvp, in_axes=1, out_axes=1)(basis)  # H S, d × k
        projected = (basis.T @ h_basis).astype(x.dtype)
        return damped_newton_step(self, fn, iterate, args, key, projected, basis.T @ g,
                                  lambda z: unravel(basis @ z), Counts.of(hvp=k))
