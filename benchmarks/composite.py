"""Composite (lasso) and bound-constrained problems (NNLS, box-constrained logistic regression):
ProximalNewton, ProximalGradient, LBFGSB and ProjectedNewtonCG against scikit-learn, jaxopt and
SciPy, side by side in one process, float64, single-threaded (`single_thread.py`).

    python benchmarks/composite.py            # full sizes; writes its RESULTS.md section
    python benchmarks/composite.py --quick    # small sizes, prints only

Problems (fixed seeds):

- **lasso**: X (n × d, n = 10,000, d = 2,000) Gaussian with AR(1) column correlation 0.5, a true
  w with 5% nonzeros, y = Xw + noise (SNR about 10); F(w) = ‖y − Xw‖²/(2n) + λ‖w‖₁ with
  λ = 0.05·λ_max and 0.005·λ_max, λ_max = ‖Xᵀy‖∞/n (the smallest λ with w* = 0).
  Target: duality gap ≤ 1e-8·F(0), computed for every method by the same function (`lasso_gap`):
  the dual point is the residual r = y − Xw rescaled into the dual feasible set,
  ν = r / max(1, ‖Xᵀr‖∞/(nλ)), D(ν) = (yᵀν − ‖ν‖²/2)/n, gap = F(w) − D(ν) ≥ 0 (zero exactly at
  the solution).
- **NNLS**: A (5,000 × 1,000) Gaussian with AR(1) column correlation 0.9, b = A x₀ + noise
  with half of x₀ negative; f(x) = ‖Ax − b‖²/2, x ≥ 0. A second, ill-conditioned instance
  scales column j by 10^(−2j/d) (cond(A) about 100× larger).
- **box logistic**: n = 20,000, d = 500, features with log-spaced scales (Hessian condition
  number about 1e3 at 0), mean logistic loss + (1e-3/2)‖w‖², −c ≤ w ≤ c with c the 2/3-quantile of
  |w| at the unconstrained minimizer, so that about a third of the bounds are active at the
  solution (the actual number is counted at the best solution found and reported).
  Target for both: ‖x − P(x − ∇f(x))‖∞ ≤ 1e-8·‖x₀ − P(x₀ − ∇f(x₀))‖∞ (relative to the
  projected gradient at the start x₀ = 0), by one common jitted function (`pg_norm`).

The lasso is also run by our two solvers in Gram form, f(w) = ½wᵀGw − bᵀw + c with
G = XᵀX/n (`gram_loss`), as scikit-learn's `precompute=` does: each product costs d² instead of
2nd; XᵀX is formed once outside every timing (its time is printed in the notes).
The NNLS problems are also run by ProjectedNewtonCG with `hessian_block` (`nnls_block`): its
dense free-variable block A_FᵀA_F from the rows of Aᵀ (stored once, as Fortran-ordered X is for
scikit-learn), n·|F|² work instead of |F| batched Hessian-vector products (n·d·|F|).

Tolerances: every method that has a tolerance gets the loosest value of a ladder (tried loosest
first) that meets the common target, found by calibration runs, the last of which is the first
timed call: scikit-learn `Lasso.tol` (it stops when its duality gap, on n·F, is ≤ tol·‖y‖², i.e.
gap ≤ 2·tol·F(0), so tol = ½·1e-8 is exactly our target; lower rungs in case its coordinate-
change test stops it first), jaxopt `tol` (its fixed-point residual norm), our `rtol` (the shared
distance-to-solution rule on the gradient mapping) for the lasso; for the bound problems our
LBFGSB and ProjectedNewtonCG run with `rtol=0, atol=target·k`, k = 1, 0.1, 0.01, and the first
rung (k = 1) is also the honesty check: a "successful" status there at a point that fails the
common projected-gradient test is printed and reported. SciPy L-BFGS-B gets `pgtol` = the target
(the same ∞-norm projected gradient) and `ftol=0`; scipy `nnls` has no tolerance.

Timing as `harness.py`: compile (trace + lower + XLA) apart from run; run = median of up to 3
calls of the compiled function (a first call under 1 s is a warm-up); SciPy gets jitted JAX
value-and-grad callbacks. Counts are what each library reports.
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
from single_thread import PINNED_CPU
# isort: on

import argparse
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from harness import (  # noqa: E402
    Config,
    Result,
    Timed,
    compile_jax,
    cpu_name,
    guarded,
    measure,
    timed,
    write_section,
)
from ours import status_name  # noqa: E402

import jaxopt2  # noqa: E402

RTOL = 1e-8
LAM_LOGISTIC = 1e-3


# ------------------------------------------------------------------------------- problems


def ar1_features(rng, n, d, rho):
    """Gaussian columns with corr(X_i, X_j) = rho^|i−j| (an AR(1) process along the columns)."""
    X = np.empty((n, d))
    X[:, 0] = rng.standard_normal(n)
    for j in range(1, d):
        X[:, j] = rho * X[:, j - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    return X


def lasso_data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = ar1_features(rng, n, d, 0.5)
    w = np.zeros(d)
    support = rng.choice(d, size=max(1, d // 20), replace=False)
    w[support] = rng.standard_normal(support.size)
    signal = X @ w
    y = signal + rng.standard_normal(n) * np.std(signal) / np.sqrt(10.0)
    return X, y


def lasso_loss(w, data):
    r = data["y"] - data["X"] @ w
    return 0.5 * jnp.mean(r**2)


@jax.jit
def _gap(w, X, y, lam):
    n = X.shape[0]
    r = y - X @ w
    primal = 0.5 * (r @ r) / n + lam * jnp.sum(jnp.abs(w))
    nu = r / jnp.maximum(1.0, jnp.max(jnp.abs(X.T @ r)) / (n * lam))
    dual = (y @ nu - 0.5 * (nu @ nu)) / n
    return primal - dual, primal


def lasso_gap(w, X, y, lam):
    """(duality gap, F(w)) with the rescaled-residual dual point (module docstring)."""
    gap, primal = _gap(jnp.asarray(w, jnp.float64), X, y, lam)
    return float(gap), float(primal)


def data_block(w, data, index):
    """H[W, W] of `lasso_loss` for `ProximalNewton(inner="cd", hessian_block=)`: X_WᵀX_W/n
    (n·|W|² work, the columns of the working set only), from the rows of Xᵀ (`data["XT"]`,
    stored once as scikit-learn stores X in Fortran order: gathering rows is several times
    faster than gathering columns)."""
    XW = data["XT"][index]
    return XW @ XW.T / data["X"].shape[0]


def gram_block(w, data, index):
    """H[W, W] of `gram_loss`: a block of G (columns, then rows, of the sorted `index`).

    The order matters under XLA on CPU: `G[index][:, index]` (rows first) compiles its column
    gather into strided reads and two transposes, and made a 2,000-column epoch of coordinate
    descent 85 ms against 10 ms for `G[:, index][index]` (3.8 ms with the block given)."""
    return data["G"][:, index][index]


def gram_loss(w, data):
    """The same F's smooth part from G = XᵀX/n, b = Xᵀy/n, c = ‖y‖²/(2n): d² work per
    product instead of 2nd, the form glmnet's "covariance updates" use when n ≫ d."""
    return 0.5 * (w @ (data["G"] @ w)) - data["b"] @ w + data["c"]


