"""SOAP (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's preconditioner, as an optax
gradient transformation."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax

from .._tree import tree_where, tree_zeros_like
from . import _blocks as B
from ._checks import check_init_params, check_like
from ._common import ScalarOrSchedule, every_member_cond, guard, learning_rate_at


class SOAPState(NamedTuple):
    count: jax.Array  # int32: steps taken (skipped non-finite steps do not count)
    mu: Any  # m, the average of gradients, in the original basis (params-shaped)
    nu: Any  # v, the average of squared rotated gradients: (nb_r, nb_c, b_r, b_c) blocks for
    #          matrix leaves, params-shaped for scalars and vectors (plain Adam there)
    left: Any  # per leaf: L per block, (nb_r, nb_c, b_r, b_r); (0,) for scalars and vectors
    right: Any  # per leaf: R per block, (nb_r, nb_c, b_c, b_c)
    left_basis: Any  # Q_L, eigenvectors of L as of the last refresh (the identity before)
    right_basis: Any  # Q_R, eigenvectors of R as of the last refresh


def _sides(left, right, one_sided: bool):
    """Which factors of a leaf SOAP keeps: both, or with `one_sided` only the smaller block
    side's (ties: the left)."""
    if not one_sided or left.ndim != 4:
        return (True, True)
    return (True, False) if left.shape[-1] <= right.shape[-1] else (False, True)


