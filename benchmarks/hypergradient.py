"""Hypergradient benchmark: implicit differentiation of an inner solve, jaxopt2 against jaxopt,
optimistix, unrolled gradient descent and (ridge) a dense closed form, in float64, one thread.

    python benchmarks/hypergradient.py                 # full run: n=5000, d=500, n_val=1000
    python benchmarks/hypergradient.py --quick         # smoke run: n=1000, d=100, 1 repeat
    python benchmarks/hypergradient.py --problems ridge --methods jaxopt2 --repeats 5

What is measured: the gradient of the validation loss L_val(w*(θ)) with respect to θ ∈ R^d,
with per-feature L2 weights λ = exp(θ), for two inner problems

- ridge:    f(w) = ½‖X w − y‖²/n + ½ Σ λ_j w_j²,  L_val = ½‖X_val w − y_val‖²/n_val;
- logistic: f(w) = mean(log(1 + exp(X w)) − y·X w) + ½ Σ λ_j w_j²,  L_val the same mean log
  loss on the validation set (labels drawn from a planted model).

Data: X = Z·diag(s), Z standard normal, s log-spaced over 2 decades (0.1 … 10; `--decades 0`
for unscaled, well-conditioned features), a planted w,
noise; θ = log(1e-2) + 0.5·N(0, 1) per feature. Reference hypergradient: with
H = ∇²f(w*) and v = H⁻¹ ∇L_val(w*), dL/dλ_j = −w*_j v_j and dL/dθ_j = λ_j dL/dλ_j.
For ridge w* and v come from a NumPy/SciPy Cholesky solve (checked against central finite
differences); for logistic w* is solved to full precision with dense Newton (jaxopt2.Newton,
then pure Newton polishing steps) and v from `jnp.linalg.solve` on `jax.hessian`.

Methods (each one jitted function of (θ, data); rows are built from lists, so a new adjoint is
one more `(name, adjoint)` entry in `JAXOPT2_ADJOINTS`):

- jaxopt2.minimize with NewtonCG(rtol=1e-10) (its default preconditioner "auto", plain CG,
  and with a Jacobi preconditioner from 64 Hutchinson probes, as NewtonCG(Jacobi-64) in
  run_all.py) and dense Newton, each adjoint of
  `JAXOPT2_ADJOINTS` (default: dense up to 1000 unknowns, CG at 1e-12, dense Cholesky);
  LBFGS(rtol=1e-10) and LBFGS with its default rtol, with the default adjoint;
- jaxopt.LBFGS(tol=1e-10·‖∇f(0)‖₂, implicit_diff=True) with its default implicit-diff solve
  (normal-equation CG, jax.scipy cg defaults: tol=1e-5), `solve_cg` and `solve_normal_cg` with
  tol=1e-12;
- optimistix.minimise with BFGS(rtol=atol=1e-10), ImplicitAdjoint() (its default
  AutoLinearSolver) and ImplicitAdjoint(lx.CG(rtol=atol=1e-12)) (the latter needs
  `tags={symmetric, positive_semidefinite}` passed to `minimise`: lineax CG refuses otherwise);
- unrolled gradient descent: `--unroll` steps of size 1/L in `lax.scan`, reverse mode;
- ridge only: the closed form `jnp.linalg.solve` differentiated by autodiff.

Columns: *rel err* = ‖g − g_ref‖₂/‖g_ref‖₂ on dL/dθ; *fwd s* = median process CPU time of
the jitted forward (solve + L_val); *fwd+bwd s* = the same for the jitted `value_and_grad`
(CPU time: the machine is shared, and one thread makes it ≈ wall time; the wall median is
shown too); *bwd s* = their difference; *compile s* = trace + lower + XLA compile of the
`value_and_grad` program (`harness.compile_jax`; this is the first-call overhead); *inner
iters* as the library reports them. Timed calls of all methods are interleaved round by
round (medians of `--repeats` rounds), after one untimed warm-up call each. Targets (issue):
rel err ≤ 1e-9; fwd+bwd ≤ 0.5× jaxopt's (its fastest row with rel err ≤ 1e-8); bwd ≤ fwd.
Writes outputs/hypergradient.md, and in a full run also the "hypergradient" section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

# isort: off
# First, before jax and NumPy are imported: one thread, one core (single_thread.py).
from single_thread import PINNED_CPU
# isort: on

import argparse
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import importlib.metadata  # noqa: E402
import os
import platform  # noqa: E402
import statistics  # noqa: E402
import sys
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
from jax import lax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import harness  # noqa: E402

import jaxopt2  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_MD = os.path.join(HERE, "..", "outputs", "hypergradient.md")

INNER_RTOL = 1e-10      # jaxopt2 rtol, jaxopt tol (relative to ‖∇f(0)‖), optimistix rtol = atol
ADJ_TOL = 1e-12         # the "tight" adjoint linear solves
LAM0 = 1e-2             # typical per-feature L2 weight
MAX_STEPS = 2_000       # jaxopt2 / optimistix step budget
JAXOPT_MAXITER = 20_000

# Rows for jaxopt2: (name, adjoint). Add new adjoint options here.
JAXOPT2_ADJOINTS: list[tuple[str, Callable[[], jaxopt2.AbstractAdjoint]]] = [
    ("ImplicitAdjoint() (default)", lambda: jaxopt2.ImplicitAdjoint()),
    ("ImplicitAdjoint(CG 1e-12)",
     lambda: jaxopt2.ImplicitAdjoint(linear_solver=lx.CG(rtol=ADJ_TOL, atol=ADJ_TOL))),
    ("ImplicitAdjoint(Cholesky)", lambda: jaxopt2.ImplicitAdjoint(linear_solver=lx.Cholesky())),
]


# ------------------------------------------------------------------------------ problems


@dataclasses.dataclass
class Problem:
    name: str
    kind: str            # "ridge" or "logistic"
    data: dict           # X, y, Xv, yv, lip (a bound on the largest Hessian eigenvalue at λ=0)
    theta: jax.Array
    g_ref: np.ndarray    # reference dL/dθ
    L_ref: float
    ref_note: str


def inner_loss(w, lam, data, kind):
    z = data["X"] @ w
    if kind == "ridge":
        fit = 0.5 * jnp.mean((z - data["y"]) ** 2)
    else:
        fit = jnp.mean(jax.nn.softplus(z) - data["y"] * z)
    return fit + 0.5 * jnp.sum(lam * w**2)


def val_loss(w, data, kind):
    z = data["Xv"] @ w
    if kind == "ridge":
        return 0.5 * jnp.mean((z - data["yv"]) ** 2)
    return jnp.mean(jax.nn.softplus(z) - data["yv"] * z)


def make_data(kind, n, d, n_val, seed=0, decades=2.0):
    rng = np.random.default_rng(seed)
    s = np.logspace(-decades / 2, decades / 2, d)
    X = rng.standard_normal((n, d)) * s
    Xv = rng.standard_normal((n_val, d)) * s
    w_true = rng.standard_normal(d) / (s * np.sqrt(d))  # every feature contributes O(1/√d)
    if kind == "ridge":
        w_true *= 2.0
        y = X @ w_true + 0.5 * rng.standard_normal(n)
        yv = Xv @ w_true + 0.5 * rng.standard_normal(n_val)
    else:
        w_true *= 3.0  # margins of order 3: a non-trivial, non-separable problem
        y = (rng.random(n) < 1 / (1 + np.exp(-X @ w_true))).astype(np.float64)
        yv = (rng.random(n_val) < 1 / (1 + np.exp(-Xv @ w_true))).astype(np.float64)
    theta = np.log(LAM0) + 0.5 * rng.standard_normal(d)
    top = np.linalg.eigvalsh(X.T @ X / n)[-1]
    lip = top if kind == "ridge" else top / 4
    data = {k: jnp.asarray(v) for k, v in dict(X=X, y=y, Xv=Xv, yv=yv).items()}
    data["lip"] = jnp.asarray(lip)
    return data, jnp.asarray(theta)


def ridge_reference(data, theta):
    """Closed form in NumPy float64 (Cholesky), and central finite differences on a few θ_j."""
    X, y, Xv, yv = (np.asarray(data[k]) for k in ("X", "y", "Xv", "yv"))
    n, n_val = X.shape[0], Xv.shape[0]
    A, b = X.T @ X / n, X.T @ y / n

    def solve(th):
        c = scipy.linalg.cho_factor(A + np.diag(np.exp(th)))
        w = scipy.linalg.cho_solve(c, b)
        return w, c

    def L(th):
        r = Xv @ solve(th)[0] - yv
        return 0.5 * r @ r / n_val

    th = np.asarray(theta)
    w, c = solve(th)
    grad_val = Xv.T @ (Xv @ w - yv) / n_val
    v = scipy.linalg.cho_solve(c, grad_val)
    g = -np.exp(th) * w * v  # dL/dθ = λ ⊙ dL/dλ, dL/dλ = −w* ⊙ v
    # Central differences (h=1e-4: truncation ~h², rounding ~eps/h) on the 5 largest entries.
    h, idx = 1e-4, np.argsort(-np.abs(g))[:5]
    fd = np.empty(len(idx))
    for k, j in enumerate(idx):
        e = np.zeros_like(th)
        e[j] = h
        fd[k] = (L(th + e) - L(th - e)) / (2 * h)
    fd_err = float(np.max(np.abs(fd - g[idx]) / np.abs(g[idx])))
    cond = np.linalg.cond(A + np.diag(np.exp(th)))
    note = (f"closed form (SciPy Cholesky); central differences (h=1e-4) on the 5 largest "
            f"entries agree to {fd_err:.1e} relative; cond(H) = {cond:.2g}")
    return g, L(th), note


def logistic_reference(data, theta):
    """w* by dense Newton (jaxopt2.Newton, then 3 pure Newton steps), v by jnp.linalg.solve."""
    lam = jnp.exp(theta)
    f = lambda w: inner_loss(w, lam, data, "logistic")
    w0 = jnp.zeros(theta.shape, theta.dtype)
    sol = jax.jit(lambda: jaxopt2.minimize(
        lambda w, a: f(w), w0, solver=jaxopt2.Newton(rtol=1e-14), max_steps=100,
        throw=False).params)()
    hess, grad = jax.jit(jax.hessian(f)), jax.jit(jax.grad(f))
    w = sol
    for _ in range(3):
        w = w - jnp.linalg.solve(hess(w), grad(w))
    gnorm = float(jnp.max(jnp.abs(grad(w))))
    g0 = float(jnp.max(jnp.abs(grad(w0))))
    H = hess(w)
    gv = jax.grad(lambda u: val_loss(u, data, "logistic"))(w)
    v = jnp.linalg.solve(H, gv)
    g = -np.asarray(lam * w * v)
    cond = float(jnp.linalg.cond(H))
    note = (f"dense Newton to ‖∇f‖∞ = {gnorm:.1e} (‖∇f(0)‖∞ = {g0:.1e}), "
            f"v = jnp.linalg.solve(jax.hessian(f)(w*), ∇L_val); cond(H) = {cond:.2g}")
    return g, float(val_loss(w, data, "logistic")), note


def build_problem(kind, n, d, n_val, decades=2.0):
    data, theta = make_data(kind, n, d, n_val, seed={"ridge": 0, "logistic": 1}[kind],
                            decades=decades)
    ref = ridge_reference if kind == "ridge" else logistic_reference
    g, L, note = ref(data, theta)
    return Problem(kind, kind, data, theta, g, L, note)


# ------------------------------------------------------------------------------- methods


@dataclasses.dataclass
class Method:
    name: str
    family: str
    solve: Callable  # solve(theta, data) -> (w, info: dict of scalar arrays)
    note: str = ""


def jacobi_preconditioner(num_probes=64):
    """NewtonCG `preconditioner=`: M = diag(H) estimated by `jaxopt2.curvature.diagonal` with
    Rademacher probes (as benchmarks/ours.py's NewtonCG(Jacobi-64)), floored at 1e-6 of its
    largest entry. The features here span 2 decades of scale, so diag(H) spans ~4."""

    def make(fun, params, args, operator):
        d = jaxopt2.curvature.diagonal(operator, jax.random.key(0), num_probes)
        inv = 1.0 / jnp.maximum(d, 1e-6 * jnp.max(jnp.abs(d)))
        return lambda r: inv * r

    return make


def jaxopt2_method(kind, solver_name, solver, adj_name, make_adjoint):
    adjoint = make_adjoint()

    def solve(theta, data):
        w0 = jnp.zeros(theta.shape, theta.dtype)
        sol = jaxopt2.minimize(lambda w, a: inner_loss(w, jnp.exp(a[0]), a[1], kind), w0,
                               (theta, data), solver=solver, adjoint=adjoint,
                               max_steps=MAX_STEPS, throw=False)
        return sol.params, dict(steps=sol.stats["num_steps"], hvp=sol.stats["num_hvp"],
                                ok=sol.success)

    return Method(f"jaxopt2 {solver_name} + {adj_name}", "jaxopt2", solve)


def jaxopt_method(kind, solve_name, implicit_solve, tol):
    import jaxopt

    fun = lambda w, theta, data: inner_loss(w, jnp.exp(theta), data, kind)
    solver = jaxopt.LBFGS(fun=fun, tol=tol, maxiter=JAXOPT_MAXITER, implicit_diff=True,
                          implicit_diff_solve=implicit_solve)

    def solve(theta, data):
        w, state = solver.run(jnp.zeros(theta.shape, theta.dtype), theta, data)
        return w, dict(steps=state.iter_num, ok=state.iter_num < JAXOPT_MAXITER)

    return Method(f"jaxopt LBFGS + {solve_name}", "jaxopt", solve, f"tol={tol:.1e} (2-norm)")


def optimistix_method(kind, adj_name, adjoint, tags=frozenset()):
    import optimistix as optx

    def solve(theta, data):
        sol = optx.minimise(lambda w, a: inner_loss(w, jnp.exp(a[0]), a[1], kind),
                            optx.BFGS(rtol=INNER_RTOL, atol=INNER_RTOL),
                            jnp.zeros(theta.shape, theta.dtype), (theta, data),
                            adjoint=adjoint, max_steps=MAX_STEPS, throw=False, tags=tags)
        return sol.value, dict(steps=sol.stats["num_steps"],
                               ok=sol.result == optx.RESULTS.successful)

    return Method(f"optimistix BFGS + {adj_name}", "optimistix", solve)


def unrolled_method(kind, steps):
    def solve(theta, data):
        lam = jnp.exp(theta)
        lr = 1.0 / lax.stop_gradient(data["lip"] + jnp.max(lam))
        grad = jax.grad(inner_loss)

        def body(w, _):
            return w - lr * grad(w, lam, data, kind), None

        w, _ = lax.scan(body, jnp.zeros(theta.shape, theta.dtype), None, length=steps)
        return w, dict(steps=jnp.asarray(steps), ok=jnp.asarray(True))

    return Method(f"unrolled GD ({steps} steps, 1/L)", "unrolled", solve)


def closed_form_method():
    def solve(theta, data):
        X, n = data["X"], data["X"].shape[0]
        H = X.T @ X / n + jnp.diag(jnp.exp(theta))
        return jnp.linalg.solve(H, X.T @ data["y"] / n), dict(ok=jnp.asarray(True))

    return Method("closed form jnp.linalg.solve (autodiff)", "dense", solve)


def methods_for(problem, unroll_steps):
    import jaxopt
    import optimistix as optx

    kind = problem.kind
    out = []
    # NewtonCG's default preconditioner is "auto" (Jacobi when CG runs long); the plain-CG
    # row is the NewtonCG default before issue 20 made it so
    solvers = [("NewtonCG", jaxopt2.NewtonCG(rtol=INNER_RTOL)),
               ("NewtonCG(plain CG)", jaxopt2.NewtonCG(rtol=INNER_RTOL, preconditioner=None)),
               ("NewtonCG(Jacobi-64)", jaxopt2.NewtonCG(rtol=INNER_RTOL,
                                                        preconditioner=jacobi_preconditioner())),
               ("Newton", jaxopt2.Newton(rtol=INNER_RTOL)),
               # a first-order inner solver, at the benchmark's tolerance and at its default
               # (issue 20: the hypergradient's accuracy must not be limited by the default)
               ("LBFGS", jaxopt2.LBFGS(rtol=INNER_RTOL)),
               ("LBFGS(default rtol)", jaxopt2.LBFGS())]
    for sname, solver in solvers:
        for aname, make in JAXOPT2_ADJOINTS:
            if sname != "NewtonCG" and "CG 1e-12" in aname:
                continue  # the adjoint does not depend on the inner solver
            if sname.startswith("LBFGS") and "default" not in aname:
                continue
            out.append(jaxopt2_method(kind, sname, solver, aname, make))
    g0 = float(jnp.linalg.norm(jax.grad(inner_loss)(
        jnp.zeros_like(problem.theta), jnp.exp(problem.theta), problem.data, kind)))
    tol = INNER_RTOL * g0
    ls = jaxopt.linear_solve
    for name, fn in (("default (normal CG, tol 1e-5)", None),
                     ("solve_cg 1e-12", functools.partial(ls.solve_cg, tol=ADJ_TOL)),
                     ("solve_normal_cg 1e-12",
                      functools.partial(ls.solve_normal_cg, tol=ADJ_TOL))):
        out.append(jaxopt_method(kind, name, fn, tol))
    out.append(optimistix_method(kind, "ImplicitAdjoint()", optx.ImplicitAdjoint()))
    # lineax CG needs the PSD tag, which optimistix 0.1.0 does not set for minimise by itself
    psd = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})
    out.append(optimistix_method(kind, "ImplicitAdjoint(CG 1e-12), PSD tags",
                                 optx.ImplicitAdjoint(linear_solver=lx.CG(rtol=ADJ_TOL,
                                                                          atol=ADJ_TOL)),
                                 tags=psd))
    out.append(unrolled_method(kind, unroll_steps))
    if kind == "ridge":
        out.append(closed_form_method())
    return out


# ----------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Row:
    problem: str
    method: str
    family: str
    rel_err: float = float("nan")
    L_err: float = float("nan")
    fwd: list = dataclasses.field(default_factory=list)      # process CPU seconds
    fb: list = dataclasses.field(default_factory=list)
    fb_wall: list = dataclasses.field(default_factory=list)  # wall seconds
    compile_s: float | None = None
    iters: str = ""
    note: str = ""
    error: str = ""

    def med(self, which):
        xs = getattr(self, which)
        return statistics.median(xs) if xs else float("nan")


def hyper_fns(solve, kind):
    def loss(theta, data):
        w, info = solve(theta, data)
        return val_loss(w, data, kind), info

    return loss, jax.value_and_grad(loss, has_aux=True)


def fmt_iters(info):
    parts = []
    if "steps" in info:
        parts.append(f"{int(info['steps'])} steps")
    if "hvp" in info and int(info["hvp"]):
        parts.append(f"{int(info['hvp'])} HVP")
    if not bool(info.get("ok", True)):
        parts.append("**not converged**")
    return ", ".join(parts) or "—"


def prepare(problem, method):
    """Compile the forward and value_and_grad programs; one warm-up call each (the gradient
    call also gives the error and the counts). Returns (row, fwd call, fb call)."""
    row = Row(problem.name, method.name, method.family, note=method.note)
    loss, vg = hyper_fns(method.solve, problem.kind)
    args = (problem.theta, problem.data)
    fwd, _, _ = harness.compile_jax(loss, *args)
    fb, row.compile_s, _ = harness.compile_jax(vg, *args)
    jax.block_until_ready(fwd(*args))
    (L, info), g = jax.block_until_ready(fb(*args))
    g = np.asarray(g)
    row.rel_err = float(np.linalg.norm(g - problem.g_ref) / np.linalg.norm(problem.g_ref))
    row.L_err = abs(float(L) - problem.L_ref) / abs(problem.L_ref)
    row.iters = fmt_iters(info)
    return row, (lambda: fwd(*args)), (lambda: fb(*args))


def run_problem(problem, methods, repeats, budget_s):
    entries = []
    for m in methods:
        t0 = time.perf_counter()
        try:
            entries.append(prepare(problem, m))
            print(f"  {m.name}: compiled + warm-up in {time.perf_counter() - t0:.1f} s, "
                  f"rel err {entries[-1][0].rel_err:.2e}, {entries[-1][0].iters}", flush=True)
        except Exception as e:  # noqa: BLE001 - one failing method must not end the run
            print(traceback.format_exc(limit=4))
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            entries.append((Row(problem.name, m.name, m.family, error=msg[:200]), None, None))
    # Interleaved rounds; a method whose calls exceed the budget gets fewer rounds.
    for r in range(repeats):
        for row, fwd, fb in entries:
            if fwd is None or (r > 0 and sum(row.fwd) + sum(row.fb_wall) > budget_s):
                continue
            row.fwd.append(harness.timed(fwd).cpu)
            t = harness.timed(fb)
            row.fb.append(t.cpu)
            row.fb_wall.append(t.wall)
    return [e[0] for e in entries]


def adjoint_cg_steps(problem):
    """Diagnostic: lineax CG steps for H v = ∇L_val at the reference solution, per tolerance
    (the work inside an ImplicitAdjoint backward pass, one HVP per step)."""
    kind, data, theta = problem.kind, problem.data, problem.theta
    lam = jnp.exp(theta)
    # the solution, from the dense reference path (cheap at these sizes)
    f = lambda w: inner_loss(w, lam, data, kind)
    w = jnp.zeros_like(theta)
    for _ in range(30 if kind == "logistic" else 1):
        w = w - jnp.linalg.solve(jax.hessian(f)(w), jax.grad(f)(w))
    b = jax.grad(lambda u: val_loss(u, data, kind))(w)
    op = lx.linearise(lx.JacobianLinearOperator(lambda x, _: jax.grad(f)(x), w,
                                                tags=(lx.symmetric_tag,
                                                      lx.positive_semidefinite_tag)))
    eps06 = float(jnp.finfo(jnp.float64).eps) ** 0.6
    out = {}
    for tol in (eps06, ADJ_TOL):
        def steps(b, t=tol):
            sol = lx.linear_solve(op, b, lx.CG(rtol=t, atol=t), throw=False)
            return sol.stats["num_steps"], sol.result._value

        k, code = jax.jit(steps)(b)
        out[f"{tol:.1e}"] = (int(k), int(code))
    return out


# ------------------------------------------------------------------------------- report


def f3(x):
    return "—" if x is None or x != x else f"{x:.3g}"


def table(rows, jaxopt_fb):
    head = ("| method | rel err dL/dθ | fwd s | fwd+bwd s | bwd s | bwd / fwd | "
            "fwd+bwd / jaxopt | fwd+bwd wall s | compile s | inner iters | note |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        if r.error:
            lines.append(f"| {r.method} | error | | | | | | | | | {r.error} |")
            continue
        fwd, fb = r.med("fwd"), r.med("fb")
        bwd = fb - fwd
        runs = f" (×{len(r.fb)})" if len(r.fb) not in (0,) else ""
        lines.append(
            f"| {r.method} | {r.rel_err:.1e} | {f3(fwd)} | {f3(fb)}{runs} | {f3(bwd)} | "
            f"{f3(bwd / fwd if fwd > 0 else float('nan'))} | "
            f"{f3(fb / jaxopt_fb if jaxopt_fb else float('nan'))} | {f3(r.med('fb_wall'))} | "
            f"{f3(r.compile_s)} | "
            f"{r.iters} | {r.note} |")
    return head + "\n".join(lines) + "\n"


def jaxopt_reference(rows):
    """The jaxopt row the speed targets compare against: the fastest (fwd+bwd) jaxopt row
    whose hypergradient is accurate (rel err ≤ 1e-8), else the fastest jaxopt row."""
    jo = [r for r in rows if r.family == "jaxopt" and not r.error and r.fb]
    good = [r for r in jo if r.rel_err <= 1e-8] or jo
    return min(good, key=lambda r: r.med("fb")) if good else None


def targets(rows):
    """The issue's targets for the best jaxopt2 row (and the default adjoint row)."""
    ok = [r for r in rows if not r.error and r.fb]
    j2 = [r for r in ok if r.family == "jaxopt2"]
    jo = [r for r in ok if r.family == "jaxopt"]
    if not j2 or not jo:
        return ""
    jo_best = jaxopt_reference(rows)
    out = []
    for r in j2:
        fwd, fb = r.med("fwd"), r.med("fb")
        checks = [("rel err ≤ 1e-9", r.rel_err <= 1e-9),
                  ("fwd+bwd ≤ 0.5× fastest jaxopt", fb <= 0.5 * jo_best.med("fb")),
                  ("bwd ≤ fwd", fb - fwd <= fwd)]
        out.append(f"- {r.method}: " + "; ".join(
            f"{name} {'met' if good else '**missed**'}" for name, good in checks))
    return (f"Targets for each jaxopt2 row (against {jo_best.method}, "
            f"{f3(jo_best.med('fb'))} s fwd+bwd):\n\n" + "\n".join(out) + "\n")


def markdown(problems, all_rows, diags, meta):
    parts = [
        f"Generated by `{meta['command']}` on {meta['date']}; the run took {meta['wall']:.0f} s.",
        "",
        f"- Machine: {meta['machine']}; jax {jax.__version__}, {meta['versions']}. One thread "
        f"(XLA flags as in run_all.py), process pinned to core {PINNED_CPU}; load average at "
        f"start {meta['load0']}, at end {meta['load1']}: timings on this shared 2-core machine "
        "are provisional, all rows of a problem are timed interleaved (medians).",
        f"- n = {meta['n']}, d = {meta['d']}, n_val = {meta['n_val']}, feature scales over "
        f"{meta['decades']:g} decades; float64. θ ∈ R^d, "
        "λ = exp(θ); *rel err* = ‖g − g_ref‖/‖g_ref‖ on dL/dθ. *fwd s*, *fwd+bwd s*: medians of "
        "process CPU seconds per call (robust to other load on the machine; one thread, so "
        "≈ wall time when unloaded); *fwd+bwd wall s* the wall-clock median; *bwd s* = "
        "fwd+bwd − fwd. "
        "*compile s* = trace + lower + XLA compile of the value_and_grad program. "
        "*fwd+bwd / jaxopt* is against the fastest jaxopt row with rel err ≤ 1e-8 (its "
        "default implicit-diff solve is not that accurate here).",
        f"- Inner tolerances: jaxopt2 rtol = {INNER_RTOL:g} (‖∇f‖∞ relative to ∇f(0)); jaxopt "
        f"LBFGS tol = {INNER_RTOL:g}·‖∇f(0)‖₂; optimistix BFGS rtol = atol = {INNER_RTOL:g} "
        "(Cauchy test on steps and f). Adjoints: jaxopt2's default, up to 1000 unknowns, runs "
        "CG first (to eps^0.75 within d/6 products, preconditioned by Newton's last Cholesky "
        "factor when Newton is the inner solver) and forms the Hessian (d batched products "
        "and an eigendecomposition) only for the residual CG leaves (Jacobi-preconditioned "
        "CG above 1000 unknowns); 'CG 1e-12' = lineax CG rtol = atol = 1e-12; jaxopt's "
        "default is CG on the normal equations at jax.scipy's default tol = 1e-5.",
        "",
    ]
    for p in problems:
        rows = all_rows[p.name]
        default_jo = jaxopt_reference(rows)
        parts += [f"### {p.name}", "",
                  f"Reference: {p.ref_note}. L_val(w*) = {p.L_ref:.6g}.", ""]
        if p.name in diags:
            parts += ["Adjoint CG steps at the reference solution (H v = ∇L_val, lineax CG; "
                      "tol: steps, result code): "
                      + ", ".join(f"{k}: {v[0]} ({v[1]})" for k, v in diags[p.name].items())
                      + ".", ""]
        parts += [table(rows, default_jo.med("fb") if default_jo else None), targets(rows)]
    return "\n".join(parts)


# --------------------------------------------------------------------------------- main


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="n=1000, d=100, n_val=200, 1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; quick 1)")
    p.add_argument("--budget", type=float, default=30.0,
                   help="seconds of timed calls per method after which it skips later rounds")
    p.add_argument("--problems", nargs="+", default=["ridge", "logistic"])
    p.add_argument("--methods", nargs="+", default=None,
                   help="substrings: keep only methods whose name contains one of them")
    p.add_argument("--unroll", type=int, default=500, help="unrolled gradient-descent steps")
    p.add_argument("--decades", type=float, default=2.0,
                   help="the features' scales span this many decades (default 2: condition "
                        "numbers ~3e3-7e3; 0: unscaled features, well-conditioned)")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--d", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--out", default=OUT_MD, help="markdown output (default %(default)s)")
    p.add_argument("--no-diag", action="store_true", help="skip the adjoint CG-step diagnostic")
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--no-pin", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    n = args.n or (1000 if args.quick else 5000)
    d = args.d or (100 if args.quick else 500)
    n_val = args.n_val or (200 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 3)
    full = (not args.quick and args.n is None and args.d is None and args.methods is None
            and args.decades == 2.0)
    t_start = time.perf_counter()
    load0 = "/".join(f"{x:.1f}" for x in os.getloadavg())
    problems, all_rows, diags = [], {}, {}
    for kind in args.problems:
        print(f"{kind}: n={n} d={d} n_val={n_val} decades={args.decades:g}", flush=True)
        p = build_problem(kind, n, d, n_val, args.decades)
        print(f"  reference: {p.ref_note}", flush=True)
        problems.append(p)
        if not args.no_diag:
            diags[kind] = adjoint_cg_steps(p)
            print(f"  adjoint CG steps: {diags[kind]}", flush=True)
        methods = methods_for(p, args.unroll)
        if args.methods:
            methods = [m for m in methods if any(s.lower() in m.name.lower()
                                                 for s in args.methods)]
        all_rows[kind] = run_problem(p, methods, repeats, args.budget)
    meta = dict(
        command="python benchmarks/hypergradient.py" + (" --quick" if args.quick else ""),
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        wall=time.perf_counter() - t_start, n=n, d=d, n_val=n_val, decades=args.decades,
        load0=load0,
        load1="/".join(f"{x:.1f}" for x in os.getloadavg()),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible; "
                f"Python {platform.python_version()}",
        versions=", ".join(f"{m} {importlib.metadata.version(m)}"
                           for m in ("jaxopt", "optimistix", "lineax", "equinox")),
    )
    text = markdown(problems, all_rows, diags, meta)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(text)
    print(f"wrote {os.path.relpath(args.out)}")
    if full:
        harness.write_section("hypergradient", "## Hypergradients: implicit differentiation "
                              "of ridge and logistic regression (`hypergradient.py`)\n\n" + text)
        print("updated the hypergradient section of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