def nnls_data(n, d, seed=1, spread=0.0):
    """`spread` > 0 scales column j by 10^(−spread·j/d): cond(A) grows by about 10^spread."""
    rng = np.random.default_rng(seed)
    A = ar1_features(rng, n, d, 0.9) * np.logspace(0, -spread, d)
    x0 = rng.standard_normal(d)
    b = A @ x0 + 0.1 * rng.standard_normal(n)
    return A, b


def nnls_loss(x, data):
    r = data["A"] @ x - data["b"]
    return 0.5 * (r @ r)


def nnls_block(x, data, index):
    """∇²f[F, F] of `nnls_loss` for `ProjectedNewtonCG(hessian_block=)`: A_FᵀA_F from the rows
    of Aᵀ (`data["AT"]`, stored once: gathering rows is faster than gathering columns)."""
    rows = data["AT"][index]
    return rows @ rows.T


def logistic_data(n, d, seed=2):
    rng = np.random.default_rng(seed)
    s = np.logspace(0, -1.5, d)  # Hessian eigenvalues ~ s²/4 + λ: condition number ~1e3
    X = rng.standard_normal((n, d)) * s
    w = rng.standard_normal(d) / s
    w *= 3.0 / np.std(X @ w)
    y = (X @ w + rng.logistic(size=n) > 0).astype(np.float64)
    return X, y


