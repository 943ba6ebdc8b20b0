"""Markdown tables and the targets check for run_all.py."""

from __future__ import annotations

import math

from harness import RTOL, Result

TARGET_RATIO = 0.3  # the issue: best jaxopt2 run time <= 0.3 x the fastest anchor
JAX_ANCHORS = ("jaxopt.LBFGS", "jaxopt.BFGS", "optimistix.LBFGS", "optimistix.BFGS")


def _s(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def _i(x):
    return "—" if x is None else str(x)


def fastest(rows: list[Result], family: str) -> Result | None:
    ok = [r for r in rows if r.family == family and r.reached and r.run_s is not None]
    return min(ok, key=lambda r: r.run_s) if ok else None


def fastest_cpu(rows: list[Result], family: str) -> Result | None:
    ok = [r for r in rows if r.family == family and r.reached and r.run_cpu_s is not None]
    return min(ok, key=lambda r: r.run_cpu_s) if ok else None


def progress_line(r: Result) -> str:
    if r.error:
        return f"{r.solver:26s} ERROR {r.error}"
    return (f"{r.solver:26s} {'yes' if r.reached else 'NO ':3s} rel {r.rel_grad:8.1e}  "
            f"it {_i(r.iters):>5s}  grad {_i(r.n_grad):>5s}  hvp {_i(r.n_hvp):>5s}  "
            f"compile {_s(r.compile_s):>6s} s  run {_s(r.run_s):>7s} s (cpu {_s(r.run_cpu_s)}, "
            f"x{r.runs})  {r.status}")


def est_eval_s(r: Result, costs: dict) -> float | None:
    """What the evaluations alone cost, from the counts and the per-evaluation CPU costs."""
    # jaxopt's counters report ~2 value-and-grad per L-BFGS step while its run time matches ~1,
    # so they are left out; SciPy and scikit-learn add host work the estimate cannot see.
    if r.n_grad is None or r.family != "jaxopt2" and not r.solver.startswith("optimistix."):
        return None
    return ((r.n_fun or 0) * costs["fun"] + r.n_grad * costs["grad"]
            + (r.n_hvp or 0) * costs["hvp"] + (r.n_hess or 0) * costs["hess"])


def table(rows: list[Result], costs: dict) -> str:
    ref = fastest(rows, "anchor")
    head = ("| solver | reached | ‖∇f‖∞/‖∇f₀‖∞ | iters | f evals | grad evals | HVP evals | "
            "compile s | run s | run CPU s | evals s (est.) | run / fastest anchor | "
            "status, notes |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in sorted(rows, key=lambda r: (r.family != "jaxopt2",)):
        name = f"**{r.solver}**" if r.family == "jaxopt2" else r.solver
        if r.error:
            lines.append(f"| {name} | error | — | — | — | — | — | — | — | — | — | — | "
                         f"{r.error} |")
            continue
        ratio = (f"{r.run_s / ref.run_s:.2f}" if ref is not None and r.run_s else "—")
        compile_s = _s(r.compile_s) if r.compile_s is not None else "n/a"
        notes = "; ".join(x for x in (r.status if r.status != "successful" else "", r.note) if x)
        lines.append(
            f"| {name} | {'yes' if r.reached else '**no**'} | {r.rel_grad:.1e} | {_i(r.iters)} "
            f"| {_i(r.n_fun)} | {_i(r.n_grad)} | {_i(r.n_hvp)} | {compile_s} | "
            f"{_s(r.run_s)}{'' if r.runs >= 3 else f' (×{r.runs})'} | {_s(r.run_cpu_s)} | "
            f"{_s(est_eval_s(r, costs))} | {ratio} | {notes} |")
    return head + "\n".join(lines) + "\n"


def compile_table(rows: list[Result]) -> str:
    head = ("| solver | compile s | trace s | lower s | XLA compile s | CPU s | HLO ops |\n"
            "|---|---|---|---|---|---|---|\n")
    keep = [r for r in rows if (r.family == "jaxopt2" or r.solver in JAX_ANCHORS)
            and r.compile_s is not None]
    keep.sort(key=lambda r: r.compile_s)
    lines = []
    for r in keep:
        p = r.compile_parts or {}
        parts = " | ".join(_s(p.get(k)) for k in ("trace", "lower", "xla", "cpu"))
        parts += f" | {_i(p.get('hlo_ops'))}"
        name = f"**{r.solver}**" if r.family == "jaxopt2" else r.solver
        lines.append(f"| {name} | {r.compile_s:.2f} | {parts} |")
    return head + "\n".join(lines) + "\n"


def _get(rows, name):
    return next((r for r in rows if r.solver == name and not r.error), None)


def targets(results: dict[str, list[Result]], infos: dict) -> list[str]:
    out = []
    for pname in ("synthetic", "softmax_digits"):
        rows = results.get(pname)
        if not rows:
            continue
        label = infos[pname]["title"]
        best, ref = fastest(rows, "jaxopt2"), fastest(rows, "anchor")
        if best is None or ref is None:
            out.append(f"- {label}: not decidable (no jaxopt2 solver or no anchor reached the "
                       "target).")
            continue
        ratio = best.run_s / ref.run_s
        cpu_best = fastest_cpu(rows, "jaxopt2")
        cpu_ref = fastest_cpu(rows, "anchor")
        cpu_ratio = cpu_best.run_cpu_s / cpu_ref.run_cpu_s
        jl = _get(rows, "jaxopt.LBFGS")
        extra = (f" Against jaxopt.LBFGS ({jl.run_s:.3g} s wall, {jl.run_cpu_s:.3g} s CPU): "
                 f"{best.run_s / jl.run_s:.2f}× wall, {cpu_best.run_cpu_s / jl.run_cpu_s:.2f}× "
                 "CPU." if jl and jl.reached and jl is not ref else "")
        out.append(f"- {label}: best jaxopt2 = {best.solver} at {best.run_s:.3g} s, fastest "
                   f"anchor = {ref.solver} at {ref.run_s:.3g} s: ratio {ratio:.2f}× "
                   f"(target ≤ {TARGET_RATIO}×) — **{'met' if ratio <= TARGET_RATIO else 'missed'}"
                   f"**. By CPU time: {cpu_best.solver} {cpu_best.run_cpu_s:.3g} s vs "
                   f"{cpu_ref.solver} {cpu_ref.run_cpu_s:.3g} s, {cpu_ratio:.2f}×.{extra} "
                   f"Including compile: {best.solver} {best.compile_s + best.run_s:.3g} s vs "
                   f"{ref.solver} {(ref.compile_s or 0) + ref.run_s:.3g} s.")
    for pname, rows in results.items():
        ncg, ob = _get(rows, "NewtonCG"), _get(rows, "optimistix.BFGS")
        if ncg is None or ob is None:
            continue
        ok = ncg.compile_s <= ob.compile_s
        out.append(f"- Compile, {pname}: NewtonCG {ncg.compile_s:.2f} s vs optimistix.BFGS "
                   f"{ob.compile_s:.2f} s (target ≤) — **{'met' if ok else 'missed'}**.")
    return out


def targets_text(results, infos) -> str:
    return "Targets:\n" + "\n".join(targets(results, infos))


def markdown(results, infos, meta, notes=None) -> str:
    v = meta["versions"]
    s = ["## Minimization: logistic and softmax regression (`run_all.py`)\n",
         f"Generated by `{meta['command'].strip()}` on {meta['date']}"
         f"{' (QUICK smoke run: small synthetic problem, 1 repeat)' if meta['quick'] else ''}; "
         f"the whole run took {meta['total_s']:.0f} s.\n",
         f"- Machine: {meta['cpu']}, {meta['cores']} cores visible; Python {meta['python']}; "
         f"jax {v['jax']}, jaxlib {v['jaxlib']}, jaxopt {v['jaxopt']}, optimistix "
         f"{v['optimistix']}, scipy {v['scipy']}, scikit-learn {v['sklearn']}.",
         "- Single-threaded: " + ", ".join(f"`{k}={val}`" for k, val in meta["threads"].items())
         + ", set before jax and NumPy are imported"
         + (f"; and the process pinned to core {meta['pinned_cpu']} (`sched_setaffinity`), "
            "because XLA:CPU still splits large dots over threads despite the flags"
            if meta.get("pinned_cpu") is not None else "; NOT pinned to one core (--no-pin)")
         + ". Load average (1/5/15 min) at start "
         + "/".join(f"{x:.1f}" for x in meta["load"]["start"]) + ", at end "
         + "/".join(f"{x:.1f}" for x in meta["load"]["end"]) + ": with other work on the "
         "machine, wall times stretch while *run CPU s* (process CPU time) does not, so "
         "compare CPU times when the load exceeds the core count.",
         "- float64 (`jax_enable_x64`). Every solver starts at 0 and must reach "
         f"‖∇f(x)‖∞ ≤ {RTOL:g}·‖∇f(0)‖∞; *reached* and the ratio column come from one common "
         "jitted `jax.grad` of the objective, not from the libraries' own reports.",
         "- JAX solvers (jaxopt2, jaxopt, optimistix) run as one jitted function of the data. "
         "*compile s* = trace + lower + XLA compile (`jax.jit(f).trace(data).lower().compile()`); "
         "*run s* "
         f"= median of {meta['repeats']} calls of the compiled executable, each ended by "
         "`block_until_ready`; a first call under 1 s is a discarded warm-up, and slow solvers "
         f"get fewer calls (shown as ×k) so that each solver's timed calls fit in about "
         f"{meta['budget_s']:g} s (the calibration run of a calibrated anchor counts as its first "
         "call). SciPy: callbacks are jitted JAX value-and-grad and "
         "HVP, and *compile s* is their compile time; run time includes SciPy's Python loop "
         "and the host transfers. scikit-learn: NumPy throughout, no compile (n/a).",
         "- Counts: *f evals* objective-only, *grad evals* value-and-gradient, *HVP evals* "
         "Hessian-vector products, each as the library reports them (jaxopt2 `Solution.stats`; "
         "jaxopt state; optimistix: one forward linearization per step, the gradient only on "
         "accepted steps; SciPy nfev/njev/nhev; scikit-learn reports iterations only). "
         "*run / fastest anchor* is relative to the fastest anchor that reached the target.",
         "- Tolerances: jaxopt2 `rtol=1e-8` (exactly the target). Anchors as described in "
         "`benchmarks/anchors.py`: gradient-norm tolerances set to the target (jaxopt's and "
         "trust-ncg's are on the 2-norm, so slightly stricter than needed); optimistix and "
         "SciPy Newton-CG have no gradient test, so their tolerance is the loosest of "
         "1e-8 … 1e-16 that reaches the target, and scikit-learn's lbfgs (which can stop first "
         "on SciPy's ftol) tries tol = target × 1, 0.1, 0.01, 0.001; tried loosest first, "
         "stopping once three in a row leave the result unchanged.\n"]
    if meta["missing"]:
        s.append(f"jaxopt2 solvers not available in this run: {', '.join(meta['missing'])}.\n")
    s.append("### Targets (issue 3)\n")
    s.extend(targets(results, infos) or ["- (the target problems were not run)"])
    s.append("")
    if notes:
        s.append(notes.rstrip() + "\n")
    for pname, rows in results.items():
        info = infos[pname]
        c = info["costs"]
        null = (f", plus {info['null_dim']} null direction (b → b + c·1)"
                if info["null_dim"] else "")
        s.append(f"### {info['title']}\n")
        s.append(f"{info['d']} parameters; Hessian at 0: condition number {info['cond']:.3g} "
                 f"(numpy eigvalsh){null}; ‖∇f(0)‖∞ = {info['g0']:.3g}. One evaluation inside "
                 f"a jitted loop (CPU time): f {c['fun'] * 1e3:.3g} ms, value-and-grad "
                 f"{c['grad'] * 1e3:.3g} ms, linearized HVP {c['hvp'] * 1e3:.3g} ms, dense "
                 f"Hessian (`jax.hessian`) {c['hess'] * 1e3:.3g} ms. *evals s (est.)* = the "
                 "counts times these costs: the part of the run spent evaluating the model, "
                 "the rest is the solver's own work and loop overhead.\n")
        s.append(table(rows, c))
    if "breast_cancer" in results:
        s.append("### Compile times (breast cancer, JAX solvers)\n")
        s.append(compile_table(results["breast_cancer"]))
    return "\n".join(s) + "\n"
