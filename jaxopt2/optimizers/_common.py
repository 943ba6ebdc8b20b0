"""Pieces shared by the `jaxopt2.optimizers` transformations (their checks are in
`_checks.py`): the extra-argument contract (`value_fn=` / `batch=`), curvature operators, the
reduction-ratio test (its rules live in `jaxopt2._trust_region`), the non-finite guard and
the PRNG stream whose key the state carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._branch import every_member_cond as every_member_cond
from .._curvature import gauss_newton, hessian
from .._linalg import damped_cg as damped_cg
from .._prng import as_key, check_seed, resolve
from .._tree import (
    result_dtype,
    tree_add,
    tree_all_finite,
    tree_dot,
    tree_norm,
    tree_scale,
    tree_where,
    tree_zeros_like,
)
from .._trust_region import GROW_ABOVE, SHRINK_BELOW, bands, martens_damping
from .._trust_region import reduction_ratio as _ratio
from ._checks import (
    check_cg,
    check_curvature,
    check_grads,
    check_init_params,
    check_learning_rate,
)

# The bands a step's reduction ratio is compared with (Martens 2010, after Moré), kept under
# their old names; the rule itself is `jaxopt2._trust_region.martens_damping`.
RHO_LOW, RHO_HIGH = SHRINK_BELOW, GROW_ABOVE

# A step is accepted when the minibatch loss did not rise by more than this many roundings
# of f: below that a change of f is not measurable, and float32 would reject every step near
# a minimizer.
ROUNDOFF = 10.0


# --------------------------------------------------------------------------- construction


ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], Any]


def bounds(dtype):
    """The range a damping-like scalar is kept in: beyond it λ would underflow relative to
    any curvature, or overflow the squares taken of it."""
    eps = float(jnp.finfo(dtype).eps)
    return eps, 1.0 / eps


def check_precision(optimizer: str, precision):
    """`precision`: None or a `jaxopt2.MixedPrecision` without a `curvature` of its own (the
    transformation's `curvature` argument chooses the operator)."""
    if precision is None:
        return None
    if not callable(getattr(precision, "wrap_objective", None)):
        raise ValueError(f"{optimizer}: `precision` must be a jaxopt2.MixedPrecision("
                         f"compute_dtype) or None; got {precision!r}.")
    if precision.curvature is not None:
        raise ValueError(f"{optimizer}: choose the curvature with the transformation's "
                         f"`curvature=` argument; leave MixedPrecision's `curvature` None.")
    return precision


class Objective:
    """What a transformation knows about its objective when it is built: `model_fn`,
    `loss_fn` and the resolved curvature ("ggn" or "hessian"), checked at construction."""

    def __init__(self, optimizer: str, curvature, model_fn, loss_fn, precision=None):
        self.optimizer = optimizer
        self.kind = check_curvature(optimizer, curvature, model_fn, loss_fn)
        self.model_fn, self.loss_fn = model_fn, loss_fn
        self.precision = check_precision(optimizer, precision)

    def problem(self, params, value_fn, batch, *, needs_value: bool) -> Problem:
        """The `Problem` of one minibatch (`batch` with model_fn/loss_fn, or `value_fn`)."""
        return Problem(self.optimizer, self.kind, params, value_fn, batch, self.model_fn,
                       self.loss_fn, needs_value=needs_value, precision=self.precision)

    def begin(self, grads, params, value_fn, batch, *, needs_value: bool, owner=None):
        """The checks and setup every `update` starts with: the minibatch `Problem`, the
        gradient checked against `params` (errors name `owner`, default the optimizer) and
        sanitized, and whether it was finite."""
        problem = self.problem(params, value_fn, batch, needs_value=needs_value)
        check_grads(owner or self.optimizer, grads, params)
        g, finite = sanitize(grads, params)
        return problem, g, finite


# --------------------------------------------------------------------------- update


class Problem:
    """What one `update` call knows about the minibatch objective: its value as a function of
    the parameters and its curvature operator at `params`. Built (and checked) at trace time."""

    def __init__(self, optimizer: str, curvature: str, params, value_fn, batch, model_fn,
                 loss_fn, *, needs_value: bool, precision=None):
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
        self.precision = precision

    def operator(self):
        """The curvature at `params` as a lineax operator on params-shaped pytrees; with a
        `MixedPrecision`, its products evaluated in the low dtype (the parameters, the
        direction and the minibatch's floating-point leaves cast; with `value_fn` and no
        model, the data it closes over keeps its dtype) and returned in the parameters'."""
        if self.precision is not None:
            policy = type(self.precision)(
                self.precision.compute_dtype, cast_args=self.precision.cast_args,
                curvature=(lambda f, p, b: gauss_newton(self.model_fn, self.loss_fn, p, b))
                if self.curvature == "ggn" else None)
            if self.curvature == "ggn":
                return policy(None, self.params, self.batch)
            return policy(lambda p, _: self.value_fn(p), self.params, None)
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
    # (f(θ+s) − f(θ)) / q(s) as reductions: exact negations, so the same bits.
    rho = jnp.where(ok, _ratio(f0 - f1, -q), jnp.asarray(0.0, dtype))
    return rho.astype(dtype), ok


def adapt(value, rho, ok, no_step, *, grow, shrink, low, high):
    """Trust-region rule on a damping-like scalar (`jaxopt2._trust_region.martens_damping`):
    × `grow` after a rejected step or ρ < 1/4, × `shrink` after ρ > 3/4, unchanged otherwise
    or when there was no step to judge (p = 0); clipped to [low, high] so it can neither
    underflow nor overflow."""
    poor, good = bands(rho)
    new = martens_damping(value, ~ok | poor, good, grow=grow, shrink=shrink)
    new = jnp.where(no_step, value, new)
    return jnp.clip(new, low, high).astype(value.dtype)


def damped_step(problem: Problem, params, g, matvec, p, lr, value, dtype, factor, rho, *,
                adaptive: bool, grow: float, shrink: float, heldout: Problem | None = None):
    """The step s = lr·p of a damped Newton direction p, with the damping-like scalar
    `factor` for the next step and the reduction ratio ρ. With `adaptive`, s is judged by
    `reduction_ratio` (sᵀCs from one more curvature product): a rejected step becomes zero,
    and `factor` follows `adapt` (× `grow` / × `shrink`, within `bounds(dtype)`); without,
    s is taken as is and `factor`, `rho` are returned unchanged. With a `heldout` minibatch
    problem, s is still accepted or rejected on the minibatch it was fitted to, but `factor`
    follows (and `rho` reports) the ratio of the held-out minibatch, with its own gradient
    and curvature: on the fitted minibatch ρ is biased upward (the model fitted the step)
    and drives λ to its floor (exactly: ρ = 1 always for a linear least-squares model)."""
    step = tree_scale(lr, p)
    if not adaptive:
        return step, rho, factor
    curv = lr * lr * tree_dot(p, matvec(p))
    rho, ok = reduction_ratio(problem, params, step, g, curv, value, dtype)
    judge_rho, judge_ok = rho, ok
    if heldout is not None:
        value_h, g_h = jax.value_and_grad(heldout.value_fn)(params)
        g_h = cast_like(g_h, params)
        curv_h = lr * lr * tree_dot(p, matvec_like(heldout.operator(), params)(p))
        judge_rho, judge_ok = reduction_ratio(heldout, params, step, g_h, curv_h, value_h,
                                              dtype)
    low, high = bounds(dtype)
    # No step to judge (g = 0, or a schedule's lr = 0): leave the factor alone.
    factor = adapt(factor, judge_rho, judge_ok, tree_norm(step) == 0, grow=grow,
                   shrink=shrink, low=low, high=high)
    rho = judge_rho
    return tree_where(ok, step, tree_zeros_like(step)), rho, factor


class DampedStep(NamedTuple):
    step: Any  # s = lr·p in the parameters' dtypes, zero where the step was rejected
    direction: Any  # p, the CG solution (params-shaped)
    damping: jax.Array  # λ of this step
    cg_steps: jax.Array  # products the inner CG solve took
    rho: jax.Array  # reduction ratio of the step (the previous one when not measured)
    factor: jax.Array  # the damping-like scalar for the next step
    finite: jax.Array  # bool: the gradient was finite


class DampedNewton:
    """The step `hessian_free` and `regularized_newton` share: solve

        (C + λI) p = −g   (conjugate gradients, at most `cg_max_steps` products, stopping at
                           ‖(C + λI)p + g‖ ≤ `cg_rtol`·‖g‖),

    take s = lr·p, and judge it by the reduction ratio ρ on the minibatch (`damped_step`):
    with `adaptive`, a rejected step becomes zero and the damping-like scalar (λ itself for
    Martens' rule, the Lipschitz estimate H of λ = √(H‖g‖) for Mishchenko's) is multiplied
    by `grow` or `shrink`. The two optimizers differ only in how λ is formed and what the
    state keeps, so they pass λ as a function of the sanitized gradient.

    Built (and its hyperparameters checked) when the transformation is built.
    """

    def __init__(self, optimizer: str, learning_rate, *, model_fn, loss_fn, curvature,
                 cg_max_steps, cg_rtol, adaptive: bool, grow: float, shrink: float,
                 precision=None):
        self.objective = Objective(optimizer, curvature, model_fn, loss_fn, precision)
        check_learning_rate("learning_rate", learning_rate)
        check_cg(cg_max_steps, cg_rtol)
        self.learning_rate = learning_rate
        self.cg_max_steps, self.cg_rtol = cg_max_steps, cg_rtol
        self.adaptive, self.grow, self.shrink = adaptive, grow, shrink

    def init_dtype(self, params):
        """`init`'s check of `params`; returns the dtype the state's scalars take."""
        check_init_params(self.objective.optimizer, params)
        return dtype_of(params)

    def __call__(self, grads, params, value_fn, batch, value, *, count, factor, rho,
                 damping: Callable, x0=None, heldout_value_fn=None,
                 heldout_batch=None, curvature_batch=None) -> DampedStep:
        """One step from `grads` at `params`; `damping(g, dtype)` gives λ, `x0` warm-starts
        CG, `factor` and `rho` are the state's damping-like scalar and last ratio; a held-out
        minibatch (`heldout_batch` with model_fn/loss_fn, or `heldout_value_fn`) judges
        the step for the damping (`damped_step`); `curvature_batch` (with model_fn/loss_fn)
        is the minibatch the curvature products are taken on, in CG and in the ratio's
        model, in place of `batch` (the gradient's and the losses')."""
        problem, g, finite = self.objective.begin(grads, params, value_fn, batch,
                                                  needs_value=self.adaptive)
        o = self.objective
        curvature = problem
        if curvature_batch is not None:
            if o.model_fn is None:
                raise ValueError(f"{o.optimizer}: `curvature_batch` is given to "
                                 f"model_fn(params, batch) and loss_fn(outputs, batch): build "
                                 f"the optimizer with model_fn= and loss_fn=.")
            curvature = o.problem(params, None, curvature_batch, needs_value=False)
        heldout = None
        if heldout_batch is not None or heldout_value_fn is not None:
            if not self.adaptive:
                raise ValueError(f"{o.optimizer}: a held-out minibatch judges the damping, "
                                 f"which `adapt_damping=False` keeps fixed.")
            heldout = o.problem(params, heldout_value_fn, heldout_batch, needs_value=True)
        dtype = dtype_of(params)
        matvec = matvec_like(curvature.operator(), params)
        lam = damping(g, dtype)
        p, cg_steps = damped_cg(matvec, g, lam, rtol=self.cg_rtol,
                                max_steps=self.cg_max_steps, x0=x0)
        lr = learning_rate_at(self.learning_rate, count, dtype)
        step, rho, factor = damped_step(problem, params, g, matvec, p, lr, value, dtype,
                                        factor, rho, adaptive=self.adaptive, grow=self.grow,
                                        shrink=self.shrink, heldout=heldout)
        return DampedStep(cast_like(step, params), p, lam, cg_steps, rho, factor, finite)


class KeyStream:
    """The PRNG stream of a randomized transformation. Built (and `key`, `seed` checked) when
    the transformation is built; `init()` is the raw key data the state stores (uint32, so
    its dtype never changes across steps and any tree utility handles it), and
    `split(data)` the next state's key data and a fresh key to draw from."""

    def __init__(self, optimizer: str, key, seed):
        self.key = as_key(key, optimizer)  # typed, or None for jax.random.key(seed)
        check_seed(seed, optimizer, self.key, traced_ok=True)
        self.seed = seed
        # The implementation (threefry, rbg, ...) the stored data is re-wrapped with.
        self.impl = None if self.key is None else jax.random.key_impl(self.key)

    def init(self):
        return jax.random.key_data(resolve(self.key, self.seed))

    def split(self, data):
        key, sub = jax.random.split(jax.random.wrap_key_data(data, impl=self.impl))
        return jax.random.key_data(key), sub
