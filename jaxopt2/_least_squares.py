"""Pieces shared by the least-squares solvers (`LevenbergMarquardt`, `GaussNewton`).

- the dense/matrix-free switch and the dense Jacobian of the raveled residual;
- the SVD of the scaled Jacobian J D⁻¹ = U S Vᵀ and, from it, the Levenberg-Marquardt step
  p(λ) = −D⁻¹ V S(S² + λ)⁻¹ Uᵀr in closed form for every λ, with Moré's safeguarded Newton
  iteration for the trust-region parameter;
- the matrix-free inner solve: damped CGLS / preconditioned CGLS (`jaxopt2._linalg.cgls`)
  for min ‖J p + r‖² + λ‖p‖², with the preconditioner (e.g. Nyström) built here;
- MINPACK's relative stopping tests and the gradient (cosine) test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax import lax

from ._base import Counts
from ._linalg import cgls, pcgls
from ._linalg.cgls import CGLSResult
from ._loops import while_loop
from ._precision import pow2_scale
from ._tree import ravel, tree_axpy, tree_dot, tree_neg, tree_size, tree_zeros_like
from ._trust_region import reduction_ratio
from ._validate import check_budget, check_tolerance
from .distributed import like, sharded_like
from .sketch._nystrom import NystromPreconditioner, nystrom_preconditioner

# `linear_solver="auto"` forms J when it is small: few parameters (an SVD costs O(m n²)) and
# a Jacobian that fits comfortably in memory (4e6 entries = 32 MB in float64).
DENSE_MAX_PARAMS = 1000
DENSE_MAX_ENTRIES = 4_000_000
LINEAR_SOLVERS = ("auto", "dense", "cg")


def check_common(solver) -> None:
    if solver.linear_solver not in LINEAR_SOLVERS:
        raise ValueError(f"`linear_solver` must be one of {LINEAR_SOLVERS}; "
                         f"got {solver.linear_solver!r}.")
    for name in ("ftol", "xtol", "gtol"):
        check_tolerance(name, getattr(solver, name), allow_none=True)
    check_budget("cg_max_steps", solver.cg_max_steps, allow_none=True)
    if solver.preconditioner is not None:
        if not callable(solver.preconditioner):
            raise ValueError("`preconditioner` must be a callable "
                             "`preconditioner(fun, params, args, operator) -> (v -> M⁻¹v)` "
                             f"or None; got {solver.preconditioner!r}.")
        # Silently dropping it would hide a configuration mistake: the dense path solves by
        # SVD and has no iterative solve to precondition. ("auto" may still pick the dense
        # path for a small problem; there the preconditioner is simply unused.)
        if solver.linear_solver == "dense":
            raise ValueError("`preconditioner` applies to the matrix-free inner solve only; "
                             "use linear_solver='cg' (or 'auto') with it, or drop it.")
    precision = getattr(solver, "precision", None)
    if precision is not None:
        if not callable(getattr(precision, "wrap_objective", None)):
            raise ValueError("`precision` must be a jaxopt2.MixedPrecision(compute_dtype) or "
                             f"None; got {precision!r}.")
        if getattr(precision, "curvature", None) is not None:
            raise ValueError("`precision`: a least-squares solver's products are J v and Jᵀu "
                             "of the residuals; MixedPrecision's `curvature` (a Hessian-like "
                             "operator for minimizers) does not apply here: leave it None.")
        if solver.preconditioner is not None:
            raise ValueError("`precision` and `preconditioner` together are not supported "
                             "yet: drop one of them (the preconditioned inner solve updates "
                             "its residual from products that MixedPrecision would round).")
        # The dense path factors J by LAPACK, which has no half-precision routines.
        if solver.linear_solver == "dense":
            raise ValueError("`precision` applies to the matrix-free inner solve only (J v and "
                             "Jᵀu products in the low dtype); use linear_solver='cg' (or "
                             "'auto', which then always takes the matrix-free path) with it.")


def use_dense(linear_solver: str, y, f, precision=None) -> bool:
    """Static choice of the inner solve from the problem's shapes (always matrix-free with a
    `MixedPrecision`)."""
    if precision is not None:
        return False
    if linear_solver != "auto":
        return linear_solver == "dense"
    n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(y))
    m = sum(leaf.size for leaf in jax.tree_util.tree_leaves(f))
    return n <= DENSE_MAX_PARAMS and m * n <= DENSE_MAX_ENTRIES


def working_dtype(y, f):
    """The precision the solver works in: the widest float among parameters and residuals
    (a float32 problem stays float32)."""
    leaves = jax.tree_util.tree_leaves((y, f))
    return jnp.result_type(*leaves)


def tolerances(solver, dtype):
    """(ftol, xtol, gtol) with `None` replaced by √eps of the working dtype."""
    root_eps = float(jnp.finfo(dtype).eps) ** 0.5
    pick = lambda v: root_eps if v is None else float(v)  # noqa: E731
    return pick(solver.ftol), pick(solver.xtol), pick(solver.gtol)


def cg_budget(solver, n: int) -> int:
    return min(2 * n, 200) if solver.cg_max_steps is None else solver.cg_max_steps


# --- dense path -------------------------------------------------------------------------------


def flat_problem(fn, y, args, dtype):
    """`x0, unravel, rflat` with rflat(x) the raveled residual of the raveled parameters."""
    x0, unravel = ravel(y)
    x0 = x0.astype(dtype)

    def rflat(x):
        return ravel(fn(unravel(x), args)[0])[0].astype(dtype)

    return x0, unravel, rflat


def dense_jacobian(rflat, x, m: int):
    """J = ∂r/∂x by forward mode when n ≤ m (n products), else reverse mode (m products)."""
    n = x.size
    return (jax.jacfwd if n <= m else jax.jacrev)(rflat)(x)


class ScaledSVD(eqx.Module):
    """J D⁻¹ = U S Vᵀ at the current point, kept without U: `c` = Uᵀr is all that the step
    needs, and ‖J p‖ follows from S and Vᵀ(D p)."""

    s: jax.Array  # (k,) singular values, k = min(m, n)
    vt: jax.Array  # (k, n)
    c: jax.Array  # (k,) Uᵀ r
    rank_tol: jax.Array  # singular values at or below this are treated as zero
    u: jax.Array | None  # (m, k), kept only when a second right-hand side is needed


def scaled_svd(jac, diag, r, keep_u: bool = False) -> ScaledSVD:
    u, s, vt = jnp.linalg.svd(jac / diag, full_matrices=False)
    m, n = jac.shape
    tol = jnp.max(s, initial=0.0) * max(m, n) * jnp.finfo(s.dtype).eps
    return ScaledSVD(s, vt, u.T @ r, tol, u if keep_u else None)


def svd_coefficients(svd: ScaledSVD, lam, c=None):
    """b = Vᵀ(D p) for the damped solution of min ‖J p + ρ‖² + λ‖D p‖² with Uᵀρ = c
    (default ρ = r): b = −S(S² + λ)⁻¹c; at λ = 0 the minimum-norm Gauss-Newton step −S⁺c
    (directions with zero singular value get no component: a rank-deficient J is fine)."""
    c = svd.c if c is None else c
    live = svd.s > svd.rank_tol
    denom = svd.s**2 + lam
    denom = jnp.where(live & (denom > 0), denom, 1.0)
    return jnp.where(live, -svd.s * c / denom, 0.0)


def model_decrease(svd: ScaledSVD, b):
    """‖r‖² − ‖r + J p‖² for the step with Vᵀ(D p) = b (p in the row space of J D⁻¹)."""
    sb = svd.s * b
    return -2.0 * jnp.dot(svd.c, sb) - jnp.dot(sb, sb)


# Entries of `lm_solve`'s packed output.
LM_LAM, LM_NORM, LM_DECREASE, LM_SB2 = 3, 4, 5, 6


def lm_solve(s, c, rank_tol, n: int, delta, lam_prev, max_iters: int = 10):
    """The Levenberg-Marquardt parameter λ ≥ 0 for the region ‖D p‖ ≤ Δ (Moré 1978, §5), with
    ‖D p(λ)‖, ‖r‖² − ‖r + J p(λ)‖² and ‖S b‖², packed in one vector (entries `LM_LAM`,
    `LM_NORM`, `LM_DECREASE`, `LM_SB2`).

    λ = 0 when the Gauss-Newton step has ‖D p‖ ≤ 1.1Δ. Otherwise Newton's method on
    φ(λ) = 1/Δ − 1/‖D p(λ)‖ (nearly linear in λ), safeguarded by bounds l ≤ λ ≤ u that shrink
    with the sign of φ, stopped when |‖D p‖ − Δ| ≤ 0.1Δ. With the SVD each φ(λ) is O(k), so
    the iteration costs nothing next to forming J.

    One while loop does all of it: trip 0 evaluates φ at λ = 0 (the Gauss-Newton step, and
    the safeguards l, u), the next trips are Moré's iterations, and a last trip evaluates the
    final λ when the iteration budget ran out. Each trip is a single reduction over the k
    singular values, so on small problems XLA:CPU compiles the loop as one kernel.
    """
    dtype = s.dtype
    tiny = jnp.finfo(dtype).tiny
    full_rank = s.shape[0] == n
    zero = jnp.zeros((), dtype)

    def evaluate(lam):
        """‖D p‖, d‖D p‖/dλ, the model decrease and ‖S b‖² at λ, with ‖D⁻¹Jᵀr‖ and whether
        no singular value is zero: one reduction."""
        live = s > rank_tol
        s2 = jnp.where(live, s**2, 1.0)
        w2 = jnp.where(live, (s * c) ** 2, 0.0)
        denom = jnp.where(lam > 0, s2 + lam, s2)
        terms = jnp.stack([w2 / denom**2, w2 / denom**3, w2 / denom, w2 * s2 / denom**2, w2,
                           jnp.where(live, 0.0, 1.0)])
        sq, cube, lin, sb2, g2, dead = jnp.sum(terms, axis=1)
        norm = jnp.sqrt(sq)
        dnorm = -cube / jnp.where(norm > 0, norm, 1.0)
        # Uᵀr = c, S b = −S²(S² + λ)⁻¹c: ‖r‖² − ‖r + J p‖² = −2cᵀSb − ‖Sb‖².
        return norm, dnorm, 2.0 * lin - sb2, sb2, jnp.sqrt(g2), dead == 0

    def step(lam, lower, upper, k):
        setup = k == 0
        final = k > max_iters  # the budget ran out: evaluate the last λ, change nothing
        outside = (lam <= lower) | (lam >= upper)
        guarded = jnp.where(outside, jnp.maximum(0.001 * upper, jnp.sqrt(lower * upper)), lam)
        guarded = jnp.maximum(guarded, tiny)
        lam_eval = jnp.where(setup, zero, jnp.where(final, lam, guarded))
        norm, dnorm, decrease, sb2, gnorm, no_dead = evaluate(lam_eval)
        phi = norm - delta
        # Trip 0: λ = 0 is the answer when the Gauss-Newton step lies within 1.1Δ; otherwise
        # the safeguards and the starting λ (Moré 1978, §5).
        gn_inside = phi <= 0.1 * delta
        # The Newton step from λ = 0 underestimates the root (φ is convex) when J has full rank.
        lower0 = jnp.where(full_rank & no_dead & (dnorm < 0),
                           -phi / jnp.where(dnorm < 0, dnorm, -1.0), 0.0)
        upper0 = gnorm / delta
        upper0 = jnp.where(upper0 > 0, upper0, tiny / jnp.minimum(delta, 0.1))
        lam0 = jnp.clip(lam_prev, lower0, upper0)
        lam0 = jnp.where(lam0 > 0, lam0, gnorm / jnp.where(norm > 0, norm, 1.0))
        # Moré's safeguarded Newton iteration.
        stop = jnp.abs(phi) <= 0.1 * delta
        lower1 = jnp.where(phi > 0, jnp.maximum(lower, lam_eval), lower)
        upper1 = jnp.where(phi < 0, jnp.minimum(upper, lam_eval), upper)
        newton = -(phi / jnp.where(dnorm < 0, dnorm, -1.0)) * (norm / delta)
        lam1 = jnp.where(stop, lam_eval, jnp.maximum(lower1, lam_eval + newton))
        done = jnp.where(setup, gn_inside, stop | final)
        lam = jnp.where(setup, lam0, jnp.where(final, lam_eval, lam1))
        lower = jnp.where(setup, lower0, lower1)
        upper = jnp.where(setup, upper0, upper1)
        # One packed vector instead of seven scalars: one fusion writes the whole carry.
        out = jnp.stack([lam, lower, upper, jnp.where(done & ~setup, lam_eval, zero), norm,
                         decrease, sb2])
        return out, k + 1, done

    def cond(carry):
        return ~carry[2]

    def body(carry):
        (lam, lower, upper, *_), k, _ = carry
        return step(lam, lower, upper, k)

    init = (jnp.stack([jnp.asarray(lam_prev, dtype), zero, zero, zero, zero, zero, zero]),
            jnp.zeros((), jnp.int32), jnp.array(False))
    return while_loop(cond, body, init, max_steps=max_iters + 2)[0]


def column_cosine(jac, r, rnorm):
    """max_j |J_jᵀ r| / (‖J_j‖ ‖r‖) over the nonzero columns: the cosine of the angle between
    r and the columns of J (MINPACK's gtol measure; 0 at a stationary point)."""
    colnorm = jnp.linalg.norm(jac, axis=0)
    cos = jnp.abs(jac.T @ r) / jnp.where(colnorm > 0, colnorm * rnorm, 1.0)
    cos = jnp.where((colnorm > 0) & (rnorm > 0), cos, 0.0)
    return jnp.max(cos, initial=0.0), colnorm


# --- matrix-free path -------------------------------------------------------------------------


def linearize(fn, y, args):
    """`(r, J·, Jᵀ·)` at y from one evaluation of fn; the transpose of the linearization is
    the vector-Jacobian product, so both share the stored forward pass."""
    r, jvp = jax.linearize(lambda p: fn(p, args)[0], y)
    transpose = jax.linear_transpose(jvp, y)
    return r, jvp, lambda u: transpose(u)[0]


def precision_floor(eta, precision):
    """The inner solve's relative tolerance, no smaller than what products in a
    `MixedPrecision`'s dtype resolve (its eps; unchanged without one)."""
    if precision is None:
        return eta
    return jnp.maximum(eta, jnp.asarray(precision.forcing_floor, eta.dtype))


def _cast(tree, dtype):
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def linearize_mixed(fn, y, args, precision):
    """`(r, J·, Jᵀ·, Jᵀ· at full precision)` for `MixedPrecision`: r and the full-precision
    vjp from one evaluation at y's dtype (the gradient Jᵀr that the stopping test reads), and
    the products the inner solve repeats (J v, Jᵀu) from a linearization at y, v, u and the
    data cast to `precision.compute_dtype`, returned in y's and r's dtypes. `fn` is the
    objective converted by `MixedPrecision.wrap_objective`, which evaluates the low-precision
    copy when called with low-precision parameters."""
    low = jnp.dtype(precision.compute_dtype)
    r, vjp_full = jax.vjp(lambda p: fn(p, args)[0], y)
    low_args = _cast(args, low) if precision.cast_args else args
    y_low = _cast(y, low)
    # The output is cast too: a residual that closes over full-precision arrays promotes to
    # their dtype, and the transpose takes cotangents in the output's dtype.
    r_low, jvp_low = jax.linearize(lambda p: _cast(fn(p, low_args)[0], low), y_low)
    transpose = jax.linear_transpose(jvp_low, y_low)

    def back(out, like_tree):
        out = jax.tree_util.tree_map(lambda o, p: o.astype(p.dtype), out, like_tree)
        return like(out, like_tree)

    # Linear maps: cast their inputs at a power-of-two scale (exact), so that the small
    # directions of a converging solve do not underflow float16's range.
    def jvp(v):
        scale = pow2_scale(v)
        out = jvp_low(_cast(jax.tree_util.tree_map(lambda a: a / scale, v), low))
        return back(jax.tree_util.tree_map(lambda o: o.astype(scale.dtype) * scale, out), r)

    def vjp(u):
        scale = pow2_scale(u)
        out = transpose(_cast(jax.tree_util.tree_map(lambda a: a / scale, u), low))[0]
        return back(jax.tree_util.tree_map(lambda o: o.astype(scale.dtype) * scale, out), y)

    del r_low
    return r, jvp, vjp, lambda u: vjp_full(u)[0]


# --- preconditioned matrix-free path ----------------------------------------------------------

_SYM_PSD = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


def normal_operator(jvp, vjp, structure) -> lx.FunctionLinearOperator:
    """AᵀA as a lineax operator (symmetric, PSD) from A = J D⁻¹'s products: one jvp and one
    vjp of the stored linearization per product, vmappable over a batch of vectors.

    Gradients are stopped: the operator only builds a preconditioner, which steers the inner
    solve (the exact solution does not depend on it), so under unrolled differentiation it is
    treated as a constant, as is usual; differentiating a sketch's QR, Cholesky and SVD would
    cost work and give NaN at repeated eigenvalues."""
    def mv(z):
        return lax.stop_gradient(vjp(jvp(z)))

    return lx.FunctionLinearOperator(mv, structure, tags=_SYM_PSD)


def build_preconditioner(preconditioner, fn, y, args, lin, lam) -> tuple[Callable, Counts]:
    """M⁻¹ ≈ (AᵀA + λI)⁻¹ for the damped normal equations of `lin` (A = J D⁻¹, z = D p) and
    the products its construction cost (as `num_jvp`/`num_vjp`).

    The protocol is NewtonCG's, `preconditioner(fun, params, args, operator)`, here in the
    variables CGLS works in: `fun(z, args) = ½‖r(D⁻¹z)‖²`, `params = D y` and `operator` =
    AᵀA, the Gauss-Newton curvature of `fun` at `params`.

    A `NystromPreconditioner` is built with μ = its `mu` + λ, i.e. for AᵀA + λI, the system
    CGLS solves (Frangella, Tropp & Udell 2023, where μ is the regulariser). The
    sketch of AᵀA itself does not depend on λ; μ only sets the flat part of P⁻¹, which with a
    large λ (far from a solution, after rejected steps) keeps the captured eigenvalues from
    being scaled below the damped tail. Its `rank` products (min(rank, n)) are counted. A
    custom preconditioner is called as is and its own products are not counted."""
    tmap = jax.tree_util.tree_map
    structure = jax.eval_shape(lambda: lin.g)
    op = normal_operator(lin.jvp, lin.vjp, structure)
    if isinstance(preconditioner, NystromPreconditioner):
        rank = min(preconditioner.rank, tree_size(y))
        mu = jnp.asarray(preconditioner.mu, lin.rnorm.dtype) + lam
        apply = nystrom_preconditioner(op, rank, preconditioner.prng_key(), mu)
        return apply, Counts.of(jvp=rank, vjp=rank)

    def objective(z, a):
        f = fn(tmap(jnp.divide, z, lin.diag), a)[0]
        return 0.5 * tree_dot(f, f)

    z = tmap(jnp.multiply, lin.diag, y)
    return preconditioner(objective, z, args, op), Counts()


def inner_solver(preconditioner, fn, y, args, lin, lam, *, rtol, max_iters: int, dtype):
    """`(solve, counts)`: `solve(r, g) -> (CGLSResult, broken)` solves the damped normal
    equations (AᵀA + λI) x = −g of `lin` (A = J D⁻¹) for the right-hand side ρ, g = Aᵀρ, and
    `counts` is what building it cost. Without a preconditioner this is exactly `cgls` (and
    `broken` is None), so that path's program is unchanged; with one, M⁻¹ is built once here
    and shared by every solve with this A and λ (LM's geodesic correction included)."""
    if preconditioner is None:
        inner = cgnr if lin.mixed else cgls

        def solve(r, g):
            return inner(lin.jvp, lin.vjp, r, g, lam, rtol=rtol, max_iters=max_iters,
                         dtype=dtype), None

        return solve, Counts()
    precond, counts = build_preconditioner(preconditioner, fn, y, args, lin, lam)

    def solve(r, g):
        return pcgls(lin.jvp, lin.vjp, r, g, lam, precond, rtol=rtol, max_iters=max_iters,
                     dtype=dtype)

    return solve, counts


PROBES = 4


def column_norms_estimate(vjp, r):
    """‖J e_j‖ estimated from `PROBES` products Jᵀu with fixed Rademacher u (Hutchinson's
    diagonal estimator: E[(Jᵀu)_j²] = ‖J e_j‖²). Relative error about √(2/probes) per column,
    plenty for a diagonal scaling; the probes are fixed so that the solve is deterministic."""
    leaves, treedef = jax.tree_util.tree_flatten(r)
    keys = jax.random.split(jax.random.PRNGKey(0), max(len(leaves), 1))
    # Sharded like r (over Explicit mesh axes a vjp's cotangent must match its output's type).
    probes = [jax.random.rademacher(k, (PROBES, *leaf.shape), leaf.dtype, **sharded_like(leaf))
              for k, leaf in zip(keys, leaves, strict=False)]
    products = jax.vmap(lambda u: vjp(jax.tree_util.tree_unflatten(treedef, u)))(probes)
    return jax.tree_util.tree_map(lambda v: jnp.sqrt(jnp.mean(v**2, axis=0)), products)


def rayleigh_norm(jvp, g, dtype):
    """‖J g‖ / ‖g‖: a lower bound on ‖J‖₂ along the gradient (one jvp). It stands in for the
    column norms in the matrix-free gradient test, which is then only stricter."""
    jg = jvp(g)
    gg = tree_dot(g, g).astype(dtype)
    return jnp.sqrt(tree_dot(jg, jg).astype(dtype) / jnp.where(gg > 0, gg, 1.0))


class ScaledLinearization(eqx.Module):
    """Matrix-free view of A = J D⁻¹ at the current point (z = D p coordinates)."""

    r: Any
    jvp: Any  # z -> A z
    vjp: Any  # u -> Aᵀ u
    diag: Any  # D, a pytree like y
    g: Any  # Aᵀ r = D⁻¹ Jᵀ r
    rnorm: jax.Array
    gnorm: jax.Array
    jnorm: jax.Array  # ‖A g‖/‖g‖
    cos: jax.Array  # ‖g‖ / (‖A g‖/‖g‖ · ‖r‖): the gradient-cosine stand-in
    counts: Any
    mixed: bool = eqx.field(static=True, default=False)  # products in a MixedPrecision dtype


def cgnr(jvp, vjp, r, g, lam, *, rtol, max_iters: int, dtype) -> CGLSResult:
    """CG on the damped normal equations (AᵀA + λI) x = −g with the normal residual updated
    by recurrence, s ← s − α(Aᵀ(A d) + λd): the inner solve of `MixedPrecision`. `cgls`
    recomputes s = Aᵀ(−r − Ax) from the residual-space vector, whose low-precision product
    errs by δ‖A‖‖r‖, which on a problem with a nonzero residual at the solution swamps
    ‖g‖ there; here every product acts on a search direction, so its error is relative to
    the step, and the full-precision g (the start s₀ = −g) is kept. Same stopping test and
    result as `cgls`; ‖r + Ax‖² is ‖r‖² + gᵀx − λ‖x‖² (from zᵀ(AᵀA + λ)z = −gᵀz for CG
    iterates), with no residual-space vector."""
    gnorm = jnp.sqrt(tree_dot(g, g)).astype(dtype)
    tol = rtol * gnorm

    def cond(c):
        *_, k, stop = c
        return ~stop & (k < max_iters)

    def body(c):
        x, s, d, gamma, k, _ = c
        t = jvp(d)
        delta = (tree_dot(t, t) + lam * tree_dot(d, d)).astype(dtype)
        flat = delta <= 0
        alpha = jnp.where(flat, 0.0, gamma / jnp.where(flat, 1.0, delta))
        x = tree_axpy(alpha, d, x)
        s = tree_axpy(-alpha, tree_axpy(lam, d, vjp(t)), s)
        gamma_new = tree_dot(s, s).astype(dtype)
        d = tree_axpy(gamma_new / jnp.where(gamma > 0, gamma, 1.0), d, s)
        stop = flat | (jnp.sqrt(gamma_new) <= tol)
        return x, s, d, gamma_new, k + 1, stop

    s0 = tree_neg(g)
    init = (tree_zeros_like(g), s0, s0, (gnorm * gnorm).astype(dtype),
            jnp.zeros((), jnp.int32), gnorm <= 0)
    x, _, _, _, k, _ = while_loop(cond, body, init, max_steps=max_iters)
    rr = tree_dot(r, r).astype(dtype)
    model = rr + tree_dot(g, x).astype(dtype) - lam * tree_dot(x, x).astype(dtype)
    return CGLSResult(x, jnp.maximum(model, 0.0), k)


def scaled_linearization(fn, y, args, diag_prev, scale: bool, dtype,
                         precision=None) -> ScaledLinearization:
    """Linearize at y and scale by D = max(D_prev, estimated column norms) (zeros → 1; D = I
    with `scale=False`). CGLS on J D⁻¹ is Jacobi-preconditioned CG on the normal equations,
    which keeps badly scaled parameters from stalling a truncated inner solve. With a
    `MixedPrecision` (`precision`), the products (column norms, the inner solve's J v and
    Jᵀu) run in its low dtype and only the gradient g = D⁻¹Jᵀr in y's (one more residual
    evaluation, counted)."""
    if precision is None:
        r, jvp0, vjp0 = linearize(fn, y, args)
        vjp_full = vjp0
    else:
        r, jvp0, vjp0, vjp_full = linearize_mixed(fn, y, args, precision)
    tmap = jax.tree_util.tree_map
    if scale:
        est = column_norms_estimate(vjp0, r)
        diag = tmap(jnp.maximum, diag_prev, est)
        diag = tmap(lambda d: jnp.where(d > 0, d, jnp.ones_like(d)), diag)
    else:
        diag = tmap(jnp.ones_like, diag_prev)
    jvp = lambda z: jvp0(tmap(jnp.divide, z, diag))  # noqa: E731
    vjp = lambda u: tmap(jnp.divide, vjp0(u), diag)  # noqa: E731
    g = tmap(jnp.divide, vjp_full(r), diag)
    rnorm = jnp.sqrt(tree_dot(r, r)).astype(dtype)
    gnorm = jnp.sqrt(tree_dot(g, g)).astype(dtype)
    jnorm = rayleigh_norm(jvp, g, dtype)
    cos = gnorm / jnp.where(jnorm * rnorm > 0, jnorm * rnorm, 1.0)
    counts = Counts.of(fun=1 if precision is None else 2, vjp=1 + (PROBES if scale else 0),
                       jvp=1)
    return ScaledLinearization(r, jvp, vjp, diag, g, rnorm, gnorm, jnorm, cos, counts,
                               precision is not None)


# --- stopping tests ---------------------------------------------------------------------------


def reductions(rnorm, rnorm_new, predicted_sq):
    """MINPACK's relative reductions of ‖r‖²: `actual` = 1 − (‖r₊‖/‖r‖)² (−1 when the
    residual grew tenfold or is not finite), `predicted` = the model's decrease of ‖r‖² over
    ‖r‖², and their ratio ρ by `jaxopt2._trust_region.reduction_ratio` in MINPACK's signed
    form (0 when nothing is predicted or ρ is not finite)."""
    safe = jnp.where(rnorm > 0, rnorm, 1.0)
    grew = ~(0.1 * rnorm_new < rnorm)  # also True for NaN
    actual = jnp.where(grew, -1.0, 1.0 - (rnorm_new / safe) ** 2)
    predicted = predicted_sq / safe**2
    return actual, predicted, reduction_ratio(actual, predicted, any_sign=True)


def ftol_test(actual, predicted, ratio, tol):
    """Both the actual and the predicted relative reductions of ‖r‖² are at most `tol`."""
    return (jnp.abs(actual) <= tol) & (predicted <= tol) & (ratio <= 2.0)


def at_floor(rnorm, dtype):
    """r = 0 exactly, or ‖r‖² underflows: nothing left to reduce."""
    return rnorm**2 <= jnp.finfo(dtype).tiny


def stalled_success(cos, rnorm, rnorm0, dtype):
    """Whether a solve that can no longer make progress (tolerances below what the dtype
    resolves, or no decrease found) is nonetheless converged: the residual is nearly
    orthogonal to the range of J (cos ≤ eps^¼) or was reduced to √eps of its start."""
    eps = jnp.finfo(dtype).eps
    return (cos <= eps**0.25) | (rnorm <= jnp.sqrt(eps) * rnorm0)
