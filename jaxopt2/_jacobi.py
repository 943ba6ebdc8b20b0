"""The Jacobi (diagonal) preconditioner for CG on a curvature operator: `NewtonCG`'s steps and
`ImplicitAdjoint`'s matrix-free solve, built from the diagonal of the operator (exact where n
is small, Hutchinson's estimate otherwise)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from ._estimators import diagonal as hutchinson_diagonal
from ._prng import as_key, check_seed, module_key
from ._tree import result_dtype


def _size(structure) -> int:
    return sum(leaf.size for leaf in jtu.tree_leaves(structure))


def exact_diagonal(op: lx.AbstractLinearOperator):
    """diag(A) from n products with the unit vectors (vmapped), as a pytree like
    `op.in_structure()`: what Hutchinson's estimate would cost with n probes, exactly."""
    zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), op.in_structure())
    flat, unravel = jax.flatten_util.ravel_pytree(zeros)
    columns = jax.vmap(lambda e: jax.flatten_util.ravel_pytree(op.mv(unravel(e)))[0])(
        jnp.eye(flat.size, dtype=flat.dtype))
    return unravel(jnp.diagonal(columns).astype(flat.dtype))


AUTO_PROBES = 16  # the probes of the automatic builds (NewtonCG's "auto", the default adjoint)


def fixed_signs(index):
    """A fixed ±1 sequence over integer indices (signs of the cosines of a golden-angle
    sequence): probe signs with no PRNG in the program."""
    return jnp.where(jnp.cos(1.0 + 2.399963 * index) >= 0, 1.0, -1.0)


def auto_inverse_diagonal(op: lx.AbstractLinearOperator):
    """M⁻¹ of the automatic Jacobi builds: the probed diagonal (`AUTO_PROBES` products, two
    at a time), floored as `JacobiPreconditioner`'s default."""
    return inverse_diagonal(probed_diagonal(op, AUTO_PROBES), JacobiPreconditioner.floor)


def probed_diagonal(op: lx.AbstractLinearOperator, num_probes: int, batch_size: int = 2):
    """diag(op) from min(n, `num_probes`) = k products with signed, coloured probes, as a
    pytree like `op.in_structure()`: the unknowns, numbered across the leaves, are coloured
    by their number modulo k, and probe c is a fixed ±1 sign on the unknowns of colour c, so
    dᵢ = sᵢ(A z_c)ᵢ = Aᵢᵢ + Σ_{j of colour c, j ≠ i} sᵢsⱼAᵢⱼ: Hutchinson's estimate with the
    cross terms limited to one colour class (as accurate as k Rademacher probes on an
    unstructured A, exact where A couples only unknowns less than k apart, and exact outright
    when n ≤ k; the probing of Curtis, Powell & Reid 1974). No random numbers: the probes are
    a few integer and trigonometric operations on an index, which keeps the program small.
    The products run `batch_size` at a time (vmapped within a batch)."""
    structure = op.in_structure()
    k = max(1, min(_size(structure), num_probes))
    colours = jnp.arange(k)
    probes, offset = [], 0
    for s in jtu.tree_leaves(structure):
        index = offset + jnp.arange(s.size)
        offset += s.size
        z = jnp.where(index[None, :] % k == colours[:, None], fixed_signs(index), 0.0)
        probes.append(z.reshape((k,) + tuple(s.shape)).astype(s.dtype))
    z = jtu.tree_unflatten(jtu.tree_structure(structure), probes)
    # `batch_size` products at a time: a batch of k products holds k times the temporaries of
    # one (the per-example values of a data-bound objective, a network's activations), so
    # the default build stays within a few products' memory
    hz = jax.lax.map(op.mv, z, batch_size=min(k, batch_size))
    return jtu.tree_map(lambda a, b: jnp.sum(a * b, axis=0).astype(a.dtype), z, hz)


