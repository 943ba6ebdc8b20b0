"""Private helpers of `jaxopt2.optimizers`: hyperparameter checks, the extra-argument contract
(`value_fn=` / `batch=`), curvature operators, the reduction-ratio test and the non-finite
guard shared by the four optax transformations."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._curvature import gauss_newton, hessian
from ._krylov import truncated_cg
from ._tree import (
    result_dtype,
    tree_add,
    tree_all_finite,
    tree_axpy,
    tree_dot,
    tree_neg,
    tree_norm,
    tree_where,
    tree_zeros_like,
)

CURVATURES = ("ggn", "hessian")

# Factors a step's reduction ratio ρ = (f(θ+s) − f(θ)) / q(s) is compared with (Martens 2010,
# after Moré's trust-region rule): below 1/4 the quadratic model was too optimistic, above
# 3/4 it was good enough to trust more.
RHO_LOW, RHO_HIGH = 0.25, 0.75

# A step is accepted when the minibatch loss did not rise by more than this many roundings
# of f: below that a change of f is not measurable, and float32 would reject every step near
# a minimizer.
ROUNDOFF = 10.0


# --------------------------------------------------------------------------- construction


def check_number(name: str, value, *, low=None, high=None, low_open=False, high_open=False):
    """A real number in the interval given (either bound may be open or missing)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}" \
                   f"{')' if high_open or high is None else ']'}"
        raise ValueError(f"`{name}` must be a finite number in {interval}; got {value!r}.")


def check_int(name: str, value, *, low: int = 1):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be a Python int ≥ {low}; got {value!r}.")


def check_learning_rate(name: str, value, *, allow_none: bool = False):
    """A positive float or an optax schedule (a callable of the step count)."""
    if value is None and allow_none:
        return
    if callable(value):
        return
    check_number(name, value, low=0.0, low_open=True)