def soap(
    learning_rate: ScalarOrSchedule = 3e-3, *, b1: float = 0.95, b2: float = 0.95,
    eps: float = 1e-8, precondition_freq: int = 10, block_size: int = 128,
    weight_decay: float = 0.0, one_sided: bool = False, refresh: str = "power",
) -> optax.GradientTransformationExtraArgs:
    """SOAP: Adam run in the eigenbasis of Shampoo's Kronecker factors. For every
    matrix-shaped parameter block (blocks as in `shampoo`), with G the gradient block:

        L ← β₂ L + (1 − β₂) G Gᵀ,   R ← β₂ R + (1 − β₂) GᵀG,
        L ≈ Q_L Λ_L Q_Lᵀ,  R ≈ Q_R Λ_R Q_Rᵀ            (refreshed every T steps),
        m ← β₁ m + (1 − β₁) G                          (in the original basis),
        G' = Q_Lᵀ G Q_R,  v ← β₂ v + (1 − β₂) G'⊙G'     (in the rotated basis),
        update = −lr · Q_L [ (Q_Lᵀ m̂ Q_R) / (max(√v̂, δ) + eps) ] Q_Rᵀ,
        δ = √ε_mach · max √v̂   (per block),

    with m̂, v̂ Adam's bias-corrected moments. With Q_L = Q_R = I this is Adam exactly; in the
    eigenbasis Adam's diagonal second moment estimates the eigenvalues of the Kronecker
    factored curvature and keeps adapting between refreshes, where Shampoo's frozen roots do
    not (Vyas et al. show Shampoo with power 1/2 is Adafactor in this basis). Scalars and
    vectors take plain Adam steps. Decoupled weight decay: −lr·wd·θ is added.

    **Rounding floor δ.** The rotation rounds: a rotated entry that is zero in exact arithmetic
    (a direction the gradients never had, e.g. the null space of a low-rank first gradient)
    comes out near ε_mach·‖G‖, and Adam's normalization would turn it into a full ±lr step
    (float32 SOAP diverged on the least-squares test without it). Entries below √ε_mach of
    the block's largest (3.5e-4 in float32) are damped in proportion instead of normalized;
    this matches Shampoo's relative damping of 1e-6 on eigenvalues (1e-3 on singular values).

    **Refreshes.** The eigenbases are refreshed at steps 0, T, 2T, ... (T =
    `precondition_freq`) under `lax.cond`. With `refresh="power"` (the default, the paper's
    method) step 0 takes `eigh` and every later refresh one step of subspace iteration from
    the current basis: its columns sorted by Rayleigh quotient qᵢᵀ L qᵢ (descending),
    multiplied by L and orthonormalized by Householder QR. The statistics move little in T
    steps, so one iteration tracks them, at about two thirds of an `eigh`'s cost (128 × 128
    block, one CPU core: 0.52 ms against 0.77 ms; 256 × 256: 2.0 against 3.1 ms).
    `refresh="eigh"` recomputes the exact eigenvectors every time (descending order).

    **Moments across a refresh.** m is kept in the eigenbasis, m' = Q_Lᵀ m Q_R, updated from
    the rotated gradient that v needs anyway, and moved into the new basis exactly at a
    refresh (m' ← P_L m' P_Rᵀ, P = Q_newᵀ Q_old per side): the same updates as rotating m at
    every step, with two products fewer per step. v, an estimate per basis vector, follows
    each new basis vector's nearest old one (the largest |P_ij| in its row), which is the
    paper's permutation of v by the sort when the refresh reorders the basis, and leaves v
    as it is when it does not.

    **Block size.** Blocks of at most 128 (not the whole side) by default: a step's
    products cost O(mn(b_r + b_c)) for block sides b, so a block near the size of a
    minibatch keeps the rotations within a few times the gradient's own O(batch·mn). On
    the benchmark's deep autoencoder (64-256-128-32-128-256-64, batch 256, float32, one
    CPU core) the defaults (128, power refreshes) against 256 with `eigh` refreshes took
    4.2–4.7 against 5.0–5.2 ms per step (AdamW 1.4–1.5 ms), now 4.0–4.2 ms, and the same
    steps to AdamW's 1,000-step loss (159 against AdamW's 993); on its convnet and
    character transformer, the same or better losses (`benchmarks/training.py`).

    **Cost per step** for an m × n block: two products for the statistics and two each to
    rotate the gradient and the update, O(mn(m + n)), plus, every T steps, O(m³ + n³) for
    the refresh (a product and a QR per side) and four products to move m. Under
    `jax.vmap` over an ensemble the same: the refresh (and the first refresh's `eigh`) stays
    a branch for the whole batch (`jaxopt2._branch.every_member_cond`; four vmapped autoencoders
    cost 1.18× four separate runs, 5.4× while `lax.cond` turned into a select that ran both
    branches at every step). Memory: m and v (blocked, as the parameters with padding) and
    2(m² + n²) per block.

    **One-sided** (`one_sided=True`, the paper's one-sided variant): only the smaller side of
    each block keeps a factor and is rotated (Q of the larger side fixed at I), so a step
    costs O(mn·min(m, n)) and the eigendecompositions O(min(m, n)³). Measured on the
    benchmark's deep autoencoder with `block_size=256`: 2.3 ms of CPU per step against
    4.4 ms two-sided and 1.3 ms for AdamW; 250 steps to AdamW's 950-step loss against 175
    two-sided (0.58 s against 0.77 s of CPU; AdamW 1.2 s). A static choice: with
    `optax.inject_hyperparams` add "one_sided" to `static_args`.

    **Dtypes, state, hyperparameters.** As `shampoo`: statistics and moments in float32 at
    least, updates in the parameters' dtypes, a `SOAPState` of fixed structure, non-finite
    gradients skip the step, `block_size` is read by `init` only. The skip is decided from
    the gradient alone, before anything is computed: it is taken unless every gradient leaf
    and its sum of squares are finite and so is the learning rate, and then every statistic,
    moment and update is a convex combination or a bounded rotation of finite numbers, so
    none of them is read afterwards for finiteness (float16 parameters, whose range is
    narrower than the statistics', keep a guard that reads the update). Defaults are the paper's
    (β₁ = β₂ = 0.95, T = 10, lr 3e-3, refresh by power iteration) but for the block size
    (the paper preconditions sides up to 10,000 whole).

    Reference: N. Vyas, D. Morwani, R. Zhao, M. Kwun, I. Shapira, D. Brandfonbrener,
    L. Janson, S. Kakade, "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR 2025
    (arXiv:2409.11321).

    ```python
    import jax, jax.numpy as jnp, optax, jaxopt2
    X = jax.random.normal(jax.random.key(0), (64, 4)) * jnp.array([1.0, 3.0, 0.3, 1.0])
    Y = X @ jax.random.normal(jax.random.key(1), (4, 2))
    loss = lambda p: 0.5 * jnp.mean((X @ p["W"] + p["b"] - Y) ** 2)
    opt = jaxopt2.optimizers.soap(1e-2)
    params = {"W": jnp.zeros((4, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    for _ in range(5):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    ```
    """
    name = "soap"
    if refresh not in ("power", "eigh"):
        raise ValueError(f"soap: `refresh` must be 'power' (one step of subspace iteration "
                         f"after the first eigh; the default) or 'eigh'; got {refresh!r}.")
    if not isinstance(one_sided, bool):
        raise ValueError(f"soap: `one_sided` must be True or False (a static choice; with "
                         f"optax.inject_hyperparams list it in `static_args`); got "
                         f"{one_sided!r}.")
    B.check_hyperparameters(learning_rate, b1, b2, eps, None, precondition_freq, block_size,
                          weight_decay)

    def init(params):
        check_init_params(name, params)
        left, right, left_id, right_id = B.init_factors(params, block_size, name)

        def moment(p, L, R):
            if not B.is_matrix(p.shape):
                return jnp.zeros(p.shape, B.stat_dtype(p.dtype))
            nr, nc, br, _ = L.shape
            return jnp.zeros((nr, nc, br, R.shape[-1]), L.dtype)

        mu = jtu.tree_map(moment, params, left, right)
        nu = jtu.tree_map(moment, params, left, right)
        return SOAPState(jnp.zeros((), jnp.int32), mu, nu, left, right, left_id, right_id)

    def update(grads, state, params=None, **extra_args):
        del extra_args
        with_params = params is not None
        params, g, finite = B.begin(name, grads, params, weight_decay)
        _check_moments(state, params)
        t = state.count
        treedef = jtu.tree_structure(params)
        leaves = lambda tree: treedef.flatten_up_to(tree)  # noqa: E731
        shapes = [p.shape for p in leaves(params)]
        sides = [_sides(L, R, one_sided) for L, R in zip(leaves(state.left),
                                                          leaves(state.right), strict=True)]
        # The whole step is finite when this is (with a finite learning rate; see the guard
        # at the end): every statistic and moment is a convex combination of finite numbers.
        dtype = B.stat_dtype(jnp.result_type(*[m.dtype for m in leaves(state.mu)]))
        lr = learning_rate_at(learning_rate, t, dtype)
        # a skipped step changes nothing: a non-finite learning rate skips the statistics too
        stats_ok = B.statistics_ok(finite, leaves(g), shapes, every_leaf=True) & jnp.isfinite(lr)

        def refresh_basis(S, Q, t):
            if refresh == "eigh":
                return B.eigenbasis(S)
            return every_member_cond(t == 0, lambda S, Q: B.eigenbasis(S), B.power_basis, S, Q)

        def move(new_left, new_right, old_left, old_right, moments):
            # m and v from the old eigenbases into the new ones, at a refresh. With
            # P = Q_newᵀ Q_old per side, m' ← P_L m' P_Rᵀ exactly; v, a per-coordinate
            # estimate, follows each new basis vector's nearest old one (the largest |P_ij|
            # in its row): a permutation of v where the refresh reorders the basis.
            out_m, out_v = [], []
            for m, v, QL, QR, QL0, QR0, side, s in zip(
                    *moments, new_left, new_right, old_left, old_right, sides, shapes,
                    strict=True):
                if B.is_matrix(s):
                    for Q, Q0, used, axis in ((QL, QL0, side[0], -2), (QR, QR0, side[1], -1)):
                        if used:
                            P = Q.swapaxes(-1, -2) @ Q0
                            m = _apply(P, m, axis)
                            nearest = _row_argmax(jnp.abs(P))
                            index = nearest[..., :, None] if axis == -2 else nearest[..., None, :]
                            v = jnp.take_along_axis(v, index, axis)
                out_m.append(m)
                out_v.append(v)
            return out_m, out_v

        layouts, left, right, left_basis, right_basis, (mus, nus) = B.update_factors(
            leaves(g), leaves(state.left), leaves(state.right), shapes, t, precondition_freq,
            refresh_basis, leaves(state.left_basis), leaves(state.right_basis), b2, sides,
            ok=stats_ok, carry=(leaves(state.mu), leaves(state.nu)), move=move)

        c1, c2 = B.bias_corrections(b1, b2, t + 1, dtype)
        mu, nu, direction = [], [], []
        for s, lay, gl, m, v, QL, QR, side in zip(
                shapes, layouts, leaves(g), mus, nus, left_basis, right_basis, sides,
                strict=True):
            if lay is None:
                m, v = B.adam_moments(m, v, gl, b1, b2)
                d = B.ratio_or_zero(m / c1, jnp.sqrt(v / c2) + eps)
            else:
                def rotate(X, QL=QL, QR=QR, side=side):
                    X = QL.swapaxes(-1, -2) @ X if side[0] else X
                    return X @ QR if side[1] else X

                def unrotate(X, QL=QL, QR=QR, side=side):
                    X = QL @ X if side[0] else X
                    return X @ QR.swapaxes(-1, -2) if side[1] else X
                rotated = rotate(B.to_blocks(gl, *lay))
                m = (b1 * m + (1 - b1) * rotated).astype(m.dtype)
                v = (b2 * v + (1 - b2) * rotated * rotated).astype(v.dtype)
                rms = jnp.sqrt(v / c2)
                # The rotation rounds: an entry of Q_Lᵀ G Q_R that is zero in exact arithmetic
                # comes out near eps·‖G‖, and Adam would blow it up to a ±1 step. Entries below
                # √eps of the block's largest are damped instead of normalized, which leaves
                # rounding noise at √eps of a step.
                floor = jnp.sqrt(jnp.finfo(rms.dtype).eps) * jnp.max(
                    rms, axis=(-2, -1), keepdims=True)
                adam = B.ratio_or_zero(m / c1, jnp.maximum(rms, floor) + eps)
                d = B.from_blocks(unrotate(adam), s)
            mu.append(m)
            nu.append(v)
            direction.append(d.astype(m.dtype))

        unflat = lambda xs: jtu.tree_unflatten(treedef, list(xs))  # noqa: E731
        updates = B.finish(unflat(direction), params, lr, weight_decay, with_params)
        # The factors and bases are guarded where they are computed (`update_factors`, by
        # `stats_ok`). The moments and the update need no reading either: with every leaf's
        # sum of squares finite, m and v are convex combinations of finite numbers (moved at
        # a refresh by an orthogonal P, or permuted), the update's entries are bounded by a
        # small multiple of the block's m̂ over its floor, and the rotations keep them in
        # range (the learning rate is in `stats_ok` too). Parameters with a narrower range
        # than float32 (float16) keep the guard that reads everything, for the cast. (Reading
        # the update and the moments for finiteness cost 0.2–0.4 ms of a 4.6 ms step on the
        # benchmark's autoencoder.)
        new, old = (t + 1, unflat(mu), unflat(nu)), (state.count, state.mu, state.nu)
        if any(jnp.finfo(p.dtype).max < jnp.finfo(jnp.float32).max for p in leaves(params)):
            updates, (count, mu, nu) = guard(stats_ok, updates, new, old)
        else:
            updates = tree_where(stats_ok, updates, tree_zeros_like(updates))
            count, mu, nu = tree_where(stats_ok, new, old)
        return updates, SOAPState(count, mu, nu, unflat(left), unflat(right),
                                  unflat(left_basis), unflat(right_basis))

    return optax.GradientTransformationExtraArgs(init, update)


