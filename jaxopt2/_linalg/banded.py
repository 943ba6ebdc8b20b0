"""Band matrices: probing a band of a matrix-free operator (Curtis–Powell–Reid colouring) and
a band LU without pivoting, for NewtonKrylov's automatic preconditioner.

lineax has a tridiagonal solver but no band probing or band LU of wider half-width; the
LU here is one scan over rows with O(n b²) work and O(n b) memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._tree import ravel


def probe_band(lin, unravel, n: int, b: int, dtype):
    """The band of half-width b of J (in the ravelled unknowns) from 2b+1 products
    (Curtis, Powell & Reid, IMA J. Appl. Math. 13, 1974): colour c probes the columns
    j ≡ c (mod 2b+1); within a band no two columns of one colour meet in a row, so each
    product returns one band entry per row. Returns band[i, k] = J[i, i + k − b]."""
    width = 2 * b + 1
    cols = jnp.arange(n)
    probes = (cols[None, :] % width == jnp.arange(width)[:, None]).astype(dtype)
    outs = jax.vmap(lambda v: ravel(lin(unravel(v)))[0])(probes)  # (2b+1, n)
    offsets = jnp.arange(width) - b
    j = cols[:, None] + offsets[None, :]
    band = jnp.take_along_axis(outs.T, j % width, axis=1, mode="promise_in_bounds")
    return jnp.where((j >= 0) & (j < n), band, 0.0).astype(dtype)


def band_lu(band, b: int):
    """LU without pivoting of a band matrix (half-width b), row by row in one scan: returns
    L's strictly lower band (n, b) and U's upper band (n, b + 1). Out-of-range rows act as
    the identity, so the first rows need no special case."""
    dtype = band.dtype

    def row(u_prev, a):
        # u_prev[q, c] = U[i−b+q, i−b+q+c]; a[k] = A[i, i+k−b]
        lower = []
        for q in range(b):
            s = a[q]
            for p in range(q):
                s = s - lower[p] * u_prev[p, q - p]
            lower.append(s / u_prev[q, 0])
        upper = []
        for c in range(b + 1):
            s = a[b + c]
            for p in range(c, b):
                s = s - lower[p] * u_prev[p, b - p + c]
            upper.append(s)
        u_row = jnp.stack(upper)
        return jnp.concatenate([u_prev[1:], u_row[None]]), (jnp.stack(lower), u_row)

    u_init = jnp.zeros((b, b + 1), dtype).at[:, 0].set(1.0)
    _, (lower, upper) = lax.scan(row, u_init, band)
    return lower, upper


def band_lu_solve(lower, upper, r, b: int):
    def forward(z_prev, inputs):
        l_row, r_i = inputs
        z_i = r_i - l_row @ z_prev
        return jnp.concatenate([z_prev[1:], z_i[None]]), z_i

    _, z = lax.scan(forward, jnp.zeros(b, r.dtype), (lower, r))

    def backward(x_next, inputs):
        u_row, z_i = inputs
        x_i = (z_i - u_row[1:] @ x_next) / u_row[0]
        return jnp.concatenate([x_i[None], x_next[:-1]]), x_i

    _, x = lax.scan(backward, jnp.zeros(b, r.dtype), (upper, z), reverse=True)
    return x


def band_solver(band, b: int):
    """v ↦ B⁻¹v for the probed band B (tridiagonal: LAPACK-style pivoted solve)."""
    if b == 1:
        dl, d, du = band[:, 0], band[:, 1], band[:, 2]
        return lambda v: lax.linalg.tridiagonal_solve(dl, d, du, v[:, None])[:, 0]
    lower, upper = band_lu(band, b)
    return lambda v: band_lu_solve(lower, upper, v, b)