def check_curvature(optimizer: str, curvature, model_fn, loss_fn) -> str:
    """Resolve `curvature` (None: "ggn" with model_fn/loss_fn, else "hessian")."""
    if (model_fn is None) != (loss_fn is None):
        raise ValueError(f"{optimizer}: pass both `model_fn(params, batch) -> outputs` and "
                         f"`loss_fn(outputs, batch) -> scalar`, or neither.")
    for name, fn in (("model_fn", model_fn), ("loss_fn", loss_fn)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{optimizer}: `{name}` must be callable; got {fn!r}.")
    if curvature is None:
        return "ggn" if model_fn is not None else "hessian"
    if curvature not in CURVATURES:
        raise ValueError(f"{optimizer}: `curvature` must be 'ggn' (Gauss-Newton), 'hessian' or "
                         f"None (GGN when model_fn/loss_fn are given); got {curvature!r}.")
    if curvature == "ggn" and model_fn is None:
        raise ValueError(f"{optimizer}: curvature='ggn' needs the split of the loss into model "
                         f"and loss: pass `model_fn(params, batch) -> outputs` and "
                         f"`loss_fn(outputs, batch) -> scalar` to {optimizer}(...), or use "
                         f"curvature='hessian' (Hessian products of `value_fn`).")
    return curvature


# --------------------------------------------------------------------------- update


class Problem:
    """What one `update` call knows about the minibatch objective: its value as a function of
    the parameters and its curvature operator at `params`. Built (and checked) at trace time."""

    def __init__(self, optimizer: str, curvature: str, params, value_fn, batch, model_fn,
                 loss_fn, *, needs_value: bool):
        if params is None:
            raise ValueError(f"{optimizer}: `update` needs the current parameters: call "
                             f"`update(grads, state, params, ...)`.")
        with_model = model_fn is not None
        if with_model and batch is None and (curvature == "ggn" or value_fn is None):
            raise ValueError(f"{optimizer} was built with model_fn/loss_fn: pass the minibatch "
                             f"as `update(grads, state, params, batch=batch)` (the same `batch` "
                             f"given to model_fn(params, batch) and loss_fn(outputs, batch)).")
        if not with_model and value_fn is None and (needs_value or curvature == "hessian"):
            raise ValueError(f"{optimizer} needs the minibatch loss: pass "
                             f"`update(grads, state, params, value_fn=lambda p: loss(p, batch))`"
                             f", or build it with model_fn= and loss_fn= and pass `batch=`.")
        if value_fn is not None and not callable(value_fn):
            raise ValueError(f"{optimizer}: `value_fn` must be a function params -> scalar "
                             f"loss; got {value_fn!r}.")
        self.params = params
        self.curvature = curvature
        self.batch = batch
        self.model_fn, self.loss_fn = model_fn, loss_fn
        if value_fn is None and with_model:
            value_fn = lambda p: loss_fn(model_fn(p, batch), batch)
        self.value_fn = value_fn

    def operator(self):
        """The curvature at `params` as a lineax operator on params-shaped pytrees."""
        if self.curvature == "ggn":
            return gauss_newton(self.model_fn, self.loss_fn, self.params, self.batch)
        return hessian(lambda p, _: self.value_fn(p), self.params)

    def value(self, params, dtype):
        return jnp.asarray(self.value_fn(params)).astype(dtype)


def dtype_of(params):
    return jnp.dtype(result_dtype(params))


def cast_like(tree, params):
    """`tree` with every leaf in the dtype of the matching parameter leaf."""
    return jtu.tree_map(lambda t, p: jnp.asarray(t).astype(p.dtype), tree, params)


def matvec_like(op, params):
    """op.mv with its outputs cast to the parameters' dtypes (data of another precision
    would otherwise leak into the iterates)."""
    return lambda v: cast_like(op.mv(v), params)


def sanitize(grads, params):
    """The gradient in the parameters' dtypes with non-finite entries zeroed, and whether it
    was finite. The update of a non-finite gradient is discarded anyway (`guard`); zeroing
    keeps NaN out of the inner loops, so they stop at once instead of running to the cap."""
    g = cast_like(grads, params)
    finite = tree_all_finite(g)
    return tree_where(finite, g, tree_zeros_like(g)), finite


def guard(ok, updates, new_state, old_state):
    """Zero update and the old state unless `ok` and everything computed is finite: a bad
    minibatch (NaN/inf gradient, or a curvature that broke down) skips the step, as
    `optax.apply_if_finite` would, and never poisons the state."""
    ok = ok & tree_all_finite(updates) & tree_all_finite(
        jtu.tree_leaves(new_state, is_leaf=lambda x: x is None))
    updates = tree_where(ok, updates, tree_zeros_like(updates))
    return updates, tree_where(ok, new_state, old_state)


def learning_rate_at(learning_rate, count, dtype):
    """The step size of step `count`: a constant or an optax schedule."""
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    return jnp.asarray(lr).astype(dtype)


def scalar(value, dtype):
    # Always a strongly typed array: a weakly typed leaf would change the jit cache key
    # between steps and trigger a recompilation.
    return jnp.full((), value, dtype)


# --------------------------------------------------------------------------- damped solves


def damped_cg(matvec, g, lam, *, rtol, max_steps, x0=None):
    """Truncated CG for (C + λI) p = −g, optionally warm-started from x0.

    Returns (p, iterations). The stopping test is ‖(C + λI)p + g‖ ≤ rtol·‖g‖ whatever the
    warm start. A warm start is only used when its quadratic model value
    φ(x0) = ½x0ᵀ(C + λI)x0 + gᵀx0 is negative, i.e. it beats p = 0: CG from x0 only ever
    decreases φ, so a bad start (a stale direction after the landscape turned) could
    otherwise leave p worse than no step at all.
    """
    def damped(v):
        return tree_axpy(lam, v, matvec(v))

    atol = rtol * tree_norm(g)
    if x0 is None:
        cg = truncated_cg(damped, tree_neg(g), rtol=0.0, atol=atol, max_iters=max_steps)
        return cg.x, cg.num_iters
    ax0 = damped(x0)
    use = 0.5 * tree_dot(x0, ax0) + tree_dot(g, x0) < 0
    x0 = tree_where(use, x0, tree_zeros_like(x0))
    ax0 = tree_where(use, ax0, tree_zeros_like(ax0))
    # Solve for the correction d = p − x0: (C + λI) d = −g − (C + λI) x0.
    cg = truncated_cg(damped, tree_neg(tree_add(g, ax0)), rtol=0.0, atol=atol,
                      max_iters=max_steps)
    return tree_add(x0, cg.x), cg.num_iters + 1


def trial_values(problem: Problem, params, step, value, dtype):
    """f(θ), f(θ + s) on the minibatch and whether the step is acceptable: f(θ + s) finite
    and not above f(θ) beyond rounding. `value` = f(θ) when the caller passed it (the optax
    line-search convention), else f(θ) is evaluated here."""
    f0 = problem.value(params, dtype) if value is None else jnp.asarray(value).astype(dtype)
    f1 = problem.value(tree_add(params, step), dtype)
    slack = ROUNDOFF * jnp.finfo(dtype).eps * jnp.abs(f0)
    ok = jnp.isfinite(f1) & jnp.isfinite(f0) & (f1 <= f0 + slack)
    return f0, f1, ok


def reduction_ratio(problem: Problem, params, step, g, curv_step, value, dtype):
    """The ratio ρ = (f(θ+s) − f(θ)) / q(s) of the actual to the predicted change of the
    minibatch loss, q(s) = gᵀs + ½sᵀCs the undamped quadratic model (`curv_step` = sᵀCs),
    and whether the step is acceptable: `trial_values` accepts it and q(s) < 0 (a step the
    model does not predict to decrease f is not trusted). Costs one or two evaluations of f.
    A rejected step reports ρ = 0.
    """
    f0, f1, ok = trial_values(problem, params, step, value, dtype)
    q = (tree_dot(g, step) + 0.5 * curv_step).astype(dtype)
    ok = ok & (q < 0)
    rho = (f1 - f0) / jnp.where(q < 0, q, -1.0)
    rho = jnp.where(ok & jnp.isfinite(rho), rho, jnp.asarray(0.0, dtype))
    return rho.astype(dtype), ok


def adapt(value, rho, ok, no_step, *, grow, shrink, low, high):
    """Trust-region rule on a damping-like scalar: × `grow` after a rejected step or ρ < 1/4,
    × `shrink` after ρ > 3/4, unchanged otherwise or when there was no step to judge (p = 0);
    clipped to [low, high] so it can neither underflow nor overflow."""
    new = jnp.where(~ok | (rho < RHO_LOW), value * grow,
                    jnp.where(rho > RHO_HIGH, value * shrink, value))
    new = jnp.where(no_step, value, new)
    return jnp.clip(new, low, high).astype(value.dtype)


def key_data(seed: int):
    """Raw uint32 key data: stored in the state so its dtype never changes across steps."""
    return jax.random.key_data(jax.random.key(seed))


def split_key(data):
    key, sub = jax.random.split(jax.random.wrap_key_data(data))
    return jax.random.key_data(key), sub
