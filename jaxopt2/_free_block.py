"""Preconditioners for CG on the free variables of a bound-constrained Newton step
(`ProjectedNewtonCG`), from batched Hessian-vector products.

A product of the Hessian with k vectors at once (a `vmap` of the product, a matrix–matrix
product on data-bound problems) costs far less than k products in sequence: on a dense
5,000 × 1,000 least-squares problem, 128 vectors at once cost about as much as 21 one at a
time. Both preconditioners below are built from one such batch.

- `coloured_diagonal`: diag(H)_F from k probes. The free variables are coloured by their rank
  in F modulo k, and probe c is a random sign on the variables of colour c, so
  dᵢ = sᵢ(H z_c)ᵢ = Hᵢᵢ + Σ_{j of colour c, j ≠ i} sᵢsⱼHᵢⱼ. That is Hutchinson's estimate with
  the cross terms limited to one colour class: as accurate as k Rademacher probes for an
  unstructured H, and exact up to far-apart terms when H couples neighbouring indices
  (banded-like Hessians; the probing idea of Curtis, Powell & Reid 1974). With k ≥ |F| it is
  exact.
- `form_block`: the block H_FF itself, from the unit vectors of F (|F| ≤ the static size, the
  rest padded), or from the user's `hessian_block(params, args, index)` (`user_block`), for a
  Cholesky preconditioner. For a quadratic f the block is exact at every
  later step too; `FreeBlock.covers` says when a kept block still fits the free set (F only
  shrank), so the solver can reuse it, and `extend_block` adds the few columns of a free set
  that gained some indices (one smaller batch) instead of forming the block anew.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._jacobi import fixed_signs


class FreeBlock(eqx.Module):
    """A dense Hessian block on the free indices `index` (padded with n), kept between steps.
    `ok`: formed, factorizable, and still preconditioning well."""

    index: jax.Array  # (size,) int32; n marks padding (sorted when formed, not once extended)
    matrix: jax.Array  # (size, size) H[index][:, index], zero on padding
    ok: jax.Array  # bool

    @staticmethod
    def empty(size: int, n: int, dtype) -> FreeBlock:
        return FreeBlock(jnp.full((size,), n, jnp.int32), jnp.zeros((size, size), dtype),
                         jnp.array(False))

    def invalidated(self) -> FreeBlock:
        return eqx.tree_at(lambda b: b.ok, self, jnp.array(False))

    def covers(self, free):
        """True when the block is usable and holds every free index (F ⊆ its index set)."""
        return self.ok & jnp.all(~free | _members(self, free))


def _signs(n: int, dtype):
    return fixed_signs(jnp.arange(n)).astype(dtype)  # no PRNG in the step


def coloured_diagonal(hvp, free, probes: int, dtype):
    """An estimate of diag(H) on the free variables (zero elsewhere) from `probes` products
    with signed, coloured probes (module docstring); `hvp` maps a flat vector to H·v."""
    n = free.shape[0]
    colour = jnp.where(free, (jnp.cumsum(free) - 1) % probes, -1)
    signs = _signs(n, dtype)
    z = jnp.where(colour[None, :] == jnp.arange(probes)[:, None], signs, 0.0)
    hz = jax.vmap(hvp)(z)
    return jnp.sum(z * hz, axis=0)


def user_block(fn, params, args, index, dtype, solver: str, whole: int = 0):
    """`fn(params, args, index)`, the user's H[index][:, index], checked for its shape (a
    clear error at trace time instead of a broadcasting one later) and cast to `dtype`.
    `index` may be `slice(None)`, all `whole` positions (`_coordinate.whole_block`)."""
    block = jnp.asarray(fn(params, args, index))
    k = whole if isinstance(index, slice) else index.shape[0]
    if block.shape != (k, k):
        raise ValueError(f"{solver}: `hessian_block(params, args, index)` returned shape "
                         f"{block.shape} for {k} indices; it must return H[index][:, index], "
                         f"of shape ({k}, {k}).")
    return block.astype(dtype)


def form_block(hvp, free, size: int, dtype, block_fn=None) -> FreeBlock:
    """H_FF from one batched product with the unit vectors of F (|F| ≤ `size`; beyond it the
    first `size` free indices), or from `block_fn(index)` (H[index][:, index] for a sorted
    index of valid positions: the padding is given as the last position and zeroed here)."""
    n = free.shape[0]
    index = jnp.nonzero(free, size=size, fill_value=n)[0].astype(jnp.int32)
    if block_fn is None:
        units = jax.nn.one_hot(index, n, dtype=dtype)  # a padded index gives a zero row
        columns = jax.vmap(hvp)(units)
        block = jnp.take(columns, index, axis=1, mode="fill", fill_value=0.0)
    else:
        valid = index < n
        block = block_fn(jnp.minimum(index, n - 1))
        block = jnp.where(valid[:, None] & valid[None, :], block, 0.0)
    return FreeBlock(index, 0.5 * (block + block.T), jnp.array(True))


def extend_block(block: FreeBlock, hvp, free, count: int, dtype) -> FreeBlock:
    """The block with the free indices it lacks (at most `count`) added in slots that hold no
    free index (padding, or indices no longer free): one batched product with `count` unit
    vectors instead of a new block. The caller checks `extendable` first."""
    n, size = free.shape[0], block.index.shape[0]
    new = free & ~_members(block, free)
    new_index = jnp.nonzero(new, size=count, fill_value=n)[0].astype(jnp.int32)
    spare = ~jnp.take(free, block.index, mode="fill", fill_value=False)
    slots = jnp.nonzero(spare, size=count, fill_value=size)[0]
    slots = jnp.where(new_index < n, slots, size)  # size: dropped below
    index = block.index.at[slots].set(new_index, mode="drop")
    columns = jax.vmap(hvp)(jax.nn.one_hot(new_index, n, dtype=dtype))
    rows = jnp.take(columns, index, axis=1, mode="fill", fill_value=0.0)  # H[new, index]
    matrix = block.matrix.at[slots].set(rows, mode="drop").at[:, slots].set(rows.T, mode="drop")
    return FreeBlock(index, matrix, block.ok)


def extendable(block: FreeBlock, free, count: int):
    """True when `extend_block` can add every free index the block lacks."""
    missing = jnp.sum(free & ~_members(block, free))
    spare = jnp.sum(~jnp.take(free, block.index, mode="fill", fill_value=False))
    return block.ok & (missing <= count) & (missing <= spare)


def _members(block: FreeBlock, free):
    return jnp.zeros(free.shape, bool).at[block.index].set(True, mode="drop")


def block_preconditioner(block: FreeBlock, free):
    """(M⁻¹, factored): M = the block restricted to F (F must be within its indices), applied
    by Cholesky; where the restricted block is not positive definite (an indefinite
    Hessian), Jacobi with its diagonal instead, and `factored` is False."""
    n = free.shape[0]
    keep = jnp.take(free, block.index, mode="fill", fill_value=False)
    both = keep[:, None] & keep[None, :]
    restricted = jnp.where(both, block.matrix, 0.0) + jnp.diag(jnp.where(keep, 0.0, 1.0))
    chol = jnp.linalg.cholesky(restricted)
    factored = jnp.all(jnp.isfinite(chol))
    diag = jnp.abs(jnp.diagonal(block.matrix))
    top = jnp.max(jnp.where(keep, diag, 0.0))
    inverse = jnp.where(keep & (top > 0), 1 / jnp.maximum(diag, 1e-6 * top), 1.0)
    safe = jnp.where(factored, chol, jnp.eye(chol.shape[0], dtype=chol.dtype))

    def apply(r):
        local = jnp.where(keep, jnp.take(r, block.index, mode="fill", fill_value=0.0), 0.0)
        solved = jax.scipy.linalg.cho_solve((safe, True), local)
        local = jnp.where(factored, solved, inverse * local)
        return jnp.zeros(n, r.dtype).at[block.index].set(
            jnp.where(keep, local, 0.0).astype(r.dtype), mode="drop")

    return apply, factored
