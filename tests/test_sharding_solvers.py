"""Solvers on data sharded over 8 host devices along the example axis, under mesh axes of type
Auto (XLA's partitioner decides) and Explicit (sharding in types): the same answer as on one
device, parameters replicated, and no all-gather of the data in the compiled program.

The checks run in one subprocess (the number of host devices is fixed when JAX starts, and the
rest of the suite must keep seeing one device), in float32, one compiled program per solver
and mode to keep compile time down.
"""

import textwrap

import pytest

from .multidevice import run_on_eight_devices

SCRIPT = textwrap.dedent(
    """
    import sys

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import AxisType

    import jaxopt2
    from jaxopt2 import curvature, distributed

    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    n, d = 512, 8
    X = rng.normal(size=(n, d)).astype(np.float32)
    w_true = rng.normal(size=d).astype(np.float32)
    labels = (rng.random(n) < 1 / (1 + np.exp(-X @ w_true))).astype(np.float32)
    targets = (np.tanh(0.5 * X @ w_true) + 0.05 * rng.normal(size=n)).astype(np.float32)

    def logistic(p, data, lam=1e-2):
        X, y, _ = data
        z = X @ p["w"] + p["b"]
        return jnp.mean(jax.nn.softplus(z) - y * z) + 0.5 * lam * p["w"] @ p["w"]

    def residual(w, data):
        X, _, t = data
        return jnp.tanh(X @ w) - t

    p0 = {"w": jnp.zeros(d), "b": jnp.zeros(())}
    newton_cg, lbfgs = jaxopt2.NewtonCG(), jaxopt2.LBFGS()

    def hypergradient(data):
        def loss_at(lam):
            sol = jaxopt2.minimize(lambda p, a: logistic(p, a, lam), p0, data, solver=newton_cg)
            return jnp.sum(sol.params["w"] ** 2)
        return jax.grad(loss_at)(0.1)

    def batch_of_ridges(data):
        # vmap over the hyperparameter, one of them NaN: it must fail alone.
        def solve(lam):
            sol = jaxopt2.minimize(lambda p, a: logistic(p, a, lam), p0, data,
                                   solver=newton_cg)
            return sol.params, sol.status._value
        return jax.vmap(solve)(jnp.array([0.1, jnp.nan, 1.0]))

    def hessian_free(data):
        model_fn = lambda w, b: b[0] @ w
        loss_fn = lambda z, b: jnp.mean(jax.nn.softplus(z) - b[1] * z)
        opt = jaxopt2.optimizers.hessian_free(model_fn=model_fn, loss_fn=loss_fn)
        w = jnp.zeros(d)
        state = opt.init(w)
        for _ in range(3):
            g = jax.grad(lambda w: loss_fn(model_fn(w, data), data))(w)
            updates, state = opt.update(g, state, w, batch=data)
            w = optax.apply_updates(w, updates)
        return w

    def status(sol):
        return sol.status._value

    CASES = {
        "NewtonCG": lambda a: (lambda s: (s.params, status(s)))(
            jaxopt2.minimize(logistic, p0, a, solver=newton_cg)),
        "LBFGS": lambda a: (lambda s: (s.params, status(s)))(
            jaxopt2.minimize(logistic, p0, a, solver=lbfgs)),
        "LevenbergMarquardt-cg": lambda a: (lambda s: (s.params, status(s)))(
            jaxopt2.least_squares(residual, jnp.zeros(d), a,
                                  solver=jaxopt2.LevenbergMarquardt(linear_solver="cg"))),
        "SketchedNewton": lambda a: (lambda s: (s.params, status(s)))(
            jaxopt2.minimize(logistic, p0, a, solver=jaxopt2.SketchedNewton(
                sketch_size=64, key=jax.random.key(3)))),
        "hypergradient": hypergradient,
        "vmap": batch_of_ridges,
        "hessian_free": hessian_free,
        "hvp": lambda a: curvature.hessian(logistic, p0, a).mv(
            {"w": jnp.arange(d, dtype=jnp.float32), "b": jnp.ones(())}),
    }
    SUCCESS = int(jaxopt2.RESULTS.successful._value)
    MODES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
    modes = [MODES[m] for m in sys.argv[1].split(",")]
    ALL_CASES, CASES = CASES, {name: CASES[name] for name in sys.argv[2].split(",")}

    # One device: the reference.
    single = {name: jax.jit(f)((X, labels, targets)) for name, f in CASES.items()}
    for name in ("NewtonCG", "LBFGS", "LevenbergMarquardt-cg", "SketchedNewton"):
        if name in CASES:
            assert int(single[name][1]) == SUCCESS, (name, single[name][1])
    if "vmap" in CASES:
        vmap_status = np.asarray(single["vmap"][1])
        assert vmap_status[0] == SUCCESS and vmap_status[2] == SUCCESS, vmap_status
        assert vmap_status[1] != SUCCESS, vmap_status

    # Placement helpers and their refusals.
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    for bad, what in [((X[:100], labels[:100]), "split evenly"),
                      ((X, labels[:256]), "leading sizes differ")]:
        try:
            distributed.shard_data(bad, mesh)
            raise AssertionError("accepted " + what)
        except ValueError as e:
            assert what in str(e), e
    try:
        distributed.shard_data(X, mesh, axis="model")
        raise AssertionError("accepted a missing axis")
    except ValueError as e:
        assert "not 'model'" in str(e), e
    try:
        distributed.check_placement((jnp.asarray(X),), mesh)
        raise AssertionError("accepted data on one device")
    except ValueError as e:
        assert "not split along axis 0" in str(e), e

    for kind in modes:
        mesh = jax.make_mesh((8,), ("data",), axis_types=(kind,))
        data = distributed.shard_data((X, labels, targets), mesh)
        report = distributed.check_placement(data, mesh)
        assert all(r == ((n,) + s[1:], n // 8, 8) for r, s in
                   zip(report.values(), [X.shape, labels.shape, targets.shape])), report
        if kind == AxisType.Explicit:
            # Without the mesh in context the front door says what to do.
            try:
                jax.jit(ALL_CASES["NewtonCG"])(data)
                raise AssertionError("explicit data accepted without a mesh")
            except ValueError as e:
                assert "jax.set_mesh" in str(e), e
        with jax.set_mesh(mesh):
            for name, f in CASES.items():
                if kind == AxisType.Explicit and name == "vmap":
                    # JAX batches a lax.cond with a batched predicate into a select whose
                    # predicate is not sharded like the data-sized residuals it selects
                    # (ShardingTypeError): vmapped solves need Auto axes.
                    continue
                fj = jax.jit(f)
                got = fj(data)
                want = single[name]
                for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                    g, w = np.asarray(g), np.asarray(w)
                    if g.dtype.kind in "iu":
                        np.testing.assert_array_equal(g, w, err_msg=f"{kind} {name}")
                    else:
                        scale = np.max(np.abs(w[np.isfinite(w)]), initial=1.0)
                        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5 * scale,
                                                   err_msg=f"{kind} {name}")
                # Results are replicated; the data is never gathered: only parameter-sized
                # all-reduces (and the few sampled rows of SketchedNewton) cross devices.
                for leaf in jax.tree_util.tree_leaves(got):
                    assert leaf.sharding.is_fully_replicated, (kind, name, leaf.sharding)
                ops = distributed.collectives(fj.lower(data).compile())
                assert "all-gather" not in ops, (kind, name, ops["all-gather"])
                assert "all-to-all" not in ops, (kind, name, ops["all-to-all"])
                assert "all-reduce" in ops, (kind, name, ops)
                big = [s for _, s in ops["all-reduce"] if int(np.prod(s)) >= n * d // 4]
                assert not big, (kind, name, big)
        print("OK", kind)
    print("SHARDED SOLVERS OK")
    """
)