def logistic_loss(w, data):
    z = data["X"] @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - data["y"] * z) + 0.5 * LAM_LOGISTIC * (w @ w)


class Bounded:
    """A smooth f on lo ≤ x ≤ hi with the common projected-gradient check."""

    def __init__(self, name, fun, data, lo, hi, d):
        self.name, self.fun, self.data, self.d = name, fun, data, d
        self.lo, self.hi = lo, hi
        self.x0 = jnp.zeros(d)
        self._grad = jax.jit(jax.grad(fun))
        self.pg0 = self.pg_norm(self.x0)

    def pg_norm(self, x):
        x = jnp.asarray(x, jnp.float64)
        g = self._grad(x, self.data)
        return float(jnp.max(jnp.abs(x - jnp.clip(x - g, self.lo, self.hi))))

    def rel(self, x) -> float:
        return self.pg_norm(x) / self.pg0

    @property
    def target(self) -> float:
        return RTOL * self.pg0

    def active(self, x) -> int:
        x = np.asarray(x)
        lo = np.broadcast_to(self.lo, x.shape)
        hi = np.broadcast_to(self.hi, x.shape)
        return int(np.sum((x <= lo) | (x >= hi)))


# -------------------------------------------------------------------------- calibration


def ladder_run(make, tols, check):
    """`make(tol)` -> (call, compile_s, parts); run once per tolerance, loosest first, until
    `check(out)` is True. Returns (tol, Timed of that run, the call, compile_s, parts, tried)."""
    tried = []
    for tol in tols:
        call, compile_s, parts = make(tol)
        run = timed(call)
        ok = check(run.out)
        tried.append(tol)
        if ok:
            return tol, run, call, compile_s, parts, tried
    return tol, run, call, compile_s, parts, tried


def fill(res: Result, times_first: Timed, call, cfg, compile_s, parts, reached, rel):
    times = measure(call, cfg, first=times_first)
    res.run_s = float(np.median(times.wall))
    res.run_cpu_s = float(np.median(times.cpu))
    res.runs = len(times.wall)
    res.compile_s, res.compile_parts = compile_s, parts
    res.reached, res.rel_grad = reached, rel
    return res, times.out


def jax_make(solve, data):
    def make(tol):
        compiled, compile_s, parts = compile_jax(lambda dd: solve(dd, tol), data)
        return (lambda: compiled(data)), compile_s, parts
    return make


# ---------------------------------------------------------------------------------- lasso


