"""Registration-free Kronecker factors (K-FAC statistics) of the Gauss-Newton / Fisher matrix,
found by reading the model's jaxpr: `kronecker_factors` and the layout `kfac` needs.

`model_fn(params, batch)` is traced to a jaxpr and evaluated by a small interpreter that
knows which variables are parameter leaves. A `dot_general` with a parameter leaf as one
operand (no dot batch dimensions), or an ungrouped convolution with a leaf as its kernel, is
a *dense use*: its other operand (the input patches, for a convolution) gives the layer
inputs a, and a zero probe added to its output gives, by one backward pass, the output
cotangents g.
A leaf broadcast and added to a value is a *bias use* (a = 1). Nested `jit`s are entered;
a leaf that reaches anything else (a grouped convolution, a `scan`, an elementwise product, a custom
derivative, ...) is used "otherwise" and gets a diagonal estimate instead. A leaf with several
dense uses (weight tying, a layer applied at several positions) sums their statistics: the
K-FAC "expand" approximation, exact in expectation for one use per example.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.extend.core import Literal

_IDENTITY = ("convert_element_type", "copy", "copy_p")
_CALLS = ("jit", "pjit", "closed_call", "core_call")
FISHERS = ("sampled", "exact", "empirical")
MAX_FACTOR_SIZE = 4096


class Layout(NamedTuple):
    """How a leaf's gradient is the matrix the factors act on: `transpose(grad, perm)`
    reshaped to (d_in, d_out), A of size d_in, G of size d_out."""
    perm: tuple
    d_in: int
    d_out: int


class KroneckerFactors(NamedTuple):
    """Per parameter leaf (pytrees like the parameters): A = (1/N) Σ a aᵀ and G = Σ g gᵀ
    for leaves with dense or bias uses ((0,) arrays otherwise), and the diagonal estimate
    for the other leaves (params-shaped; (0,) arrays for Kronecker leaves)."""
    A: Any
    G: Any
    diagonal: Any


class _Use(NamedTuple):
    leaf: int
    layout: Layout
    out_shape: tuple
    cot_perm: tuple  # transpose of the output cotangent to (positions..., d_out dims)


class _Trace:
    """What one interpretation found (filled at trace time) and the probes it adds."""

    def __init__(self, probes=None):
        self.uses: list[_Use] = []
        self.acts: list = []
        self.other: set[int] = set()
        self.probes = probes

    def add(self, use: _Use, out, act):
        self.uses.append(use)
        self.acts.append(act)
        if self.probes is None:
            return out
        return out + self.probes[len(self.uses) - 1].astype(out.dtype)


def _bind(eqn, invals):
    out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def _dense(eqn, invals, views, trace):
    """A dot_general with one parameter operand, or None when it is not a dense use."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    side = 0 if views[0] is not None else 1
    if lb or rb or views[1 - side] is not None or views[side][0] != "param":
        return None
    p_val, x_val = invals[side], invals[1 - side]
    p_con, x_con = (lc, rc) if side == 0 else (rc, lc)
    p_free = tuple(d for d in range(p_val.ndim) if d not in p_con)
    x_free = tuple(d for d in range(x_val.ndim) if d not in x_con)
    layout = Layout(tuple(p_con) + p_free, math.prod(p_val.shape[d] for d in p_con),
                    math.prod(p_val.shape[d] for d in p_free))
    # dot_general's output is (lhs free..., rhs free...)
    n_p, n_x = len(p_free), len(x_free)
    cot_perm = (tuple(range(n_p, n_p + n_x)) + tuple(range(n_p)) if side == 0
                else tuple(range(n_x + n_p)))
    act = jnp.transpose(x_val, x_free + tuple(x_con)).reshape(-1, layout.d_in)
    out = _bind(eqn, invals)[0]
    use = _Use(views[side][1], layout, out.shape, cot_perm)
    return trace.add(use, out, jax.lax.stop_gradient(act))