def _run(modes: str, cases: str):
    run_on_eight_devices(SCRIPT, (modes, cases), "SHARDED SOLVERS OK")


def test_solvers_on_sharded_data_explicit_axes():
    """The harder mode (sharding in types) on the solvers whose paths needed fixes."""
    _run("explicit", "NewtonCG,LevenbergMarquardt-cg,SketchedNewton,hypergradient")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "explicit"])
def test_all_solvers_on_sharded_data_both_modes(mode):
    """With the explicit-axes test above, every case in both modes (one process per mode)."""
    cases = {"auto": "NewtonCG,LBFGS,LevenbergMarquardt-cg,SketchedNewton,hypergradient,vmap,"
                     "hessian_free,hvp",
             "explicit": "LBFGS,vmap,hessian_free,hvp"}  # the others run in the test above
    _run(mode, cases[mode])


# In-process checks on one device: mixed precision and the compiled program's memory.


def _logistic_data(n, d, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=d).astype(np.float32) / np.sqrt(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ w))).astype(np.float32)
    return X, y


def _logistic(w, data):
    import jax
    import jax.numpy as jnp

    X, y = data
    z = X @ w  # bfloat16 X promotes to float32 here: the products accumulate in float32
    return jnp.mean(jax.nn.softplus(z) - y * z) + 5e-3 * w @ w


