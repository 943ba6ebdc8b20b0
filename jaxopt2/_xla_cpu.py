"""Compile-time workarounds for XLA:CPU, kept here so that no algorithm carries them inline.

XLA:CPU compiles every fusion of a program as its own kernel, at about 10-20 ms of compile
time each, so a solver whose step is mostly scalar bookkeeping (Levenberg–Marquardt's dense
path: the secular equation, the ratio and radius update, MINPACK's stopping tests) spends
most of its compile time on dozens of tiny kernels. `one_kernel` folds such a run into one
kernel. The numbers computed are unchanged, and on other backends, or under unrolled
(reverse-mode) differentiation, it is the plain call.

Where else the dense Levenberg–Marquardt step is shaped for this compiler, and why (these
live in its own code because they are the algorithm's data layout, not a wrapper):

- J and its SVD are formed at the start of a step, never in `init` (a "stale" flag marks a
  new point): one Jacobian site in the program instead of two halves compile time;
- `jaxopt2._least_squares.lm_solve` packs λ, ‖D p‖ and the model decrease into one vector
  carried by one while loop, which XLA:CPU also compiles as one kernel on small problems.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ._loops import is_unrolled


def one_kernel(f, *operands):
    """`f(*operands)`, run as the body of a while loop that makes exactly one trip.

    A small while loop (no custom calls, about a kilobyte of operands) is compiled by
    XLA:CPU as a single kernel, where the same code inline would be one kernel per fusion;
    wrapping a run of scalar bookkeeping this way cuts compile time severalfold. The trip
    count is hidden behind an optimization barrier so that XLA does not unroll the single
    trip back into the enclosing computation. Output leaves start from an operand leaf of the
    same shape and dtype when there is one (a zero vector would cost a kernel of its own).

    ```python
    import jax.numpy as jnp
    from jaxopt2._xla_cpu import one_kernel
    one_kernel(lambda a, b: (a + b, a * b), jnp.ones(()), jnp.full((), 2.0))  # (3.0, 2.0)
    ```
    """
    if jax.default_backend() != "cpu" or is_unrolled():
        # Elsewhere a loop costs a host round trip per trip, and unrolled (reverse-mode)
        # differentiation needs straight-line code: the trick is for XLA:CPU's compiler only.
        return f(*operands)
    out_shape = jax.eval_shape(f, *operands)
    pool = jax.tree_util.tree_leaves(operands)

    def start(sd):
        for leaf in pool:
            if leaf.shape == sd.shape and leaf.dtype == sd.dtype:
                return leaf
        return jnp.zeros(sd.shape, sd.dtype)

    out0 = jax.tree_util.tree_map(start, out_shape)
    go = lax.optimization_barrier(jnp.array(True))

    def body(c):
        _, ops, _ = c
        return jnp.array(False), ops, f(*ops)

    return lax.while_loop(lambda c: c[0], body, (go, operands, out0))[2]


_CHUNK_ROWS = 1024  # rows of B per step of `gram`'s row-chunked sum


def _upper_products(t):
    """The products of a d × k Bᵀ-chunk `t` that make its Gram matrix: one for d < 256,
    else the 10 blocks on and above the diagonal of a 4 × 4 blocking (BᵀB is symmetric:
    5/8 of the flops; XLA has no syrk)."""
    def dot(u, v):  # u vᵀ, both row-major
        return lax.dot_general(u, v, (((1,), (1,)), ((), ())))

    d = t.shape[0]
    if d < 256:
        return {(0, 0): dot(t, t)}
    edges = [round(i * d / 4) for i in range(5)]
    parts = [t[edges[i]:edges[i + 1]] for i in range(4)]
    return {(i, j): dot(parts[i], parts[j]) for i in range(4) for j in range(i, 4)}


def _assemble(upper):
    if len(upper) == 1:
        return upper[0, 0]
    return jnp.concatenate([
        jnp.concatenate([upper[i, j] if j >= i else upper[j, i].T for j in range(4)], axis=1)
        for i in range(4)], axis=0)


def gram(b):
    """BᵀB for an n × d B, exactly symmetric. On XLA:CPU two things cost as much as the
    flops (measured on one core, float64):

    - a dot contracting B over its rows as stored ran at half the speed of the same product
      on Bᵀ laid out row-major (8,000 × 301: 26 against 14 ms), and XLA folds a plain
      transpose back into the dot, so Bᵀ is materialised behind an optimization barrier;
    - materialising all of Bᵀ at once is a slow, cache-unfriendly transpose (0.7 s of the
      2.0 s for 50,000 × 1,000), so from 2 × 1,024 rows on, B is summed in chunks of 1,024
      rows, each read in place and transposed while it is in cache: 50,000 × 1,000 in
      1.08 s against 2.0 s (numpy's single-threaded syrk: 1.04 s), 20,000 × 500 in 0.13
      against 0.26 s (Intel Xeon).

    From d = 256 on only the 10 upper blocks of a 4 × 4 blocking are products (5/8 of the
    flops). Elsewhere the libraries take the transposed operand directly."""
    if jax.default_backend() != "cpu":
        return b.T @ b
    n, d = b.shape
    if n < 2 * _CHUNK_ROWS:
        return _assemble(_upper_products(lax.optimization_barrier(b.T)))
    k = n // _CHUNK_ROWS

    def add_chunk(acc, chunk):
        products = _upper_products(lax.optimization_barrier(chunk.T))
        return {key: acc[key] + products[key] for key in acc}

    # chunks read in place (a scan over b reshaped would first copy its whole head)
    zeros = jax.tree.map(lambda sd: jnp.zeros(sd.shape, sd.dtype),
                         jax.eval_shape(lambda: _upper_products(b[:_CHUNK_ROWS].T)))
    acc = lax.fori_loop(0, k, lambda i, acc: add_chunk(
        acc, lax.dynamic_slice_in_dim(b, i * _CHUNK_ROWS, _CHUNK_ROWS)), zeros)
    if n > k * _CHUNK_ROWS:
        acc = add_chunk(acc, b[k * _CHUNK_ROWS:])
    return _assemble(acc)