class JacobiPreconditioner(eqx.Module):
    """Jacobi preconditioning, M = diag(A), for `jaxopt2.NewtonCG(preconditioner=...)` and
    `jaxopt2.ImplicitAdjoint(preconditioner=...)`.

    CG on A p = b converges at a rate set by the condition number of A; with M = diag(A) it
    runs on M^{-1/2} A M^{-1/2}, whose diagonal is all ones. That removes the bad scaling of
    the variables (features on different scales, parameters in different units), which is
    most of the ill-conditioning of GLMs and ridge-like problems; it does nothing for
    correlations between variables (use `jaxopt2.sketch.NystromPreconditioner` there).

    The diagonal is exact, from n products with the unit vectors, when n ≤ `num_probes`;
    otherwise Hutchinson's estimate (1/N) Σₖ zₖ ⊙ A zₖ with N = `num_probes` Rademacher
    probes (`jaxopt2.curvature.diagonal`; Bekas, Kokiopoulou & Saad, Appl. Numer. Math. 57
    (2007)). Either way the products are one vmapped batch, so on data-bound problems they
    cost about one pass over the data. M must be positive definite for CG, so
    M = max(|dᵢ|, `floor`·maxⱼ|dⱼ|) (an estimate can be ≤ 0, an indefinite Hessian has
    negative diagonal entries); M = I where the diagonal is all zero or not finite.

    Built once per Newton step (or adjoint solve); its products are counted in
    `Solution.stats["num_hvp"]` by NewtonCG (`num_products`). The probes come from `key`,
    else `jax.random.key(seed)`, the same at every step.

    ```python
    import jax.numpy as jnp, jaxopt2
    scales = jnp.logspace(0, 3, 50)
    fun = lambda w, s: 0.5 * jnp.sum((s * w) ** 2) - jnp.sum(w)
    pre = jaxopt2.curvature.JacobiPreconditioner()
    sol = jaxopt2.minimize(fun, jnp.zeros(50), scales,
                           solver=jaxopt2.NewtonCG(preconditioner=pre))
    # float32: 2 steps, 122 products (100 building M, 20 the final curvature check); plain
    # NewtonCG (curvatures 1 … 1e6) ends max_steps_reached after 256 steps, 23,971 products
    ```
    """

    num_probes: int = eqx.field(static=True, default=64)
    floor: float = eqx.field(static=True, default=1e-6)
    seed: int = eqx.field(static=True, default=0)
    key: jax.Array | None = eqx.field(
        default=None, converter=lambda k: as_key(k, "JacobiPreconditioner", batched=True))

    def __check_init__(self):
        if (isinstance(self.num_probes, bool) or not isinstance(self.num_probes, int)
                or self.num_probes < 1):
            raise ValueError(f"`num_probes` must be a positive int; got {self.num_probes!r}.")
        if not 0 < self.floor < 1:
            raise ValueError(f"`floor` must be in (0, 1); got {self.floor!r}.")
        check_seed(self.seed, "JacobiPreconditioner", self.key)

    def num_products(self, n: int) -> int:
        """Products with the operator one build costs, for an operator on n unknowns."""
        return n if n <= self.num_probes else self.num_probes

    def diagonal(self, op: lx.AbstractLinearOperator):
        """diag(op) as a pytree like `op.in_structure()`: exact or estimated (class doc)."""
        if _size(op.in_structure()) <= self.num_probes:
            return exact_diagonal(op)
        key = module_key(self.key, self.seed, "JacobiPreconditioner")
        return hutchinson_diagonal(op, key, self.num_probes)

    def __call__(self, fun, params, args, op) -> Callable:
        del fun, params, args  # only the operator: the same object serves ImplicitAdjoint
        return scaling(inverse_diagonal(self.diagonal(op), self.floor))


def inverse_diagonal(diag, floor: float):
    """M⁻¹ for M = max(|diag|, floor·max|diag|), as a pytree like `diag` (all ones, the
    identity, where that is not a positive finite matrix)."""
    dtype = result_dtype(diag)
    top = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(dtype) for x in jtu.tree_leaves(diag)]))
    ok = jnp.isfinite(top) & (top > 0)
    return jtu.tree_map(
        lambda d: jnp.where(ok, 1 / jnp.maximum(jnp.abs(d), (floor * top).astype(d.dtype)),
                            1).astype(d.dtype), diag)


def scaling(inverse) -> Callable:
    """r ↦ inverse ⊙ r, leafwise in each leaf's dtype."""
    return lambda r: jtu.tree_map(lambda m, v: (m * v).astype(v.dtype), inverse, r)