def run_lasso(X_np, y_np, lam, cfg, quick):
    X, y = jnp.asarray(X_np), jnp.asarray(y_np)
    data = {"X": X, "y": y, "XT": jnp.asarray(np.ascontiguousarray(X_np.T))}
    n_rows = X.shape[0]
    f0 = 0.5 * float(y @ y) / n_rows
    target = RTOL * f0
    d = X.shape[1]

    def gap_of(w):
        return lasso_gap(w, X, y, lam)[0]

    rows, best_w = [], None

    # XᵀX once, outside every timing: scikit-learn's precompute= and our Gram-form rows.
    t_gram = timed(lambda: X_np.T @ X_np)
    XtX = t_gram.out
    gram_data = {"G": jnp.asarray(XtX / X_np.shape[0]), "b": jnp.asarray(X_np.T @ y_np / n_rows),
                 "c": jnp.asarray(f0)}

    def ours(label, solver_cls, max_steps, gram=False, cd=False):
        loss, dat = (gram_loss, gram_data) if gram else (lasso_loss, data)
        kw = {}
        if cd:  # ProximalNewton(inner="cd") with the block H[W, W] of the working set W
            kw = dict(inner="cd", hessian_block=gram_block if gram else data_block)

        def solve(dd, tol):
            sol = jaxopt2.minimize(loss, jnp.zeros(d), dd, solver=solver_cls(rtol=tol, **kw),
                                   max_steps=max_steps, throw=False, prox=jaxopt2.prox.l1,
                                   prox_args=lam)
            return sol.params, (sol.status._value, sol.stats)

        tols = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
        tol, first, call, cs, parts, tried = ladder_run(
            jax_make(solve, dat), tols, lambda out: gap_of(out[0]) <= target)
        w, (code, stats) = first.out
        stats = {k: int(v) for k, v in stats.items()}
        gap = gap_of(w)
        res = Result(label, "jaxopt2", iters=stats["num_steps"], n_fun=stats["num_fun"],
                     n_grad=stats["num_grad"], n_hvp=stats["num_hvp"],
                     status=status_name(int(code)), note=f"rtol={tol:g}")
        if cd:
            res.note += ("; inner=\"cd\", hessian_block = " + (
                "G[:, W][W]" if gram else "Xᵀ[W] (Xᵀ[W])ᵀ/n, Xᵀ stored once"))
        if gram:
            res.note += (f"; f(w) = ½wᵀGw − bᵀw + c, G = XᵀX/n formed outside the timing "
                         f"({t_gram.wall:.2f} s)")
        if res.status == "successful" and gap > target and tol == tried[-1]:
            res.note += "; successful status above the gap target"
        res, _ = fill(res, first, call, cfg, cs, parts, gap <= target, gap / f0)
        return res, w

    def jaxopt_pg():
        import jaxopt

        def solve(dd, tol):
            pg = jaxopt.ProximalGradient(fun=lasso_loss, prox=jaxopt.prox.prox_lasso, tol=tol,
                                         maxiter=20_000, acceleration=True)
            params, state = pg.run(jnp.zeros(d), lam, dd)
            return params, (state.iter_num, state.error)

        tols = (1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11)
        tol, first, call, cs, parts, _ = ladder_run(
            jax_make(solve, data), tols, lambda out: gap_of(out[0]) <= target)
        w, (it, err) = first.out
        gap = gap_of(w)
        res = Result("jaxopt ProximalGradient", "anchor", iters=int(it), n_grad=None,
                     note=f"tol={tol:g} (fixed-point residual); FISTA, backtracking")
        if int(it) >= 20_000:
            res.status = "max_steps"
        res, _ = fill(res, first, call, cfg, cs, parts, gap <= target, gap / f0)
        return res, w

    def sklearn_cd(precompute):
        from sklearn.linear_model import Lasso

        Xf = np.asfortranarray(X_np)
        gram = XtX if precompute else False

        def make(tol):
            model = Lasso(alpha=lam, fit_intercept=False, tol=tol, max_iter=100_000,
                          precompute=gram, selection="cyclic")

            def call():
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.fit(Xf, y_np)
                return model.coef_.copy(), model.n_iter_
            return call, None, None

        tols = (5e-9, 5e-10, 5e-11, 5e-12, 5e-13)
        tol, first, call, _, _, _ = ladder_run(
            make, tols, lambda out: gap_of(out[0]) <= target)
        w, it = first.out
        gap = gap_of(w)
        label = "sklearn Lasso (CD, Gram)" if precompute else "sklearn Lasso (CD)"
        note = f"tol={tol:g}"
        if precompute:
            note += f"; Gram XᵀX precomputed outside the timing ({t_gram.wall:.2f} s)"
        res = Result(label, "anchor", iters=int(it), note=note)
        res, _ = fill(res, first, call, cfg, None, None, gap <= target, gap / f0)
        return res, w

    entries = [
        ("ProximalNewton (CD)", lambda: ours("ProximalNewton (CD)", jaxopt2.ProximalNewton,
                                             200, cd=True)),
        ("ProximalNewton (CD, Gram)", lambda: ours("ProximalNewton (CD, Gram)",
                                                   jaxopt2.ProximalNewton, 200, gram=True,
                                                   cd=True)),
        ("ProximalNewton", lambda: ours("ProximalNewton", jaxopt2.ProximalNewton, 200)),
        ("ProximalGradient", lambda: ours("ProximalGradient", jaxopt2.ProximalGradient,
                                          20_000)),
        ("ProximalNewton (Gram)", lambda: ours("ProximalNewton (Gram)",
                                               jaxopt2.ProximalNewton, 200, gram=True)),
        ("ProximalGradient (Gram)", lambda: ours("ProximalGradient (Gram)",
                                                 jaxopt2.ProximalGradient, 20_000, gram=True)),
        ("jaxopt ProximalGradient", jaxopt_pg),
        ("sklearn Lasso (CD)", lambda: sklearn_cd(False)),
        ("sklearn Lasso (CD, Gram)", lambda: sklearn_cd(True)),
    ]
    for name, fn in entries:
        out = {}

        def wrapped(fn=fn, out=out):
            res, w = fn()
            out["w"] = w
            return res

        res = guarded(wrapped, name, "anchor")
        res.solver = name
        rows.append(res)
        if res.reached and best_w is None:
            best_w = out["w"]
        progress(res)
    nnz = int(np.sum(np.asarray(best_w) != 0)) if best_w is not None else None
    return rows, dict(f0=f0, nnz=nnz)