def _conv(eqn, invals, views, trace):
    """A convolution whose kernel is a parameter leaf (ungrouped), or None: the layer inputs
    are the input patches (KFC, Grosse & Martens 2016), one row per output position."""
    p = eqn.params
    if views[0] is not None or views[1][0] != "param" or p["feature_group_count"] != 1 \
            or p["batch_group_count"] != 1:
        return None
    x, kernel = invals
    dn = p["dimension_numbers"]
    k_out, k_in, k_space = dn.rhs_spec[0], dn.rhs_spec[1], tuple(dn.rhs_spec[2:])
    patches = jax.lax.conv_general_dilated_patches(
        x, tuple(kernel.shape[d] for d in k_space), p["window_strides"], p["padding"],
        p["lhs_dilation"], p["rhs_dilation"], dn, p["precision"])
    # patches are laid out like the output, features ordered (in channel, spatial...)
    order = (dn.out_spec[0],) + tuple(dn.out_spec[2:]) + (dn.out_spec[1],)
    layout = Layout((k_in,) + k_space + (k_out,), kernel.size // kernel.shape[k_out],
                    kernel.shape[k_out])
    act = jnp.transpose(patches, order).reshape(-1, layout.d_in)
    out = _bind(eqn, invals)[0]
    use = _Use(views[1][1], layout, out.shape, order)
    return trace.add(use, out, jax.lax.stop_gradient(act))


def _bias(eqn, invals, views, trace):
    """x + broadcast(b) (either order) with b a parameter leaf, or None."""
    side = 0 if views[0] is not None else 1
    # lax.add broadcasts size-1 axes of operands of equal rank
    if views[1 - side] is not None or views[side][0] != "bias" or \
            invals[0].ndim != invals[1].ndim:
        return None
    _, leaf, dims, shape = views[side]
    out = _bind(eqn, invals)[0]
    feature = tuple(d for d, s in zip(dims, shape, strict=True) if s != 1)
    positions = tuple(d for d in range(out.ndim) if d not in feature)
    layout = Layout(tuple(range(len(shape))), 1, math.prod(shape))
    return trace.add(_Use(leaf, layout, out.shape, positions + feature), out, None)


