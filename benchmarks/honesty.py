"""The honesty table (issue 13): hostile-but-fair cases × solvers → outcome class, in float32.

    python benchmarks/honesty.py          # writes the "honesty" section of RESULTS.md

Each cell is one solve with throw=False, classified against a known answer:
`ok` (successful and correct), `fail:<status>` (an honest failure status), or
**`WRONG`** (successful at a wrong point: the outcome the stopping rules must never give).
The goal is no WRONG anywhere. The same categories are asserted in tests/test_reliability.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from harness import write_section

import jaxopt2 as J

F32 = jnp.float32

MINIMIZERS = {
    "GradientDescent": lambda: J.GradientDescent(), "Newton": lambda: J.Newton(),
    "NewtonCG": lambda: J.NewtonCG(), "NewtonCG-tr": lambda: J.NewtonCG(trust_region=True),
    "LBFGS": lambda: J.LBFGS(), "BFGS": lambda: J.BFGS(),
    "RegularizedNewton": lambda: J.RegularizedNewton(), "DampedNewton": lambda: J.DampedNewton(),
    "SubspaceNewton": lambda: J.SubspaceNewton(subspace_dim=2),
}
ROOTS = {"NewtonRaphson": lambda: J.NewtonRaphson(), "NewtonKrylov": lambda: J.NewtonKrylov(),
         "Broyden": lambda: J.Broyden()}
FIXED = {"FixedPointIteration": lambda: J.FixedPointIteration(), "Anderson": lambda: J.Anderson(),
         "NewtonKrylov": lambda: J.NewtonKrylov()}


def rosen(x, _):
    return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def quartic(x, _):
    return jnp.sum((x - 1.0) ** 4)


def _quadratic():
    A = jax.random.normal(jax.random.key(0), (5, 5), F32)
    H = A @ A.T + jnp.eye(5, dtype=F32)
    b = jnp.arange(5.0, dtype=F32)
    return H, b


H, B = _quadratic()
X_STAR = jnp.linalg.solve(H, B)


def _far_quadratic():
    """Condition 1e4 in float32, started at 0: the minimizer lies ~1e4 out (past 1/√eps of
    float32, where every minimizer once reported `diverged`)."""
    Q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(3), (12, 12), F32))
    A = (Q * jnp.logspace(0, -4, 12, dtype=F32)) @ Q.T
    b = jax.random.normal(jax.random.key(4), (12,), F32)
    x = np.linalg.solve(np.asarray(A, np.float64), np.asarray(b, np.float64))
    return A, b, x


FAR_A, FAR_B, FAR_X = _far_quadratic()

# name -> (fun, x0, answer or None (no solution), tolerance, expected failure, max_steps)
MIN_CASES = {
    "Rosenbrock (−1.2, 1)": (rosen, jnp.array([-1.2, 1.0], F32), jnp.ones(2), 1e-3, None, 256),
    "quartic, x₀ = 10³x*": (quartic, jnp.full(2, 1e3, F32), jnp.ones(2), 2e-2, None, 512),
    "quartic, x₀ = 10⁶x*": (quartic, jnp.full(2, 1e6, F32), jnp.ones(2), 2e-2, None, 512),
    "warm start at x*": (lambda x, _: 0.5 * x @ H @ x - B @ x + 3.0, X_STAR, X_STAR, 1e-4,
                         None, 256),
    # tolerance: a few times the rule's estimate rtol·s(x*) (rtol = 1e-3 in float32): the
    # error estimates of a linearly convergent method (GradientDescent) are rough
    "objective ×1e-8": (lambda x, _: 1e-8 * (0.5 * x @ H @ x - B @ x), jnp.zeros(5, F32),
                        X_STAR, 3e-3 * float(jnp.max(jnp.abs(X_STAR))), None, 256),
    "objective ×1e8": (lambda x, _: 1e8 * (0.5 * x @ H @ x - B @ x), jnp.zeros(5, F32),
                       X_STAR, 3e-3 * float(jnp.max(jnp.abs(X_STAR))), None, 256),
    "saddle x² − y² from (1, 0)": (lambda x, _: x[0] ** 2 - x[1] ** 2,
                                   jnp.array([1.0, 0.0], F32), None, 0, None, 256),
    "unbounded −Σx": (lambda x, _: -jnp.sum(x), jnp.zeros(3, F32), None, 0, None, 256),
    # tolerance: 1e-2 of the minimizer's size (float32 on condition 1e4: ~1e4·eps·κ)
    "quadratic, cond 1e4, x* ≈ 1e4 out": (lambda x, _: 0.5 * x @ FAR_A @ x - FAR_B @ x,
                                          jnp.zeros(12, F32), FAR_X,
                                          1e-2 * float(np.max(np.abs(FAR_X))), None, 256),
    # f ≡ 1, ∇f ≡ 0 and ∇²f ≡ 0 in float32 around the start (exp(−200) underflows)
    "plateau 1 − exp(−‖x‖²) from 10": (lambda x, _: 1.0 - jnp.exp(-jnp.sum(x**2)),
                                       jnp.array([10.0, 10.0], F32), None, 0, None, 256),
    # saddle at (0, 0) on the way from (1, 0); minima at (0, ±1), reached by escaping
    "double well, escape_saddles=True": (lambda x, _: x[0] ** 2 + (x[1] ** 2 - 1) ** 2,
                                         jnp.array([1.0, 0.0], F32), jnp.array([0.0, 1.0]),
                                         2e-3, None, 256, dict(escape_saddles=True)),
}
ROOT_CASES = {
    "y³ = 8 from 10⁴": (lambda y, _: y**3 - 8.0, jnp.array([1e4], F32), jnp.array([2.0]), 1e-3),
    "linear, exact in one step": (lambda y, _: y - 1.0, jnp.zeros(2, F32), jnp.ones(2), 1e-5),
    "start at the root": (lambda y, _: H @ y - B, X_STAR, X_STAR, 1e-4),
    "e^{−y} (root at ∞)": (lambda y, _: jnp.exp(-y), jnp.array([0.5], F32), None, 0),
    "y² + 1 (no real root)": (lambda y, _: y**2 + 1.0, jnp.array([0.5], F32), None, 0),
}
FIXED_CASES = {
    "cos from 10³": (lambda y, _: jnp.cos(y), jnp.array([1e3], F32), jnp.array([0.7390851]),
                     1e-3),
    "y + 1/(1 + y²) (none)": (lambda y, _: y + 1 / (1 + y**2), jnp.array([0.0], F32), None, 0),
}


def classify(sol, answer, tol, symmetric=False) -> str:
    name = J.status_name(sol.status)
    if name != "successful":
        return f"fail:{name}"
    if answer is None:
        return "**WRONG**"
    params = np.asarray(sol.params, np.float64)
    params = np.abs(params) if symmetric else params  # minima at ±answer
    err = float(np.max(np.abs(params - np.asarray(answer))))
    return "ok" if err <= tol else f"**WRONG** ({err:.1e})"


def run(door, solvers, cases):
    rows = {}
    for case, spec in cases.items():
        fun, x0, answer, tol = spec[:4]
        steps = spec[5] if len(spec) > 5 else 256
        options = spec[6] if len(spec) > 6 else {}
        for sname, make in solvers.items():
            try:
                sol = door(fun, x0, None, solver=make(), throw=False, max_steps=steps,
                           **options)
                rows[(case, sname)] = classify(sol, answer, tol, symmetric=bool(options))
            except Exception as e:  # a clear error is an honest outcome too
                rows[(case, sname)] = f"error: {type(e).__name__}"
            print(f"{case:32s} {sname:20s} {rows[(case, sname)]}", flush=True)
    return rows


def table(title, solvers, cases, rows) -> str:
    head = "| case | " + " | ".join(solvers) + " |\n|---|" + "---|" * len(solvers) + "\n"
    body = "".join(f"| {c} | " + " | ".join(rows[(c, s)] for s in solvers) + " |\n"
                   for c in cases)
    return f"### {title}\n\n{head}{body}"


def main():
    parts = [
        table("minimize", MINIMIZERS, MIN_CASES, run(J.minimize, MINIMIZERS, MIN_CASES)),
        table("root_find", ROOTS, ROOT_CASES, run(J.root_find, ROOTS, ROOT_CASES)),
        table("fixed_point", FIXED, FIXED_CASES, run(J.fixed_point, FIXED, FIXED_CASES)),
    ]
    cells = "".join(parts)
    wrong = cells.count("WRONG")
    text = ("## Honesty table: hostile-but-fair cases in float32 (`honesty.py`)\n\n"
            f"jax {jax.__version__}, float32, default tolerances, throw=False. `ok`: successful "
            "and correct; `fail:<status>`: an honest failure status; **WRONG**: successful "
            f"at a wrong point. **{wrong} WRONG cells.** The stopping rules behind it are "
            "documented in `jaxopt2/_stopping.py`.\n\n" + "\n".join(parts))
    write_section("honesty", text)
    print(f"{wrong} WRONG")


if __name__ == "__main__":
    main()