# ------------------------------------------------------------------------------ bounded


def run_bounded(prob: Bounded, cfg, with_nnls=None):
    rows, sols = [], {}
    data, d = prob.data, prob.d
    bounds = (prob.lo, prob.hi)

    def ours(label, solver_cls, max_steps, **kw):
        def solve(dd, k):
            sol = jaxopt2.minimize(prob.fun, prob.x0, dd,
                                   solver=solver_cls(rtol=0.0, atol=prob.target * k, **kw),
                                   max_steps=max_steps, throw=False, bounds=bounds)
            return sol.params, (sol.status._value, sol.stats)

        make = jax_make(solve, data)
        # Honesty: with atol = the target itself, a "successful" status must pass the common test.
        call1, cs1, parts1 = make(1.0)
        run1 = timed(call1)
        x1, (code1, _) = run1.out
        honest_rel = prob.rel(x1)
        honest = not (status_name(int(code1)) == "successful" and honest_rel > RTOL)
        print(f"  [honesty] {label}: atol=target -> status {status_name(int(code1))}, "
              f"common test {honest_rel:.2e} (target {RTOL:g}): "
              f"{'ok' if honest else 'SUCCESS AT A POINT THAT FAILS THE TEST'}", flush=True)
        if honest_rel <= RTOL:
            k, first, call, cs, parts = 1.0, run1, call1, cs1, parts1
        else:
            k, first, call, cs, parts, _ = ladder_run(
                make, (0.1, 0.01, 1e-3), lambda out: prob.rel(out[0]) <= RTOL)
        x, (code, stats) = first.out
        stats = {kk: int(v) for kk, v in stats.items()}
        rel = prob.rel(x)
        res = Result(label, "jaxopt2", iters=stats["num_steps"], n_fun=stats["num_fun"],
                     n_grad=stats["num_grad"], n_hvp=stats["num_hvp"],
                     status=status_name(int(code)), note=f"atol={k:g}·target" + (
                         "; hessian_block = Aᵀ[F] (Aᵀ[F])ᵀ, Aᵀ stored once" if kw else ""))
        if not honest:
            res.note += (f"; HONESTY: atol=target gave 'successful' at {honest_rel:.2e} "
                         "> target")
        res, _ = fill(res, first, call, cfg, cs, parts, rel <= RTOL, rel)
        return res, x

    def jaxopt_lbfgsb():
        import jaxopt

        def solve(dd, tol):
            solver = jaxopt.LBFGSB(fun=prob.fun, tol=tol, maxiter=50_000)
            lo = jnp.broadcast_to(jnp.asarray(prob.lo, jnp.float64), (d,))
            hi = jnp.broadcast_to(jnp.asarray(prob.hi, jnp.float64), (d,))
            params, state = solver.run(prob.x0, (lo, hi), dd)
            return params, (state.iter_num, state.num_fun_eval, state.num_grad_eval)

        ks = (1.0, 0.1, 0.01, 1e-3)
        k, first, call, cs, parts, _ = ladder_run(
            lambda kk: jax_make(solve, data)(prob.target * kk), ks,
            lambda out: prob.rel(out[0]) <= RTOL)
        x, (it, nf, ng) = first.out
        rel = prob.rel(x)
        res = Result("jaxopt LBFGSB", "anchor", iters=int(it), n_grad=int(ng),
                     note=f"tol={k:g}·target")
        if int(it) >= 50_000:
            res.status = "max_steps"
        res, _ = fill(res, first, call, cfg, cs, parts, rel <= RTOL, rel)
        return res, x

    def scipy_lbfgsb():
        from scipy.optimize import minimize

        vg = jax.jit(jax.value_and_grad(prob.fun))
        c = timed(lambda: vg(prob.x0, data))
        lo = np.broadcast_to(np.asarray(prob.lo, np.float64), (d,))
        hi = np.broadcast_to(np.asarray(prob.hi, np.float64), (d,))
        bnds = list(zip(np.where(np.isinf(lo), None, lo), np.where(np.isinf(hi), None, hi),
                        strict=True))

        def fg(x):
            v, g = vg(jnp.asarray(x), data)
            return float(v), np.asarray(g, np.float64)

        def call():
            return minimize(fg, np.zeros(d), jac=True, method="L-BFGS-B", bounds=bnds,
                            options=dict(gtol=prob.target, ftol=0.0, maxiter=50_000,
                                         maxfun=100_000))

        first = timed(call)
        out = first.out
        rel = prob.rel(out.x)
        res = Result("scipy L-BFGS-B", "anchor", iters=int(out.nit), n_grad=int(out.nfev),
                     status="" if out.success else "failed",
                     note=f"pgtol=target, ftol=0; {out.message}")
        res, _ = fill(res, first, call, cfg, c.wall, None, rel <= RTOL, rel)
        return res, out.x

    def scipy_nnls():
        from scipy.optimize import nnls

        A, b = with_nnls

        def call():
            return nnls(A, b, maxiter=50 * d)

        first = timed(call)
        x, _ = first.out
        rel = prob.rel(x)
        res = Result("scipy nnls", "anchor", note="Lawson–Hanson active set (no tolerance)")
        res, _ = fill(res, first, call, cfg, None, None, rel <= RTOL, rel)
        return res, x

    entries = [("ProjectedNewtonCG", lambda: ours("ProjectedNewtonCG",
                                                 jaxopt2.ProjectedNewtonCG, 500)),
               ("LBFGSB", lambda: ours("LBFGSB", jaxopt2.LBFGSB, 50_000)),
               ("jaxopt LBFGSB", jaxopt_lbfgsb),
               ("scipy L-BFGS-B", scipy_lbfgsb)]
    if with_nnls is not None:
        # The block ∇²f_FF = A_FᵀA_F from the rows of Aᵀ (n·|F|² work) instead of |F|
        # batched products (n·d·|F|): the problem's structure, as the Gram-form lasso rows.
        entries.insert(1, ("ProjectedNewtonCG (block)", lambda: ours(
            "ProjectedNewtonCG (block)", jaxopt2.ProjectedNewtonCG, 500,
            hessian_block=nnls_block)))
        entries.append(("scipy nnls", scipy_nnls))
    for name, fn in entries:
        out = {}

        def wrapped(fn=fn, out=out):
            res, x = fn()
            out["x"] = x
            return res

        res = guarded(wrapped, name, "anchor")
        res.solver = name
        rows.append(res)
        if "x" in out:
            sols[name] = out["x"]
        progress(res)
    best = min((r for r in rows if r.solver in sols), key=lambda r: r.rel_grad, default=None)
    active = prob.active(sols[best.solver]) if best is not None else None
    return rows, dict(active=active)