def _interpret(jaxpr, consts, args, views, trace):
    """Evaluate `jaxpr`, recording parameter uses in `trace`; returns the outputs and their
    views (which outputs are parameter leaves, for nested calls)."""
    env, view = {}, {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    def seen(v):
        return None if isinstance(v, Literal) else view.get(v)

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, a, w in zip(jaxpr.invars, args, views, strict=True):
        env[v] = a
        if w is not None:
            view[v] = w
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        vs = [seen(v) for v in eqn.invars]
        name = eqn.primitive.name
        outs, out_views = None, [None] * len(eqn.outvars)
        if any(w is not None for w in vs):
            if name in _IDENTITY and vs[0][0] == "param":
                outs, out_views = _bind(eqn, invals), [vs[0]]
            elif name in _CALLS and "jaxpr" in eqn.params:
                inner = eqn.params["jaxpr"]
                outs, out_views = _interpret(inner.jaxpr, inner.consts, invals, vs, trace)
            elif name == "dot_general":
                out = _dense(eqn, invals, vs, trace)
                outs = None if out is None else [out]
            elif name == "conv_general_dilated":
                out = _conv(eqn, invals, vs, trace)
                outs = None if out is None else [out]
            elif name == "broadcast_in_dim" and vs[0][0] == "param":
                outs = _bind(eqn, invals)
                out_views = [("bias", vs[0][1], eqn.params["broadcast_dimensions"],
                              invals[0].shape)]
            elif name == "add":
                out = _bias(eqn, invals, vs, trace)
                outs = None if out is None else [out]
            if outs is None:  # any other use: the leaf gets the diagonal fallback
                trace.other.update(w[1] for w in vs if w is not None)
        if outs is None:
            outs = _bind(eqn, invals)
        for v, o, w in zip(eqn.outvars, outs, out_views, strict=True):
            env[v] = o
            if w is not None:
                view[v] = w
    return [read(v) for v in jaxpr.outvars], [seen(v) for v in jaxpr.outvars]


class Model:
    """`model_fn` as a jaxpr over the flat parameter leaves and the batch, with the uses found
    in it: `layouts[i]` is leaf i's `Layout`, or None for the diagonal fallback (also when
    a factor would be larger than `max_factor_size`). `batch` may be a pytree of
    `jax.ShapeDtypeStruct` (only shapes are read)."""

    def __init__(self, model_fn, params, batch, max_factor_size: int = MAX_FACTOR_SIZE):
        leaves, self.treedef = jtu.tree_flatten(params)
        self.closed, self.out_shape = jax.make_jaxpr(
            lambda ls, b: model_fn(jtu.tree_unflatten(self.treedef, ls), b),
            return_shape=True)(leaves, batch)
        self.out_tree = jtu.tree_structure(self.out_shape)
        trace = _Trace()
        # finds the uses and computes nothing
        jax.eval_shape(lambda ls, b: self._run(ls, b, trace), leaves, batch)
        self.uses = trace.uses
        layouts: dict[int, Layout | None] = {}
        for use in trace.uses:
            if layouts.setdefault(use.leaf, use.layout) != use.layout:
                layouts[use.leaf] = None  # used with two layouts: no single Kronecker factor
        for leaf in trace.other:
            layouts[leaf] = None
        for leaf, lay in layouts.items():
            if lay is not None and max(lay.d_in, lay.d_out) > max_factor_size:
                layouts[leaf] = None  # its eigh would cost more than the layer
        self.layouts = [layouts.get(i) for i in range(len(leaves))]

    def _run(self, leaves, batch, trace):
        args = list(leaves) + jtu.tree_leaves(batch)
        views = [("param", i) for i in range(len(leaves))] + [None] * (len(args) - len(leaves))
        outs, _ = _interpret(self.closed.jaxpr, self.closed.consts, args, views, trace)
        return jtu.tree_unflatten(self.out_tree, outs)

    def forward(self, batch):
        """(leaves, probes) -> outputs with the probes added at every use, and the layer
        inputs (as aux)."""
        def run(leaves, probes):
            trace = _Trace(probes)
            return self._run(leaves, batch, trace), trace.acts
        return run

    def zero_probes(self, dtype):
        return [jnp.zeros(u.out_shape, dtype) for u in self.uses]


def output_sqrt_hessian(loss_fn, outputs, batch, exact: bool = True):
    """C with C Cᵀ = ∇²L per example: the Hessian of `loss_fn` in the outputs, assumed block
    diagonal over the leading (example) axis of every output leaf, from k output-space
    Hessian-vector products (k features per example), clipped to its PSD part (`exact`), or
    C Cᵀ = ∇²L + δI with a relative shift δ ≈ √ε_mach (`_psd_sqrt`, cheaper). Returns
    (C (N, k, k), unravel of a (N, k) array into the outputs' pytree)."""
    flat = jtu.tree_leaves(outputs)
    n = flat[0].shape[0]
    sizes = [x.size // n for x in flat]
    k = sum(sizes)

    def unravel(mat):
        parts = jnp.split(mat, list(jnp.cumsum(jnp.asarray(sizes))[:-1]), axis=1) \
            if len(sizes) > 1 else [mat]
        return jtu.tree_unflatten(jtu.tree_structure(outputs),
                                  [p.reshape(x.shape).astype(x.dtype)
                                   for p, x in zip(parts, flat, strict=True)])

    def ravel(tree):
        return jnp.concatenate([x.reshape(n, -1) for x in jtu.tree_leaves(tree)], axis=1)

    grad = jax.grad(lambda o: loss_fn(o, batch))

    def column(j):
        e = jnp.zeros((n, k), flat[0].dtype).at[:, j].set(1)
        return ravel(jax.jvp(grad, (outputs,), (unravel(e),))[1])

    H = jnp.moveaxis(jax.vmap(column)(jnp.arange(k)), 0, -1)  # (N, k, k), column j last
    H = 0.5 * (H + H.swapaxes(-1, -2))
    return (_clipped_sqrt(H) if exact else _psd_sqrt(H)), unravel, ravel


def _clipped_sqrt(H):
    w, Q = jnp.linalg.eigh(H)
    return (Q * jnp.sqrt(jnp.maximum(w, 0))[..., None, :]).astype(H.dtype)


def _psd_sqrt(H):
    """C with C Cᵀ ≈ H⁺ (the PSD part) for a batch of symmetric H: the Cholesky factor of
    H + δI, δ = √ε_mach · max diag H per example (a convex loss: 7-9× cheaper than `eigh` at
    k ≈ 100 outputs per example, the softmax of a character model), and the clipped
    eigendecomposition when any Cholesky fails (H not PSD), under `lax.cond`, so the costly
    branch runs only then (outside `vmap`)."""
    eps = jnp.finfo(H.dtype).eps
    eye = jnp.eye(H.shape[-1], dtype=H.dtype)
    top = jnp.max(jnp.abs(jnp.diagonal(H, axis1=-2, axis2=-1)), axis=-1)
    # a tiny relative shift makes a PSD H with a null space (a softmax's Hessian) factor
    shift = jnp.sqrt(eps) * jnp.where(top > 0, top, 1)[..., None, None]
    L = jnp.linalg.cholesky(H + shift * eye)
    return jax.lax.cond(jnp.all(jnp.isfinite(L)), lambda: L, lambda: _clipped_sqrt(H))


def statistics(model: Model, loss_fn, leaves, batch, fisher: str, key):
    """A, G per Kronecker leaf and the diagonal per fallback leaf (flat lists; None where
    not applicable) for one minibatch; also the model's outputs."""
    dtype = jnp.result_type(*leaves)
    probes = model.zero_probes(dtype)
    outputs, vjp, acts = jax.vjp(model.forward(batch), leaves, probes, has_aux=True)
    n = jtu.tree_leaves(outputs)[0].shape[0]
    if fisher == "empirical":
        # per-example gradients of a mean are ∇ℓₙ/N: √N makes Σ g gᵀ the average ∇ℓ ∇ℓᵀ
        grad = jax.grad(lambda o: loss_fn(o, batch))(outputs)
        cots = jtu.tree_map(lambda u: (u * jnp.sqrt(n))[None], grad)
    else:
        C, unravel, _ = output_sqrt_hessian(loss_fn, outputs, batch,
                                            exact=fisher == "exact")
        if fisher == "exact":
            # every column of C (k backward passes), each example's with a random sign: the
            # signs square away in G, and cancel the cross-example terms of the diagonal
            signs = jax.random.rademacher(key, C.shape[:1] + C.shape[2:], C.dtype)
            cots = jax.vmap(unravel, in_axes=2)(C * signs[:, None, :])
        else:
            z = jax.random.normal(key, C.shape[:2], C.dtype)
            cots = jtu.tree_map(lambda u: u[None], unravel(jnp.einsum("nij,nj->ni", C, z)))
    ct_leaves, ct_probes = jax.vmap(vjp)(cots)
    A = [None] * len(leaves)
    G = [None] * len(leaves)
    count = [0] * len(leaves)
    for use, act, g in zip(model.uses, acts, ct_probes, strict=True):
        i = use.leaf
        if model.layouts[i] is None:
            continue
        num_cots = g.shape[0]
        g = jnp.transpose(g, (0,) + tuple(1 + d for d in use.cot_perm))
        g = g.reshape(-1, use.layout.d_out)
        if act is None:  # a bias: a = 1 at every position
            rows = g.shape[0] // num_cots
            a_stat = jnp.full((1, 1), rows, g.dtype)
        else:
            rows, a_stat = act.shape[0], act.T @ act
        A[i] = a_stat if A[i] is None else A[i] + a_stat
        G[i] = g.T @ g if G[i] is None else G[i] + g.T @ g
        count[i] += rows
    A = [a / c if a is not None else None for a, c in zip(A, count, strict=True)]
    diagonal = [jnp.sum(ct * ct, axis=0) if lay is None else None
                for ct, lay in zip(ct_leaves, model.layouts, strict=True)]
    return A, G, diagonal, outputs


def kronecker_factors(model_fn, loss_fn, params, batch, *, fisher: str = "sampled",
                      key=None, max_factor_size: int = MAX_FACTOR_SIZE) -> KroneckerFactors:
    """Registration-free Kronecker factors of the Gauss-Newton (Fisher) matrix of
    `loss_fn(model_fn(params, batch), batch)`, found by tracing `model_fn` to a jaxpr.

    For every parameter leaf W with dense uses out = x·W (any `dot_general` with W as one
    operand, e.g. `x @ W`, `W @ x` under `vmap`, `eqx.nn.Linear`) or convolutions with W as
    the kernel (`lax.conv_general_dilated`, `eqx.nn.Conv`; a is the input patch, one row per
    output position), the GGN block of W is approximated by the Kronecker product (K-FAC,
    Martens & Grosse 2015; KFC for convolutions, Grosse & Martens 2016)

        GGN_W ≈ A ⊗ G,   A = (1/N) Σₙ aₙ aₙᵀ,   G = Σₙ gₙ gₙᵀ,

    with aₙ the layer input (the contracted axes of x) and gₙ the cotangent of the layer
    output for example (or position) n, in the layout `transpose(W, perm).reshape(d_in,
    d_out)` (contracted axes of W first). The cotangents are backpropagated from
    `fisher="sampled"`: u = C z with C Cᵀ the per-example Hessian of `loss_fn` in the
    outputs and z ~ N(0, I) (one backward pass; E[A ⊗ G] is the K-FAC GGN, the true Fisher
    for an exponential-family NLL; C is the Cholesky factor of the Hessian shifted by
    √ε_mach times its largest diagonal entry, or its clipped eigendecomposition if that
    fails); `"exact"`: every column of C (k backward passes for k
    outputs per example; exact for a single linear layer with one output per example);
    `"empirical"`: the loss gradient itself (the empirical Fisher). `key` draws z and the
    signs (default `jax.random.key(0)`). A bias (a leaf broadcast and added) is its own
    block with A = [1] (not a column of the layer's A: the cross terms between a weight and
    its bias are dropped). Leaves used in any other way (grouped
    convolutions, `scan`s, products, ...) get a diagonal estimate Σⱼ (Jᵀuⱼ)², unbiased for
    the GGN diagonal with "sampled" and "exact" (whose columns get a random sign per
    example, so that the cross-example terms of the batch sum cancel on average; with
    "empirical" it is N times the squared mean gradient).

    Assumptions: every output leaf's leading axis is the example axis and the loss is a sum
    (or mean) of per-example terms, so ∇²L is block diagonal over examples; `loss_fn` is
    convex in the outputs where the GGN is meant (its Hessian is clipped to its PSD part).
    A leaf used in several places sums its statistics over them (A averaged over all
    positions, G summed). Cost: one forward and one backward pass with probes, k
    output-space Hessian-vector products (not for "empirical") and the products aᵀa, gᵀg.

    A leaf whose factor would be larger than `max_factor_size` on either side (a learned
    position embedding added to a (positions × width) activation is a "bias" of size
    positions·width) gets the diagonal estimate instead.

    Returns `KroneckerFactors(A, G, diagonal)`, pytrees like `params`; unused entries are
    (0,) arrays.

    Reference: J. Martens and R. Grosse, "Optimizing neural networks with Kronecker-factored
    approximate curvature", ICML 2015.

    ```python
    import jax, jax.numpy as jnp, jaxopt2
    X, y = jax.random.normal(jax.random.key(0), (32, 3)), jnp.zeros(32)
    model_fn = lambda p, b: b[0] @ p["w"] + p["b"]
    loss_fn = lambda out, b: 0.5 * jnp.mean((out[:, 0] - b[1]) ** 2)
    params = {"w": jnp.zeros((3, 1)), "b": jnp.zeros(1)}
    f = jaxopt2.curvature.kronecker_factors(model_fn, loss_fn, params, (X, y), fisher="exact")
    print(f.A["w"].shape, f.G["w"])  # (3, 3) and Σₙ 1/32 ≈ [[1.]]
    ```
    """
    if fisher not in FISHERS:
        raise ValueError(f"kronecker_factors: `fisher` must be one of {FISHERS}; got "
                         f"{fisher!r}.")
    if fisher != "empirical" and key is None:
        key = jax.random.key(0)
    leaves, treedef = jtu.tree_flatten(params)
    model = Model(model_fn, params, batch, max_factor_size)
    A, G, diagonal, _ = statistics(model, loss_fn, leaves, batch, fisher, key)
    empty = lambda x, leaf: jnp.zeros((0,), leaf.dtype) if x is None else x  # noqa: E731
    pack = lambda xs: jtu.tree_unflatten(  # noqa: E731
        treedef, [empty(x, leaf) for x, leaf in zip(xs, leaves, strict=True)])
    return KroneckerFactors(pack(A), pack(G), pack(diagonal))