def _row_argmax(a):
    """`jnp.argmax(a, axis=-1)` (the first maximum) for finite `a`, by a max and a min over
    the rows' indices: XLA:CPU's argmax (a reduction over value-index pairs) took 0.05 ms
    per 128 × 128 block, this 0.02 ms."""
    n = a.shape[-1]
    top = jnp.max(a, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(a == top, jnp.arange(n), n), axis=-1)
    return jnp.minimum(first, n - 1)


def _apply(P, X, axis):
    """P X (axis −2: the rows of every block) or X Pᵀ (axis −1: the columns)."""
    return P @ X if axis == -2 else X @ P.swapaxes(-1, -2)


def _check_moments(state, params) -> None:
    """`update`'s check that the state was made by `init` for these parameters: vector and
    scalar leaves' moments have the parameter's shape, and a matrix leaf's moments (kept in
    the eigenbasis, as blocks) have the block layout that `init` gives its shape."""
    expected = None
    if jtu.tree_structure(state.mu) == jtu.tree_structure(params):
        expected = [B.block_shape(jnp.shape(p), L) if B.is_matrix(jnp.shape(p))
                    else jnp.shape(p)
                    for p, L in zip(jtu.tree_leaves(params), jtu.tree_leaves(state.left),
                                    strict=True)]
    check_like("soap", "state.mu", state.mu, params,
               "make the state with soap(...).init(params) for these params", expected)