# ------------------------------------------------------------------------------- report


def progress(r: Result) -> None:
    print(f"  {r.solver:28s} reached={r.reached} err={r.rel_grad:.2e} steps={r.iters} "
          f"run={r.run_s} compile={r.compile_s} {r.status} {r.note} {r.error}", flush=True)


def table(rows, measure_name) -> str:
    anchors = [r for r in rows if r.family == "anchor" and r.reached and r.run_s]
    fastest = min((r.run_s for r in anchors), default=None)
    fastest_cpu = min((r.run_cpu_s for r in anchors), default=None)
    best_any = min((r.run_s for r in rows if r.reached and r.run_s and
                    not r.solver.startswith(("ProximalNewton", "ProjectedNewtonCG"))), default=None)
    out = [f"| method | reached | {measure_name} | steps | f | ∇f | HVP | run (s) | run CPU (s) "
           "| × fastest anchor | × fastest anchor, CPU | × fastest other | compile (s) "
           "| status; notes |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "" if v is None else str(v)
    for r in rows:
        if r.error:
            out.append(f"| {r.solver} | error | | | | | | | | | | | | {r.error} |")
            continue
        ra = f"{r.run_s / fastest:.2f}" if fastest and r.run_s else ""
        rc = f"{r.run_cpu_s / fastest_cpu:.2f}" if fastest_cpu and r.run_cpu_s else ""
        rb = f"{r.run_s / best_any:.2f}" if best_any and r.run_s else ""
        comp = "" if r.compile_s is None else f"{r.compile_s:.2f}"
        status = "; ".join(x for x in (r.status, r.note) if x)
        out.append(f"| {r.solver} | {'yes' if r.reached else 'NO'} | {r.rel_grad:.1e} | "
                   f"{fmt(r.iters)} | {fmt(r.n_fun)} | {fmt(r.n_grad)} | {fmt(r.n_hvp)} | "
                   f"{r.run_s:.3f} | {r.run_cpu_s:.3f} | {ra} | {rc} | {rb} | {comp} | "
                   f"{status} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="lasso,nnls,nnls_ill,logistic")
    parser.add_argument("--cpu", type=int, default=None)   # read by single_thread.py
    parser.add_argument("--no-pin", action="store_true")   # read by single_thread.py
    parser.add_argument("--write", action="store_true",
                        help="with --only: replace only those problems' tables in RESULTS.md")
    args = parser.parse_args(argv)
    quick = args.quick
    cfg = Config(repeats=1 if quick else 3, budget_s=10.0, long_s=1.0, quick=quick)
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    sections = []
    only = args.only.split(",")

    if "lasso" in only:
        n, d = (2_000, 400) if quick else (10_000, 2_000)
        X, y = lasso_data(n, d)
        lam_max = float(np.max(np.abs(X.T @ y)) / n)
        for frac in (0.05, 0.005):
            lam = frac * lam_max
            print(f"\n== lasso n={n} d={d} lambda={frac}·lambda_max", flush=True)
            rows, info = run_lasso(X, y, lam, cfg, quick)
            sections.append(
                f"**Lasso, n = {n:,}, d = {d:,}, AR(1) ρ = 0.5, λ = {frac}·λ_max "
                f"({lam:.3g}); F(0) = {info['f0']:.3g}; {info['nnz']} nonzeros at the solution; "
                f"target duality gap ≤ 1e-8·F(0)** (the gap column is gap/F(0))\n\n"
                + table(rows, "gap / F(0)"))

    for key, spread in (("nnls", 0.0), ("nnls_ill", 2.0)):
        if key not in only:
            continue
        n, d = (1_000, 200) if quick else (5_000, 1_000)
        A, b = nnls_data(n, d, spread=spread)
        prob = Bounded(key, nnls_loss, {"A": jnp.asarray(A), "b": jnp.asarray(b),
                                        "AT": jnp.asarray(np.ascontiguousarray(A.T))},
                       0.0, np.inf, d)
        print(f"\n== {key} {n}x{d}", flush=True)
        rows, info = run_bounded(prob, cfg, with_nnls=(A, b))
        cond = np.linalg.cond(A)
        scaled = f", columns scaled by 10^(−{spread:g}·j/d)" if spread else ""
        sections.append(
            f"**NNLS, A {n:,} × {d:,} (AR(1) ρ = 0.9{scaled}, cond(A) = {cond:.3g}), x ≥ 0; "
            f"{info['active']} of {d} bounds active at the solution; target "
            f"‖x − P(x − ∇f)‖∞ ≤ 1e-8 × its value at x = 0 ({prob.pg0:.3g})** "
            "(the error column is that ratio)\n\n" + table(rows, "‖PG‖∞ / ‖PG₀‖∞"))

    if "logistic" in only:
        n, d = (4_000, 100) if quick else (20_000, 500)
        X, y = logistic_data(n, d)
        data = {"X": jnp.asarray(X), "y": jnp.asarray(y)}
        unc = jaxopt2.minimize(logistic_loss, jnp.zeros(d), data,
                               solver=jaxopt2.NewtonCG(rtol=1e-10), max_steps=200)
        c = float(np.quantile(np.abs(np.asarray(unc.params)), 2 / 3))
        prob = Bounded("box logistic", logistic_loss, data, -c, c, d)
        print(f"\n== box logistic n={n} d={d} c={c:.3g}", flush=True)
        rows, info = run_bounded(prob, cfg)
        sections.append(
            f"**Box-constrained logistic regression, n = {n:,}, d = {d}, λ = 1e-3, "
            f"−c ≤ w ≤ c with c = {c:.3g}; {info['active']} of {d} bounds active at the "
            f"solution; target ‖x − P(x − ∇f)‖∞ ≤ 1e-8 × its value at 0 ({prob.pg0:.3g})**\n\n"
            + table(rows, "‖PG‖∞ / ‖PG₀‖∞"))

    total = time.perf_counter() - t_start
    load1 = os.getloadavg()
    machine = (f"{cpu_name()}, {os.cpu_count()} cores visible, one pinned core (cpu "
               f"{PINNED_CPU}), {platform.system()}, jax {jax.__version__}, float64; load "
               f"average (1/5/15 min) {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f} at start, "
               f"{load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} at end; total {total:.0f} s"
               + ("; QUICK (small) run" if quick else ""))
    text = "\n\n".join([
        "## Composite and bound-constrained problems (composite.py)",
        f"Generated by `python benchmarks/composite.py` on {time.strftime('%Y-%m-%d %H:%M')}. "
        f"Machine: {machine}. Problems, targets and tolerance ladders: the docstring of "
        "`benchmarks/composite.py`. *× fastest anchor*: run time over the fastest anchor that "
        "reached the target; *× fastest other*: over the fastest method that reached it other "
        "than the second-order one under test (ProximalNewton, ProjectedNewtonCG); *run CPU*: "
        "process CPU time of the same calls (compare it when the load exceeds the core count).",
        *sections])
    print("\n" + text)
    if not quick and args.only == parser.get_default("only"):
        write_section("composite", text)
    elif not quick and args.write:
        write_partial(sections, machine, args.only)


def write_partial(sections, machine, only):
    """Replace, in the existing RESULTS.md section, only the problems run now (each block
    starts with its bold title, up to the next one), with a dated note of this run (replacing
    an earlier note for the same `--only` list, keeping the others)."""
    from harness import RESULTS_MD

    begin, end = "<!-- section:composite -->", "<!-- /section:composite -->"
    old = open(RESULTS_MD).read().split(begin, 1)[1].split(end, 1)[0].strip()
    blocks = old.split("\n\n**")
    head, problems = blocks[0], ["**" + b for b in blocks[1:]]
    def title(block):  # the bold title up to its first ";" (the problem and its λ)
        return block.split(";", 1)[0]

    for new in sections:
        problems = [new if title(p) == title(new) else p for p in problems]
    names = {"lasso": "lasso", "nnls": "NNLS", "nnls_ill": "ill-conditioned NNLS",
             "logistic": "box logistic"}
    which = ", ".join(names.get(k, k) for k in only.split(","))
    lead = f"The {which} tables were regenerated by"
    stamp = (f"{lead} `python benchmarks/composite.py --only {only} --write` on "
             f"{time.strftime('%Y-%m-%d %H:%M')} ({machine}); the other tables are from the "
             "run above or the runs named here.")
    paragraphs = [p for p in head.split("\n\n") if not p.startswith(lead)]
    write_section("composite", "\n\n".join([*paragraphs, stamp, *problems]))


if __name__ == "__main__":
    main()