def test_bfloat16_data_float32_accumulation():
    """The mixed-precision recipe: data stored in bfloat16, parameters (so the solver state,
    CG, its dot products and the stopping test) in float32. The solve is the float32 solve of
    the rounded data to float32 accuracy (a bfloat16 accumulation would be off by ~1e-2),
    and differs from the float32-data solve only by the data's rounding (measured 2.2e-4
    relative; the solve equals the float32 solve of the rounded data exactly)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxopt2

    X, y = _logistic_data(2048, 16)
    Xb = jnp.asarray(X, jnp.bfloat16)
    solve = jax.jit(lambda X: jaxopt2.minimize(_logistic, jnp.zeros(16), (X, y),
                                               solver=jaxopt2.NewtonCG(rtol=1e-5)))
    mixed, rounded, full = solve(Xb), solve(Xb.astype(jnp.float32)), solve(jnp.asarray(X))
    for sol in (mixed, rounded, full):
        assert sol.status == jaxopt2.RESULTS.successful
        assert sol.params.dtype == jnp.float32
    scale = np.max(np.abs(full.params))
    np.testing.assert_allclose(mixed.params, rounded.params, atol=1e-5 * scale)
    err = np.max(np.abs(mixed.params - full.params)) / scale
    assert 1e-5 < err < 1e-2, err  # the data's rounding, 2^-8 relative, and no more
    # One Hessian-vector product: float32 accuracy on the rounded data.
    v = jnp.linspace(-1.0, 1.0, 16)
    hvp = lambda X: jaxopt2.curvature.hessian(_logistic, full.params, (X, y)).mv(v)  # noqa: E731
    np.testing.assert_allclose(hvp(Xb), hvp(Xb.astype(jnp.float32)), rtol=2e-5, atol=1e-7)


def test_newton_cg_temporary_memory_is_parameter_sized():
    """NewtonCG's compiled solve keeps no data-sized temporary: quadrupling the number of
    features d (the data grows 4x) leaves the temporaries, a few n-vectors of per-example
    values and O(d) solver state, nearly unchanged, and well below the data's size."""
    import jax
    import jax.numpy as jnp

    import jaxopt2

    n, temps = 4096, {}
    for d in (16, 64):
        X, y = _logistic_data(n, d)
        solve = jax.jit(lambda X, y: jaxopt2.minimize(
            _logistic, jnp.zeros(X.shape[1]), (X, y), solver=jaxopt2.NewtonCG()).params)
        memory = solve.lower(X, y).compile().memory_analysis()
        if memory is None:
            pytest.skip("this backend reports no memory analysis")
        temps[d] = memory.temp_size_in_bytes
        assert temps[d] < X.nbytes / 4 + 64 * 1024, (d, temps[d], X.nbytes)
    assert temps[64] < 1.5 * temps[16], temps
