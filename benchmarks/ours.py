"""jaxopt2's minimizers, each run as `jax.jit(lambda data: jaxopt2.minimize(...))`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from harness import RTOL, Result, finish, time_jax
from problems import LAM

import jaxopt2


def _ggn(problem):
    """`curvature=` for NewtonCG: the Gauss-Newton operator of f = L(m(p)), with the model
    m(p) = (logits, weights) linear in p, so the GGN equals the Hessian here; it is built from
    a jvp and a vjp of the linear model instead of forward-over-reverse through the loss."""
    wkey = "W" if problem.multinomial else "w"

    def model_fn(p, data):
        return {"z": data["X"] @ p[wkey] + p["b"], "w": p[wkey]}

    def loss_fn(o, data):
        z = o["z"]
        if problem.multinomial:
            picked = jnp.take_along_axis(z, data["y"][:, None], axis=1)[:, 0]
            nll = jnp.mean(jnp.logaddexp.reduce(z, axis=1) - picked)
        else:
            nll = jnp.mean(jnp.logaddexp(0.0, z) - data["y"] * z)
        return nll + 0.5 * LAM * jnp.sum(o["w"] ** 2)

    return lambda fun, params, args: jaxopt2.curvature.gauss_newton(model_fn, loss_fn, params,
                                                                    args)


def _hutchinson_jacobi(num_probes: int):
    """`preconditioner=` for NewtonCG built from the public API: M = diag(H) estimated by
    `jaxopt2.curvature.diagonal` with `num_probes` Rademacher probes per Newton step (vmapped,
    so on a memory-bound problem they cost about one pass over the data, not `num_probes`
    products), floored at 1e-6 of its largest entry. Its products are not in `num_hvp`."""

    def make(fun, params, args, operator):
        d = jaxopt2.curvature.diagonal(operator, jax.random.key(0), num_probes)
        floor = 1e-6 * jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(d)]))
        inv = jax.tree.map(lambda x: 1.0 / jnp.maximum(x, floor), d)
        return lambda r: jax.tree.map(lambda a, b: a * b, inv, r)

    return make


# name -> (class name that must exist in jaxopt2, factory(problem), max_steps)
VARIANTS = {
    "GradientDescent": ("GradientDescent", lambda p: jaxopt2.GradientDescent(rtol=RTOL), 200),
    "LBFGS": ("LBFGS", lambda p: jaxopt2.LBFGS(rtol=RTOL), 20_000),
    "BFGS": ("BFGS", lambda p: jaxopt2.BFGS(rtol=RTOL), 20_000),
    "Newton": ("Newton", lambda p: jaxopt2.Newton(rtol=RTOL), 200),
    # the default preconditioner is "auto" (Jacobi when CG runs long, issue 20)
    "NewtonCG": ("NewtonCG", lambda p: jaxopt2.NewtonCG(rtol=RTOL), 200),
    "NewtonCG(plain CG)": ("NewtonCG",
                           lambda p: jaxopt2.NewtonCG(rtol=RTOL, preconditioner=None), 200),
    "NewtonCG(trust_region)": ("NewtonCG",
                               lambda p: jaxopt2.NewtonCG(rtol=RTOL, trust_region=True), 200),
    "NewtonCG(GGN)": ("NewtonCG", lambda p: jaxopt2.NewtonCG(rtol=RTOL, curvature=_ggn(p)), 200),
    "NewtonCG(Jacobi-64)": ("NewtonCG", lambda p: jaxopt2.NewtonCG(
        rtol=RTOL, preconditioner=_hutchinson_jacobi(64)), 200),
    "RegularizedNewton": ("RegularizedNewton", lambda p: jaxopt2.RegularizedNewton(rtol=RTOL),
                          200),
    "RegularizedNewton(dense)": (
        "RegularizedNewton", lambda p: jaxopt2.RegularizedNewton(rtol=RTOL,
                                                                 linear_solver="dense"), 200),
    "DampedNewton": ("DampedNewton", lambda p: jaxopt2.DampedNewton(rtol=RTOL), 200),
}


# Run only when asked for by name (--solvers): same cost as NewtonCG on these problems.
OPTIONAL = ("NewtonCG(GGN)",)


def available() -> dict:
    return {k: v for k, v in VARIANTS.items() if hasattr(jaxopt2, v[0])}


def status_name(code: int) -> str:
    for name in jaxopt2.RESULTS._name_to_item:
        if getattr(jaxopt2.RESULTS, name)._value == code:
            return name
    return str(code)


def runner(name: str):
    _, factory, max_steps = VARIANTS[name]

    def run(problem, checker, cfg) -> Result:
        solver = factory(problem)
        steps = max_steps
        params0 = problem.params0

        def solve(data):
            sol = jaxopt2.minimize(problem.fun, params0, data, solver=solver, max_steps=steps,
                                   throw=False)
            return sol.params, (sol.status._value, sol.stats)

        times = time_jax(solve, problem.data, cfg)
        params, (code, stats) = times.out
        stats = {k: int(v) for k, v in stats.items()}
        n_hvp = stats["num_hvp"]
        note = f"max_steps={steps}"
        if name == "GradientDescent":
            note += " (a baseline; it needs about cond·ln(1e8) steps)"
        if name == "NewtonCG(Jacobi-64)":
            note += f"; +{64 * stats['num_steps']} vmapped probe products (not counted)"
        if stats["num_hessian"]:
            note += f"; {stats['num_hessian']} dense Hessians"
        res = Result(name, "jaxopt2", iters=stats["num_steps"], n_fun=stats["num_fun"],
                     n_grad=stats["num_grad"], n_hvp=n_hvp, n_hess=stats["num_hessian"],
                     status=status_name(int(code)), note=note)
        return finish(res, checker, params, times)

    return run
