"""What `shampoo` and `soap` share: how a parameter leaf is seen as a matrix cut into blocks,
the Kronecker statistics of its gradient blocks, their inverse roots and eigenbases, and the
Adam moments both fall back on.

**A leaf as blocked matrices.** A leaf with two or more axes is reshaped to a matrix
(prod(shape[:k]), prod(shape[k:])) at the split k that makes the larger side smallest: a
dense kernel (in, out) stays as it is, a convolution kernel (3, 3, 16, 32) becomes
(144, 32) and equinox's (32, 16, 3, 3) becomes (32, 144). Each side n is then
cut into ceil(n / block_size) equal blocks of ceil(n / nb) rows (zero-padded by at most nb − 1
rows), so a leaf is a stack of (nb_rows, nb_cols) blocks of one shape and every block
operation is one batched matrix operation. Scalars and vectors (biases, norms' scales) have no
Kronecker structure worth keeping: they are left to Adam, and their statistics are empty
arrays of shape (0,), so the state has one fixed structure for any parameters.

Statistics are kept in float32 at least (`stat_dtype`): bfloat16 parameters get float32
factors, eigendecompositions and moments; float64 parameters keep float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .. import distributed
from ._checks import (
    check_grads,
    check_int,
    check_learning_rate,
    check_number,
    static_int,
)
from ._common import every_member_cond, sanitize


def stat_dtype(dtype):
    """The dtype of the statistics kept for a parameter of `dtype`: float32 at least."""
    return jnp.promote_types(dtype, jnp.float32)


def split_point(shape) -> int | None:
    """The axis k at which `shape` becomes the matrix (prod(shape[:k]), prod(shape[k:])) whose
    larger side is smallest (ties: the first such k); None for scalars and vectors."""
    if len(shape) < 2:
        return None
    sides = [max(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, len(shape))]
    return 1 + sides.index(min(sides))


def side_blocks(n: int, block_size: int) -> tuple[int, int]:
    """(number of blocks, block length) for one side of n rows: equal blocks of at most
    `block_size` rows, as little padding as equal blocks allow."""
    nb = -(-n // block_size)
    return nb, -(-n // nb)


def is_matrix(shape) -> bool:
    return split_point(shape) is not None


def to_blocks(x, rows: tuple[int, int], cols: tuple[int, int]):
    """The leaf `x` as its (nb_r, nb_c, b_r, b_c) stack of zero-padded blocks, in the
    statistics' dtype."""
    k = split_point(x.shape)
    m, n = math.prod(x.shape[:k]), math.prod(x.shape[k:])
    (nr, br), (nc, bc) = rows, cols
    mat = x.reshape(m, n).astype(stat_dtype(x.dtype))
    mat = jnp.pad(mat, ((0, nr * br - m), (0, nc * bc - n)))
    return mat.reshape(nr, br, nc, bc).transpose(0, 2, 1, 3)


def from_blocks(blocks, shape):
    """Inverse of `to_blocks`: the leaf of `shape` (padding dropped), dtype kept."""
    k = split_point(shape)
    m, n = math.prod(shape[:k]), math.prod(shape[k:])
    nr, nc, br, bc = blocks.shape
    mat = blocks.transpose(0, 2, 1, 3).reshape(nr * br, nc * bc)
    return mat[:m, :n].reshape(shape)


def layout(shape, block_size: int):
    """(rows, cols) block layouts of a matrix-shaped leaf (see `side_blocks`)."""
    k = split_point(shape)
    return (side_blocks(math.prod(shape[:k]), block_size),
            side_blocks(math.prod(shape[k:]), block_size))


