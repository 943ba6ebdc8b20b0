"""Data sharded over devices and processes, on JAX's own sharding machinery.

jaxopt2 has no communication code of its own. A dataset sharded along its example axis is
an ordinary `jax.Array` with a `NamedSharding`; the solvers see a loss that is a mean (or sum)
over examples, and `jax.jit` turns every reduction over the sharded axis (the loss, its
gradient, each Hessian- or Gauss-Newton-vector product) into a local reduction followed by an
all-reduce of a parameter-sized vector. The parameters and the solver state stay replicated
by default, or split over a mesh axis with `shard_params` when they outgrow one device.
For f(x) = (1/n) Σᵢ ℓ(x; aᵢ) split over k devices holding blocks Bⱼ of n/k examples,

    ∇²f(x) v = (1/n) Σⱼ Σ_{i ∈ Bⱼ} ∇²ℓ(x; aᵢ) v,

so one product costs one pass over each device's own rows and one all-reduce of size d, and
the data never moves.

This module only places data and checks where it went:

- `shard_data(data, mesh)`: put every array leaf of a dataset pytree on `mesh`, split along
  axis 0 over the mesh axis `axis` (scalars replicated);
- `local_data(local, mesh)`: the same from each process's own rows, with
  `jax.make_array_from_process_local_data` (several processes after
  `jax.distributed.initialize`: each loads only its shard);
- `shard_params(params, mesh)`: split the parameters FSDP-style over a mesh axis
  (`"model"` by default); the solvers' parameter-sized vectors and states follow;
- `check_placement(data, mesh)`: raise if a leaf is not split along axis 0 over `axis`;
- `collectives(compiled)`: the collective operations of a compiled program and their result
  shapes, to check that no all-gather of the data appears.

Meshes with `Auto` axes (XLA's partitioner decides) and with `Explicit` axes (sharding in the
types, `jax.make_mesh`'s default) both work with every front door.

```python
import jax, jax.numpy as jnp, jaxopt2
from jaxopt2 import distributed

mesh = jax.make_mesh((len(jax.devices()),), ("data",))
X = jax.random.normal(jax.random.key(0), (64, 3)); y = (X[:, 0] > 0).astype(X.dtype)
data = distributed.shard_data((X, y), mesh)
distributed.check_placement(data, mesh)

def loss(w, data):  # a mean over examples: its reductions become all-reduces
    X, y = data
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 1e-2 * w @ w

with jax.set_mesh(mesh):
    sol = jax.jit(lambda d: jaxopt2.minimize(loss, jnp.zeros(3), d,
                                             solver=jaxopt2.NewtonCG()))(data)
print(sol.status, sol.params)
```

Reference: the JAX documentation, "Distributed arrays and automatic parallelization" and
"Explicit sharding"; Y. Xu et al., "GSPMD: general and scalable parallelization for ML
computation graphs", arXiv:2105.04663 (2021).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Sharding in types (Explicit mesh axes) arrived in jax 0.5-0.6; on older versions every
# helper below for it is the plain operation.
AxisType = getattr(jax.sharding, "AxisType", None)
_get_abstract_mesh = getattr(jax.sharding, "get_abstract_mesh", None)

__all__ = ["check_placement", "collectives", "local_data", "shard_data", "shard_params"]


def _array_leaves(tree):
    return jtu.tree_leaves_with_path(tree)


def _check_mesh(mesh, axis: str, func: str) -> int:
    if not isinstance(mesh, Mesh):
        raise ValueError(f"{func}: `mesh` must be a jax.sharding.Mesh (e.g. "
                         f"jax.make_mesh((8,), ('data',))); got {type(mesh).__name__}.")
    if axis not in mesh.axis_names:
        raise ValueError(f"{func}: the mesh has axes {mesh.axis_names}, not {axis!r}; pass "
                         f"axis= one of them.")
    return int(mesh.shape[axis])


def _leading_size(tree, func: str) -> int | None:
    """The common length of axis 0 over the leaves with at least one dimension."""
    sizes = {}
    for path, leaf in _array_leaves(tree):
        if np.ndim(leaf) >= 1:
            sizes.setdefault(int(np.shape(leaf)[0]), jtu.keystr(path))
    if len(sizes) > 1:
        described = ", ".join(f"{where or 'data'}: {n}" for n, where in sorted(sizes.items()))
        raise ValueError(f"{func}: every array leaf must hold one row per example along axis "
                         f"0, but the leading sizes differ ({described}).")
    return next(iter(sizes), None)


def _row_spec(ndim: int, axis: str) -> P:
    return P(axis, *([None] * (ndim - 1))) if ndim >= 1 else P()


def shard_data(data, mesh: Mesh, axis: str = "data"):
    """`data` (a pytree of arrays, one row per example along axis 0) placed on `mesh`: each
    leaf with at least one dimension split along axis 0 over the mesh axis `axis` (device j of
    k holds rows j·n/k … (j+1)·n/k − 1), scalars and 0-d leaves replicated. Other mesh axes
    replicate. The number of examples n must be a multiple of the axis size k: padding would
    change a mean, so drop or add examples yourself (or weight them in the loss).

    ```python
    import jax, jax.numpy as jnp
    from jaxopt2 import distributed
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    X, y = jnp.ones((8, 3)), jnp.zeros(8)
    X, y = distributed.shard_data((X, y), mesh)
    ```
    """
    k = _check_mesh(mesh, axis, "shard_data")
    n = _leading_size(data, "shard_data")
    if n is not None and n % k:
        raise ValueError(f"shard_data: {n} examples cannot be split evenly over the {k} "
                         f"devices of mesh axis {axis!r}; use a multiple of {k} examples "
                         f"(e.g. the first {n - n % k}).")

    def place(leaf):
        ndim = np.ndim(leaf)
        return jax.device_put(leaf, NamedSharding(mesh, _row_spec(ndim, axis)))

    return jtu.tree_map(place, data)


def _param_spec(shape, k: int, axis: str) -> P:
    """Split the first dimension divisible by k (FSDP's rule), else replicate."""
    for i, size in enumerate(shape):
        if size >= k and size % k == 0:
            return P(*([None] * i), axis, *([None] * (len(shape) - i - 1)))
    return P()


def shard_params(params, mesh: Mesh, axis: str = "model"):
    """`params` (any pytree of arrays) placed on `mesh` FSDP-style: each leaf split along its
    first dimension whose size is a multiple of the mesh axis size k (device j holds the
    j-th of k slices), leaves with no such dimension (biases of odd size, scalars)
    replicated. Every parameter-sized value the matrix-free solvers and the optimizers make
    from the parameters (gradients, CG and Lanczos vectors, `hessian_free`'s direction,
    Adam-style moments) is then split the same way: no device holds a whole one.

    Under `Auto` axes, name the outputs' shardings (`jax.jit(..., out_shardings=...)`, e.g.
    `jax.tree.map(lambda x: x.sharding, params)` for `Solution.params`), else XLA may
    return them replicated; under `Explicit` axes the shardings are part of the types and
    follow by themselves. The model itself decides what the parameters' split costs: a
    linear model whose data is split along the same (feature) axis needs no gather at all;
    a layer that needs the whole weight gathers it, as FSDP does. See
    docs/guides/distributed.md, "Sharded parameters".

    ```python
    import jax, jax.numpy as jnp
    from jaxopt2 import distributed
    mesh = jax.make_mesh((len(jax.devices()),), ("model",))
    params = distributed.shard_params({"w": jnp.zeros(8 * len(jax.devices())),
                                       "b": jnp.zeros(())}, mesh)
    ```
    """
    k = _check_mesh(mesh, axis, "shard_params")

    def place(leaf):
        spec = _param_spec(np.shape(leaf), k, axis)
        return jax.device_put(leaf, NamedSharding(mesh, spec))

    return jtu.tree_map(place, params)


def local_data(local, mesh: Mesh, axis: str = "data"):
    """Global arrays sharded along axis 0 over `axis`, built from this process's own rows.

    With several processes (after `jax.distributed.initialize`), process p passes the
    examples it loaded itself, the same number in every process, in process order: the
    global array holds the processes' rows one after the other, and no process ever holds
    another's rows. With one process this is `shard_data`. It wraps
    `jax.make_array_from_process_local_data`; the global number of rows is the local one
    times the number of processes that hold devices of `mesh`.

    ```python
    import jax, jax.numpy as jnp
    from jaxopt2 import distributed
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    rows = 8 * jax.local_device_count()  # this process's share of the examples
    X = distributed.local_data(jnp.ones((rows, 3)), mesh)
    ```
    """
    k = _check_mesh(mesh, axis, "local_data")
    n_local = _leading_size(local, "local_data")
    processes = len({d.process_index for d in mesh.devices.flat})
    local_k = k // processes if k % processes == 0 else None
    if n_local is not None and local_k and n_local % local_k:
        raise ValueError(f"local_data: this process holds {n_local} rows for its {local_k} "
                         f"devices of axis {axis!r}; give it a multiple of {local_k}.")

    def place(leaf):
        leaf = np.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
        ndim = np.ndim(leaf)
        sharding = NamedSharding(mesh, _row_spec(ndim, axis))
        if ndim == 0:
            return jax.make_array_from_process_local_data(sharding, leaf, ())
        shape = (leaf.shape[0] * processes, *leaf.shape[1:])
        return jax.make_array_from_process_local_data(sharding, leaf, shape)

    return jtu.tree_map(place, local)


def check_placement(data, mesh: Mesh, axis: str = "data") -> dict[str, Any]:
    """Check that every array leaf of `data` with at least one dimension is a `jax.Array`
    split along axis 0 over the mesh axis `axis` (each of the k devices holds n/k rows, none
    holds all of them), and raise a ValueError naming the first leaf that is not. Returns
    {leaf path: (global shape, rows per device, number of devices)} for a log."""
    k = _check_mesh(mesh, axis, "check_placement")
    report = {}
    for path, leaf in _array_leaves(data):
        where = jtu.keystr(path) or "data"
        if np.ndim(leaf) == 0:
            continue
        if not isinstance(leaf, jax.Array):
            raise ValueError(f"check_placement: {where} is a {type(leaf).__name__}, not a "
                             "jax.Array on the mesh; place it with distributed.shard_data.")
        n = leaf.shape[0]
        sharding = leaf.sharding
        devices = sharding.device_set
        shard_rows = {s.data.shape[0] for s in leaf.addressable_shards}
        spec = getattr(sharding, "spec", None)
        first = spec[0] if spec is not None and len(spec) else None
        names = first if isinstance(first, tuple) else (first,)
        if axis not in names or shard_rows != {n // k} or len(devices) < k:
            raise ValueError(
                f"check_placement: {where} (shape {leaf.shape}) is not split along axis 0 "
                f"over mesh axis {axis!r} of size {k}: its sharding is {sharding}, with "
                f"{sorted(shard_rows)} rows per local shard. Place it with "
                "distributed.shard_data (or distributed.local_data in several processes).")
        report[where] = (tuple(leaf.shape), n // k, len(devices))
    return report


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                "collective-permute")
# `%name = f32[256,6]{1,0} all-gather(...)` or a tuple result `(f32[6], f32[])`.
_OP = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(_COLLECTIVES) + r")(?:-start)?\(")
_SHAPE = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")


def collectives(compiled) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """The collective operations of a compiled program: {op name: [(dtype, result shape),
    ...]} for all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute,
    read from the optimized HLO of `compiled` (a `jax.stages.Compiled`, e.g.
    `jax.jit(f).lower(*args).compile()`, or its `as_text()`). A solve over data sharded along
    the example axis should show all-reduces of parameter-sized values and no all-gather of
    a data-sized array.

    ```python
    import jax, jax.numpy as jnp
    from jaxopt2 import distributed
    compiled = jax.jit(lambda x: jnp.sum(x ** 2)).lower(jnp.ones(8)).compile()
    print(distributed.collectives(compiled))  # {} on one device
    ```
    """
    text = compiled if isinstance(compiled, str) else compiled.as_text()
    found: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for line in text.splitlines():
        match = _OP.search(line)
        if match is None or "-done" in line:
            continue
        for dtype, dims in _SHAPE.findall(match.group(1)):
            shape = tuple(int(s) for s in dims.split(",") if s)
            found.setdefault(match.group(2), []).append((dtype, shape))
    return found


# Helpers for the solvers: a few operations need their output sharding spelled out when the
# data's sharding is part of its type (mesh axes of type Explicit). Under Auto axes, or with
# no mesh, they are the plain operations.


def explicit_mesh() -> bool:
    """Whether the mesh in context (`jax.set_mesh`) has Explicit axes."""
    if AxisType is None or _get_abstract_mesh is None:
        return False
    mesh = _get_abstract_mesh()
    return not mesh.empty and AxisType.Explicit in tuple(mesh.axis_types)


def mesh_in_context() -> bool:
    """Whether a mesh is set in context (`jax.set_mesh`); False on JAX versions without one."""
    return _get_abstract_mesh is not None and not _get_abstract_mesh().empty


def explicit_spec(x) -> P | None:
    """The PartitionSpec in the type of `x` when some of its dimensions are sharded over
    Explicit mesh axes (sharding in types), else None."""
    if AxisType is None or not hasattr(jax, "typeof"):
        return None
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    spec = tuple(sharding.spec) + (None,) * (jnp.ndim(x) - len(sharding.spec))
    return P(*spec) if any(s is not None for s in spec) else None


def stacked_spec(x, count: int = 1) -> P | None:
    """The sharding of a stack of arrays shaped like `x` along `count` new leading axes
    (e.g. random probes for a vmapped product), or None where `x`'s sharding is not in its
    type."""
    spec = explicit_spec(x)
    return None if spec is None else P(*([None] * count), *spec)


def take_rows(a, indices):
    """`a[indices]` along axis 0. Where `a` is sharded over Explicit axes along axis 0, the
    selected rows come back replicated (a few rows, not the data: XLA gathers them by a
    masked local take and an all-reduce of the m selected rows), other axes as they were."""
    spec = explicit_spec(a)
    if spec is None or spec[0] is None:
        return a[indices]
    return a.at[indices].get(out_sharding=P(*([None] * jnp.ndim(indices)), *spec[1:]))


def on_mesh(x):
    """`x` replicated on the mesh in context when that mesh has Explicit axes and `x`'s type
    names no mesh (e.g. initial parameters created before `jax.set_mesh`), else `x`. Values
    computed inside the mesh carry it in their types, and lineax compares the structures of
    an operator's input and output, shardings included."""
    if not explicit_mesh():
        return x
    own = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    if own is not None and not own.empty:
        return x
    return jax.sharding.reshard(x, P(*([None] * jnp.ndim(x))))


def like(tree, ref):
    """`tree` with each leaf given the sharding in the type of the matching leaf of `ref`
    (arrays or `jax.ShapeDtypeStruct`s) where the mesh in context has Explicit axes, else
    `tree` unchanged. A product such as
    H v over sharded data can come out typed differently from v (a reduction's result names
    the mesh or not), and lineax requires a symmetric operator's output structure, shardings
    included, to equal its input's."""
    if not explicit_mesh():
        return tree

    def cast(x, r):
        want = r.sharding if isinstance(r, jax.ShapeDtypeStruct) else getattr(
            jax.typeof(r), "sharding", None)
        have = getattr(jax.typeof(x), "sharding", None)
        mesh = getattr(want, "mesh", None)  # a NamedSharding's; None for one device
        if mesh is None or mesh.empty or want == have:
            return x
        return jax.sharding.reshard(x, want.spec)

    return jtu.tree_map(cast, tree, ref)


def sharded_like(x, count: int = 1) -> dict:
    """`{"out_sharding": stacked_spec(x, count)}` where `x` is sharded over Explicit axes, else
    `{}` (JAX versions before sharding in types have no `out_sharding` argument)."""
    spec = stacked_spec(x, count)
    return {} if spec is None else {"out_sharding": spec}


def replicated_matmul(a, b):
    """`a @ b`, its result replicated where a contraction over a dimension sharded over
    Explicit mesh axes needs an output sharding (a Gram matrix aᵀb of row-sharded sketches:
    local products, then an all-reduce of the small result); the plain product otherwise."""
    if explicit_spec(a) is None and explicit_spec(b) is None:
        return a @ b
    ndim = max(jnp.ndim(a) - 1, 0) + max(jnp.ndim(b) - 1, 0)
    return jnp.matmul(a, b, out_sharding=P(*([None] * ndim)))


def rows_like(x, ndim: int = 2) -> dict:
    """`{"out_sharding": P(rows, None, ...)}` for an `ndim`-dimensional array whose axis 0 is
    as long as the vector `x` and should be split as `x` is, where `x` is sharded over
    Explicit mesh axes (e.g. a random n × r sketch for a sharded parameter vector: drawn
    that way, each device generates only its own rows); `{}` otherwise."""
    spec = explicit_spec(x)
    if spec is None:
        return {}
    return {"out_sharding": P(spec[0], *([None] * (ndim - 1)))}