def layout_of(shape, left):
    """The layout a leaf of `shape` was given by `init`, read back from the shape of its left
    statistics (nb_r, nb_c, b_r, b_r), so that `update` never needs `block_size` (which
    `optax.inject_hyperparams` hands it as a traced array)."""
    k = split_point(shape)
    nr, nc, br, _ = left.shape
    n = math.prod(shape[k:])
    return (nr, br), (nc, -(-n // nc))


def block_shape(shape, left):
    """The (nb_r, nb_c, b_r, b_c) block stack of a leaf of `shape` whose left statistics are
    `left`, or None when `left` cannot belong to a leaf of that shape (the sides' blocks
    must be those `side_blocks` gives for some block size: enough rows, less than one
    padding row per block)."""
    k = split_point(shape)
    m, n = math.prod(shape[:k]), math.prod(shape[k:])
    if jnp.ndim(left) != 4:
        return None
    nr, nc, br, _ = jnp.shape(left)
    bc = -(-n // nc)
    if not (nr * br >= m > nr * (br - 1)):
        return None
    return (nr, nc, br, bc)


def init_factors(params, block_size, optimizer: str):
    """Zero left and right statistics (b_r × b_r and b_c × b_c per block) for the matrix
    leaves, empty (0,) arrays for the others; also the identity-initialized copies that hold
    roots or eigenbases. Returns (left, right, left_id, right_id)."""
    block_size = static_int(optimizer, "block_size", block_size)
    if block_size < 1:
        raise ValueError(f"`block_size` must be an int ≥ 1; got {block_size!r}.")

    def make(p, identity: bool, side: int):
        dtype = stat_dtype(p.dtype)
        if not is_matrix(p.shape):
            return jnp.zeros((0,), dtype)
        (nr, br), (nc, bc) = layout(p.shape, block_size)
        b = (br, bc)[side]
        block = jnp.eye(b, dtype=dtype) if identity else jnp.zeros((b, b), dtype)
        return jnp.broadcast_to(block, (nr, nc, b, b))

    return tuple(jtu.tree_map(lambda p, i=i, s=s: make(p, i, s), params)
                 for i, s in ((False, 0), (False, 1), (True, 0), (True, 1)))


def accumulate(left, right, blocks, beta, use_left=True, use_right=True):
    """L ← β L + (1 − β) G Gᵀ and R ← β R + (1 − β) GᵀG for every block G.

    Under a mesh with Explicit axes and a gradient sharded along a block's rows (FSDP,
    `distributed.shard_params`), G Gᵀ has no legal sharding type of its own (both of its
    axes would name the mesh axis): the products are typed as the factors they update."""
    transpose = blocks.swapaxes(-1, -2)
    explicit = distributed.explicit_mesh()
    if use_left:
        gg_t = (jnp.matmul(blocks, transpose, out_sharding=jax.typeof(left).sharding)
                if explicit else blocks @ transpose)
        left = (beta * left + (1 - beta) * gg_t).astype(left.dtype)
    if use_right:
        gtg = (jnp.matmul(transpose, blocks, out_sharding=jax.typeof(right).sharding)
               if explicit else transpose @ blocks)
        right = (beta * right + (1 - beta) * gtg).astype(right.dtype)
    return left, right


def update_factors(g, left, right, shapes, t, freq, transform, cached_left, cached_right,
                   beta, sides=None, ok=None, carry=None, move=None):
    """One step of the Kronecker statistics shared by Shampoo and SOAP, on flat leaf lists:
    `(layouts, left, right, left_t, right_t, carry)`. Each matrix leaf's gradient blocks are
    added to its left/right factors (`accumulate`); every `freq` steps (t % freq == 0, under
    `every_member_cond`, so the costly `transform` is skipped on the other steps, under
    `jax.vmap` too) `transform(factor, cached, t)` replaces the cached one (Shampoo: inverse
    4th roots; SOAP: eigenbases, refined from the cached ones). Vector and scalar leaves
    (layout None) pass through unchanged. `sides` (one (left, right) pair of bools per
    leaf; default both) leaves a side's factor untouched, neither accumulated nor
    transformed (SOAP's one-sided variant). `carry` (any pytree) is returned as it is, or at
    a refresh as `move(left_t, right_t, cached_left, cached_right, carry)`, inside the same
    conditional (SOAP moves its moments into the new bases).

    `ok` (a bool, or None: no guard): the step is taken only where `ok`; otherwise every
    factor and transform keeps its old value, and a transform that comes out non-finite is
    not kept either. `statistics_ok` gives the `ok` that keeps the factors finite, so that
    the caller's guard need not read them: the selects then fuse into the updates that
    compute them (a guard reading the new factors afterwards, the generic `guard`, cost
    SOAP 1 ms of its 6.7 ms per step on the benchmark's autoencoder: a finiteness
    reduction and a select over every factor and basis)."""
    layouts = [layout_of(s, L) if is_matrix(s) else None
               for s, L in zip(shapes, left, strict=True)]
    if sides is None:
        sides = [(True, True)] * len(layouts)
    new_left, new_right = [], []
    for lay, gl, L, R, (use_l, use_r) in zip(layouts, g, left, right, sides, strict=True):
        if lay is not None:
            L2, R2 = accumulate(L, R, to_blocks(gl, *lay), beta, use_l, use_r)
            if ok is not None:
                L2, R2 = jnp.where(ok, L2, L), jnp.where(ok, R2, R)
            L, R = (L2 if use_l else L), (R2 if use_r else R)
        new_left.append(L)
        new_right.append(R)

    def kept(new, old):
        if ok is None:
            return new
        return jnp.where(jnp.all(jnp.isfinite(new)), new, old)

    # Everything the refresh reads is an operand (`every_member_cond` takes no traced
    # closures), the step count included, for a transform that branches on it.
    def refresh(new_left, new_right, cached_left, cached_right, carry, t):
        left_t = [kept(transform(L, Q, t), Q) if lay and side[0] else Q
                  for L, Q, lay, side in zip(new_left, cached_left, layouts, sides, strict=True)]
        right_t = [kept(transform(R, Q, t), Q) if lay and side[1] else Q
                   for R, Q, lay, side in zip(new_right, cached_right, layouts, sides,
                                              strict=True)]
        return left_t, right_t, (carry if move is None
                                 else move(left_t, right_t, cached_left, cached_right, carry))

    def keep(new_left, new_right, cached_left, cached_right, carry, t):
        return cached_left, cached_right, carry

    due = t % freq == 0 if ok is None else (t % freq == 0) & ok
    left_t, right_t, carry = every_member_cond(
        due, refresh, keep, new_left, new_right, list(cached_left), list(cached_right), carry,
        t)
    return layouts, new_left, new_right, left_t, right_t, carry


def statistics_ok(finite, g, shapes, every_leaf: bool = False):
    """Whether the factors of a step with gradient leaves `g` stay finite: the gradient is
    finite (`finite`, from `begin`) and so is the sum of squares of every matrix leaf (of
    every leaf with `every_leaf`: Adam's second moment of a vector leaf squares it too). Then
    every entry of G Gᵀ and GᵀG is at most that sum (Cauchy–Schwarz), and β·L + (1 − β)·G Gᵀ
    is a convex combination of finite numbers: one pass over the gradient, where checking
    the new factors reads matrices several times the parameters' size."""
    sums = [jnp.sum(jnp.square(gl.astype(stat_dtype(gl.dtype))))
            for gl, s in zip(g, shapes, strict=True) if every_leaf or is_matrix(s)]
    return finite & jnp.all(jnp.isfinite(jnp.stack(sums))) if sums else finite


def _spectrum(stats):
    """Eigenvalues (clipped at 0: roundoff may make a PSD matrix's smallest ones negative),
    eigenvectors, and whether the block has any statistics at all."""
    w, q = jnp.linalg.eigh(stats)
    w = jnp.maximum(w, 0)
    top = jnp.max(w, axis=-1, keepdims=True)
    return w, q, top > 0


def inverse_root(stats, p: int, eps):
    """(S + ε λ_max(S) I)^(−1/p) of every PSD block S by its eigendecomposition; the identity
    for an all-zero block (no gradient seen there yet). The damping ε is relative to the
    largest eigenvalue, so the root does not depend on the scale of the gradients and never
    amplifies a direction by more than ε^(−1/p) relative to the top one."""
    w, q, seen = _spectrum(stats)
    top = jnp.max(w, axis=-1, keepdims=True)
    scale = jnp.where(seen, (w + eps * top) ** (-1.0 / p), 1.0)
    root = (q * scale[..., None, :]) @ q.swapaxes(-1, -2)
    eye = jnp.eye(stats.shape[-1], dtype=stats.dtype)
    return jnp.where(seen[..., None], root, eye).astype(stats.dtype)


def eigenbasis(stats):
    """The eigenvectors of every PSD block (columns, eigenvalues descending); the identity
    for an all-zero block."""
    _, q, seen = _spectrum(stats)
    eye = jnp.eye(stats.shape[-1], dtype=stats.dtype)
    return jnp.where(seen[..., None], q[..., ::-1], eye).astype(stats.dtype)


def power_basis(stats, basis):
    """One step of subspace iteration from `basis`: the columns sorted by their Rayleigh
    quotients qᵢᵀ S qᵢ (descending), multiplied by S and orthonormalized (Householder QR),
    for every PSD block S; `basis` is kept for an all-zero block."""
    y = stats @ basis
    # as a contraction: XLA:CPU's reduction over the rows of a block (`sum(basis * y, -2)`)
    # took 0.09 ms per 128 × 128 block, the product S Q 0.04 ms
    quotient = jnp.einsum("...ij,...ij->...j", basis, y)
    order = jnp.argsort(-quotient, axis=-1)
    y = jnp.take_along_axis(y, order[..., None, :], axis=-1)
    q, _ = jnp.linalg.qr(y)
    seen = jnp.max(jnp.abs(stats), axis=(-2, -1)) > 0
    return jnp.where(seen[..., None, None], q, basis).astype(stats.dtype)


def adam_moments(m, v, g, b1, b2):
    """Adam's moment averages m ← β₁ m + (1 − β₁) g, v ← β₂ v + (1 − β₂) g², in the
    statistics' dtype."""
    g = g.astype(m.dtype)
    return (b1 * m + (1 - b1) * g).astype(m.dtype), (b2 * v + (1 - b2) * g * g).astype(v.dtype)


def ratio_or_zero(a, b):
    """a / b where b > 0, else 0: Adam's ratio m̂ / (√v̂ + ε) where every gradient so far was 0
    and `eps` was injected as 0 (0/0), and shampoo's grafting scale of a zero block."""
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1), 0)


def bias_corrections(b1, b2, t, dtype):
    """1 − β₁ᵗ and 1 − β₂ᵗ after t averaged gradients (t ≥ 1)."""
    t = t.astype(dtype)
    return 1 - jnp.asarray(b1, dtype) ** t, 1 - jnp.asarray(b2, dtype) ** t


def check_hyperparameters(learning_rate, b1, b2, eps, matrix_eps, precondition_freq,
                          block_size, weight_decay):
    """The hyperparameters `shampoo` and `soap` share (traced ones are let through)."""
    check_learning_rate("learning_rate", learning_rate)
    check_number("b1", b1, low=0.0, high=1.0, high_open=True)
    check_number("b2", b2, low=0.0, high=1.0, high_open=True)
    check_number("eps", eps, low=0.0, low_open=True)
    if matrix_eps is not None:
        check_number("matrix_eps", matrix_eps, low=0.0, low_open=True)
    check_int("precondition_freq", precondition_freq)
    check_int("block_size", block_size)
    check_number("weight_decay", weight_decay, low=0.0)


def begin(name, grads, params, weight_decay):
    """The reference tree for dtypes (params, or grads when params are not passed), the
    gradient in the parameters' dtypes with non-finite entries zeroed, and whether it was
    finite."""
    if params is None:
        if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
            raise ValueError(f"{name}: decoupled weight decay needs the current parameters: "
                             f"call `update(grads, state, params)`.")
        params = grads
    check_grads(name, grads, params)
    g, finite = sanitize(grads, params)
    return params, g, finite


def finish(direction, params, lr, weight_decay, with_params: bool):
    """−lr·(d + wd·θ) in the parameters' dtypes (decoupled weight decay, as AdamW)."""
    def leaf(d, p):
        step = d + weight_decay * p.astype(d.dtype) if with_params else d
        return (-lr * step).astype(p.dtype)

    return jtu.tree_map(leaf, direction, params)
