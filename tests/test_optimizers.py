"""jaxopt2.optimizers: the four optax transformations against dense linear algebra (float64,
enabled for the whole suite in conftest.py), their damping / safeguard rules, and the optax
contract (jit without recompilation, stable state, pytree and float32 params, chaining,
errors, non-finite gradients)."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jaxopt2
from jaxopt2 import optimizers as O

pytestmark = pytest.mark.float64  # written for float64 tolerances

NAMES = ["hessian_free", "regularized_newton", "nystrom_sgd", "diag_newton"]

# --------------------------------------------------------------------------- problems


def mlp_params(seed=0, dtype=jnp.float64):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"W1": 0.8 * jax.random.normal(k1, (3, 4), dtype), "b1": jnp.full((4,), 0.1, dtype),
            "W2": 0.8 * jax.random.normal(k2, (4, 3), dtype), "b2": jnp.zeros((3,), dtype)}


def mlp_batch(seed=1, n=8, dtype=jnp.float64):
    X = jax.random.normal(jax.random.PRNGKey(seed), (n, 3), dtype)
    return X, jnp.arange(n) % 3


def mlp_model(p, batch):
    return jnp.tanh(batch[0] @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def xent(z, batch):
    picked = jnp.take_along_axis(z, batch[1][:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(z, axis=1) - picked)


def mlp_loss(p, batch):
    return xent(mlp_model(p, batch), batch)


def logreg_data(seed=0, n=64, d=12, scale=3.0):
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    X = scale * jax.random.normal(kx, (n, d))
    y = (X @ jax.random.normal(kw, (d,)) > 0).astype(X.dtype)
    return X, y


def logreg(p, batch):
    X, y = batch
    z = X @ p["w"] + p["b"]
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 1e-3 * jnp.sum(p["w"] ** 2)


def logreg_params(d=12):
    return {"w": jnp.zeros(d), "b": jnp.zeros(())}


# --------------------------------------------------------------------------- dense references


def flat(tree):
    return ravel_pytree(tree)[0]


@functools.partial(jax.jit, static_argnums=0)
def dense_hessian(loss, params, batch):
    x, unravel = ravel_pytree(params)
    return jax.hessian(lambda v: loss(unravel(v), batch))(x)


@jax.jit
def dense_ggn(params, batch):
    x, unravel = ravel_pytree(params)
    outputs = mlp_model(params, batch)
    J = jax.jacobian(lambda v: mlp_model(unravel(v), batch).ravel())(x)
    HL = jax.hessian(lambda o: xent(o.reshape(outputs.shape), batch))(outputs.ravel())
    return J.T @ HL @ J


def solve_damped(C, g, lam):
    return -jnp.linalg.solve(C + lam * jnp.eye(C.shape[0]), g)


def assert_close(a, b, **kw):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **kw)


@functools.partial(jax.jit, static_argnums=0)
def grads_of(loss, params, batch):
    return jax.grad(loss)(params, batch)


def jitted(opt, **extra):
    """`opt.update` compiled once, with the extra arguments (closures, data) closed over;
    eager calls would compile every loop and branch separately, which is far slower."""
    return jax.jit(lambda grads, state, params: opt.update(grads, state, params, **extra))


# --------------------------------------------------------------------------- hessian_free


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_hessian_free_equals_dense_damped_newton(curvature):
    """First step (cold start) and second step (warm start from the decayed first solution)
    equal lrₖ·(−(C + λI)⁻¹g) with the dense GGN / Hessian: a warm start changes the CG path,
    not the solution. The learning rate is a schedule (1, then 0.5) indexed by the count."""
    params, batch = mlp_params(), mlp_batch()
    lam = 3.0  # makes H + λI positive definite for the Hessian variant (checked below)
    schedule = optax.linear_schedule(1.0, 0.5, transition_steps=1)
    opt = O.hessian_free(schedule, model_fn=mlp_model, loss_fn=xent, curvature=curvature,
                         damping=lam, adapt_damping=False, cg_rtol=1e-12, cg_max_steps=200)
    dense = (lambda p: dense_ggn(p, batch)) if curvature == "ggn" else (
        lambda p: dense_hessian(mlp_loss, p, batch))
    state, update = opt.init(params), jitted(opt, batch=batch)
    for lr in (1.0, 0.5):
        C, g = dense(params), flat(grads_of(mlp_loss, params, batch))
        assert jnp.linalg.eigvalsh(C + lam * jnp.eye(C.shape[0]))[0] > 0
        updates, state = update(grads_of(mlp_loss, params, batch), state, params)
        assert_close(flat(updates), lr * solve_damped(C, g, lam), rtol=1e-8, atol=1e-10)
        assert_close(flat(state.direction), solve_damped(C, g, lam), rtol=1e-8, atol=1e-10)
        params = optax.apply_updates(params, updates)
    assert float(state.damping) == lam


def test_hessian_free_damping_follows_reduction_ratio():
    """λ ← 1.5λ if ρ < 1/4, (2/3)λ if ρ > 3/4, with ρ recomputed from dense quantities."""
    params, batch = mlp_params(seed=3), mlp_batch()
    lam = 0.05
    opt = O.hessian_free(model_fn=mlp_model, loss_fn=xent, damping=lam, cg_rtol=1e-12,
                         cg_max_steps=200)
    state, update = opt.init(params), jitted(opt, batch=batch)
    seen = set()
    for _ in range(6):
        G, g = dense_ggn(params, batch), flat(grads_of(mlp_loss, params, batch))
        p = solve_damped(G, g, float(state.damping))
        _, unravel = ravel_pytree(params)
        f0, f1 = mlp_loss(params, batch), mlp_loss(optax.apply_updates(params, unravel(p)),
                                                   batch)
        rho = (f1 - f0) / (g @ p + 0.5 * p @ G @ p)
        lam = float(state.damping)
        updates, state = update(grads_of(mlp_loss, params, batch), state, params)
        expected = lam * (1.5 if (rho < 0.25 or f1 > f0) else 2 / 3 if rho > 0.75 else 1.0)
        assert_close(state.damping, expected, rtol=1e-10)
        if f1 <= f0:
            assert_close(state.rho, rho, rtol=1e-6)
            assert_close(flat(updates), p, rtol=1e-7, atol=1e-10)
        seen.add("grow" if expected > lam else "shrink" if expected < lam else "keep")
        params = optax.apply_updates(params, updates)
    assert "shrink" in seen  # the test exercised the rule, not only the initial value


def overshooting(x):
    # Newton from x = 3 with small damping jumps to about −27, where f is far higher; past
    # x < −5 the loss is NaN (a model that breaks down away from the data).
    return jnp.where(x[0] < -5.0, jnp.nan, jnp.sqrt(1.0 + x[0] ** 2))


@pytest.mark.parametrize("name", ["hessian_free", "regularized_newton", "nystrom_sgd"])
@pytest.mark.parametrize("loss", ["rises", "nan"])
def test_rejected_step_is_zero_and_increases_regularization(name, loss):
    value_fn = overshooting if loss == "nan" else (lambda x: jnp.sqrt(1.0 + x[0] ** 2))
    opt = {"hessian_free": lambda: O.hessian_free(damping=1e-3),
           "regularized_newton": lambda: O.regularized_newton(lipschitz=1e-4),
           "nystrom_sgd": lambda: O.nystrom_sgd(learning_rate=1.0, rho=1e-3)}[name]()
    x = jnp.array([3.0])
    state = opt.init(x)
    updates, new = jitted(opt, value_fn=value_fn)(jax.grad(value_fn)(x), state, x)
    assert float(updates[0]) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jtu.tree_leaves(new))
    assert int(new.count) == 1
    if name == "hessian_free":
        assert_close(new.damping, 1.5e-3) and float(new.rho) == 0.0
    elif name == "regularized_newton":
        assert_close(new.lipschitz, 2e-4)
    else:
        assert bool(new.stale) and float(new.scale) == 0.5


# --------------------------------------------------------------------------- regularized_newton


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_regularized_newton_equals_dense(curvature):
    """update = −(C + λI)⁻¹g with λ = √(H‖g‖) (H fixed: adaptive=False)."""
    if curvature == "ggn":
        params, batch, loss = mlp_params(), mlp_batch(), mlp_loss
        C = dense_ggn(params, batch)
        opt = O.regularized_newton(model_fn=mlp_model, loss_fn=xent, lipschitz=2.0,
                                   adaptive=False, cg_rtol=1e-12, cg_max_steps=200)
        kw = {"batch": batch}
    else:
        params, batch, loss = logreg_params(), logreg_data(), logreg
        C = dense_hessian(logreg, params, batch)
        opt = O.regularized_newton(lipschitz=2.0, adaptive=False, cg_rtol=1e-12,
                                   cg_max_steps=200)
        kw = {"value_fn": lambda p: logreg(p, batch)}
    g = flat(grads_of(loss, params, batch))
    lam = jnp.sqrt(2.0 * jnp.linalg.norm(g))
    updates, state = jitted(opt, **kw)(grads_of(loss, params, batch), opt.init(params), params)
    assert_close(state.damping, lam, rtol=1e-12)
    assert_close(flat(updates), solve_damped(C, g, lam), rtol=1e-8, atol=1e-12)


def test_regularized_newton_adapts_lipschitz_estimate():
    """H halves after a very successful step (ρ > 3/4) and the step equals the dense one."""
    params, batch = logreg_params(), logreg_data()
    opt = O.regularized_newton(lipschitz=1.0, cg_rtol=1e-12, cg_max_steps=100)
    state = opt.init(params)
    g = flat(grads_of(logreg, params, batch))
    lam = jnp.sqrt(jnp.linalg.norm(g))
    p = solve_damped(dense_hessian(logreg, params, batch), g, lam)
    update = jitted(opt, value_fn=lambda q: logreg(q, batch), value=logreg(params, batch))
    updates, state = update(grads_of(logreg, params, batch), state, params)
    assert_close(flat(updates), p, rtol=1e-8, atol=1e-12)
    assert float(state.rho) > 0.75 and float(state.lipschitz) == 0.5


# --------------------------------------------------------------------------- nystrom_sgd


def test_nystrom_sgd_full_rank_equals_dense():
    """With rank = n the Nyström approximation is exact: update = −η(H + ρI)⁻¹g with the
    defaults ρ = max(λ_n, 10⁻³λ₁) and η = 1/λ_max(P^{-1/2} H P^{-1/2}), P = H + ρI."""
    X, y = logreg_data(d=5, scale=1.0)
    batch = (X * jnp.array([0.3, 1.0, 2.0, 4.0, 8.0]), y)  # a spread spectrum
    params = logreg_params(d=5)
    value_fn = lambda p: logreg(p, batch)
    H, g = dense_hessian(logreg, params, batch), flat(grads_of(logreg, params, batch))
    grads = grads_of(logreg, params, batch)
    opt = O.nystrom_sgd(rank=50)  # capped at n = 6
    updates, state = jitted(opt, value_fn=value_fn)(grads, opt.init(params), params)
    evals = jnp.linalg.eigvalsh(H)
    rho = max(evals[0], 1e-3 * evals[-1])
    assert_close(state.eigenvalues, evals[::-1], rtol=1e-8)
    assert_close(state.rho, rho, rtol=1e-8)
    l_p = jnp.max(evals / (evals + rho))  # P = H + ρI commutes with H
    # Power iteration approaches λ_max from below, so η = 1/L_P from above.
    assert 1.0 / l_p * (1 - 1e-12) <= float(state.step_size) <= 1.02 / l_p
    assert_close(flat(updates), state.step_size * solve_damped(H, g, rho), rtol=1e-8)


def test_nystrom_sgd_low_rank_preconditioner_and_refresh_schedule():
    """rank < n, given η and ρ: the step is −η(UΛUᵀ + ρI)⁻¹g with the state's U, Λ; the
    sketch (and key) change only on refresh steps (count % update_freq == 0)."""
    params, batch = mlp_params(), mlp_batch()
    opt = O.nystrom_sgd(learning_rate=0.5, rho=0.2, rank=3, update_freq=2, model_fn=mlp_model,
                        loss_fn=xent)
    state, update = opt.init(params), jitted(opt, batch=batch)
    history = []
    for _ in range(3):
        grads = grads_of(mlp_loss, params, batch)
        updates, state = update(grads, state, params)
        U, lam = state.U, state.eigenvalues
        assert float(state.rho) == 0.2
        P = U @ jnp.diag(lam) @ U.T + 0.2 * jnp.eye(U.shape[0])
        assert_close(flat(updates), -0.5 * jnp.linalg.solve(P, flat(grads)), rtol=1e-8,
                     atol=1e-12)
        assert_close(U.T @ U, jnp.eye(3), atol=1e-10)
        assert bool(state.stale) is False and float(state.scale) == 1.0  # steps accepted
        history.append((np.asarray(U), np.asarray(state.key)))
        params = optax.apply_updates(params, updates)
    assert np.array_equal(history[0][0], history[1][0])  # step 1: no refresh
    assert np.array_equal(history[0][1], history[1][1])
    assert not np.allclose(history[1][0], history[2][0])  # step 2: refreshed
    assert not np.array_equal(history[1][1], history[2][1])


# --------------------------------------------------------------------------- diag_newton


def test_diag_newton_recovers_exact_diagonal_of_diagonal_quadratic():
    """Rademacher probes are exact for a diagonal Hessian: ĥ = a after every probe round, and
    the step is −lr·clip(m̂ / (γa), clip), with the Adam-style momentum m̂."""
    a = jnp.array([0.5, 2.0, 10.0, 1e-3])
    b = jnp.array([1.0, -1.0, 3.0, 2.0])
    value_fn = lambda x: 0.5 * jnp.sum(a * x**2) - b @ x
    b1, b2, lr, gamma, clip = 0.9, 0.99, 0.1, 0.5, 1.0
    opt = O.diag_newton(learning_rate=lr, b1=b1, b2=b2, gamma=gamma, clip=clip, update_freq=3)
    x = jnp.zeros(4)
    state, update = opt.init(x), jitted(opt, value_fn=value_fn)
    m = jnp.zeros(4)
    for t in range(1, 8):
        g = jax.grad(value_fn)(x)
        updates, state = update(g, state, x)
        rounds = (t - 1) // 3 + 1
        assert_close(state[0].curvature / (1 - b2**rounds), a, rtol=1e-12)
        m = b1 * m + (1 - b1) * g
        expected = -lr * jnp.clip(m / (1 - b1**t) / (gamma * a), -clip, clip)
        assert_close(updates, expected, rtol=1e-12)
        x = optax.apply_updates(x, updates)
    assert bool(jnp.any(jnp.abs(updates) == lr * clip))  # the flat coordinate is clipped
    assert bool(jnp.any(jnp.abs(updates) < lr * clip))


def test_diag_newton_uses_gauss_newton_diagonal():
    """Least squares with orthogonal features: the GGN XᵀX/n is diagonal, so the estimate
    from model_fn/loss_fn is exact (and differs from a wrong curvature by construction)."""
    Q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (16, 3)))
    X = Q * jnp.array([1.0, 4.0, 0.5])
    batch = (X, jnp.ones(16))
    model_fn = lambda w, bt: bt[0] @ w
    loss_fn = lambda out, bt: 0.5 * jnp.mean((out - bt[1]) ** 2)
    opt = O.diag_newton(model_fn=model_fn, loss_fn=loss_fn, num_probes=2)
    w = jnp.zeros(3)
    g = jax.grad(lambda w: loss_fn(model_fn(w, batch), batch))(w)
    _, state = jitted(opt, batch=batch)(g, opt.init(w), w)
    assert_close(state[0].curvature / (1 - 0.99), jnp.diag(X.T @ X) / 16, rtol=1e-12)


# --------------------------------------------------------------------------- contract

FACTORIES = {
    "hessian_free": lambda **kw: O.hessian_free(cg_max_steps=5, **kw),
    "regularized_newton": lambda **kw: O.regularized_newton(cg_max_steps=5, **kw),
    "nystrom_sgd": lambda **kw: O.nystrom_sgd(rank=4, update_freq=2, **kw),
    "diag_newton": lambda **kw: O.diag_newton(update_freq=2, **kw),
}


def eqx_problem():
    """A float32 equinox MLP, filtered to its arrays, with float32 data."""
    model = eqx.nn.MLP(3, 3, width_size=4, depth=1, key=jax.random.PRNGKey(2),
                       dtype=jnp.float32)
    params, static = eqx.partition(model, eqx.is_array)

    def model_fn(p, batch):
        return jax.vmap(eqx.combine(p, static))(batch[0])

    def batches(seed):
        X, labels = mlp_batch(seed, dtype=jnp.float32)
        return X, labels

    return params, model_fn, batches


def dict_problem():
    return mlp_params(), mlp_model, lambda seed: mlp_batch(seed)


def inner_state(state, chained):
    state = state[1] if chained else state
    # diag_newton is optax.chain(scale_by_diag_newton, scale_by_learning_rate): a pair
    return state if hasattr(state, "_fields") else state[0]


def signature(tree):
    return jtu.tree_structure(tree), [(x.shape, x.dtype, getattr(x, "weak_type", False))
                                      for x in jtu.tree_leaves(tree)]


@functools.cache
def compiled_step(name, variant):
    """One jitted training step per (optimizer, variant), shared by the contract tests; the
    list counts how often it was traced."""
    params, model_fn, batches = eqx_problem() if variant == "eqx32" else dict_problem()
    opt = FACTORIES[name](model_fn=model_fn, loss_fn=xent)
    chained = variant == "dict-chain"
    if chained:
        opt = optax.chain(optax.clip_by_global_norm(1.0), opt)
    traces = []

    @jax.jit
    def step(params, state, grads, batch):
        traces.append(None)
        value_fn = lambda p: xent(model_fn(p, batch), batch)
        updates, state = opt.update(grads, state, params, batch=batch, value_fn=value_fn,
                                    value=value_fn(params), grad=grads, unrelated=1.0)
        return optax.apply_updates(params, updates), updates, state

    grad_fn = jax.jit(jax.grad(lambda p, b: xent(model_fn(p, b), b)))
    return opt, params, batches, step, grad_fn, traces, chained


@pytest.mark.parametrize("variant", ["dict-chain", "eqx32"])
@pytest.mark.parametrize("name", NAMES)
def test_jit_traced_once_with_stable_state(name, variant):
    opt, params, batches, step, grad_fn, traces, chained = compiled_step(name, variant)
    before = len(traces)
    state = opt.init(params)
    sig = signature(state)
    for k in range(5):  # both branches of the refresh / probe conditions run
        batch = batches(10 + k)
        params, updates, state = step(params, state, grad_fn(params, batch), batch)
        assert signature(state) == sig
        for u, p in zip(jtu.tree_leaves(updates), jtu.tree_leaves(params), strict=True):
            assert u.dtype == p.dtype and bool(jnp.all(jnp.isfinite(u)))
    assert len(traces) - before <= 1
    assert int(inner_state(state, chained).count) == 5
    if variant == "eqx32":
        assert all(leaf.dtype in (jnp.float32, jnp.int32, jnp.uint32, jnp.bool_)
                   for leaf in jtu.tree_leaves(state))


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_gradient_skips_the_step(name):
    opt, params, batches, step, grad_fn, traces, chained = compiled_step(name, "dict-chain")
    before = len(traces)
    state = opt.init(params)
    batch = batches(0)
    params, _, state = step(params, state, grad_fn(params, batch), batch)  # a real step first
    bad = jtu.tree_map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grad_fn(params, batch))
    new_params, updates, new_state = step(params, state, bad, batch)
    assert all(bool(jnp.all(u == 0)) for u in jtu.tree_leaves(updates))
    jtu.tree_map(lambda a, b: np.testing.assert_array_equal(a, b), new_state, state)
    jtu.tree_map(lambda a, b: np.testing.assert_array_equal(a, b), new_params, params)
    assert len(traces) - before <= 1


@pytest.mark.parametrize("name", NAMES)
def test_missing_arguments_raise_clear_errors(name):
    factory = FACTORIES[name]
    params, batch = mlp_params(), mlp_batch()
    grads = jtu.tree_map(jnp.zeros_like, params)

    opt = factory()  # no model_fn: Hessian products of value_fn
    with pytest.raises(ValueError, match="value_fn=lambda p"):
        opt.update(grads, opt.init(params), params)
    with pytest.raises(ValueError, match="current parameters"):
        opt.update(grads, opt.init(params), None, value_fn=lambda p: mlp_loss(p, batch))

    opt = factory(model_fn=mlp_model, loss_fn=xent)  # Gauss-Newton: needs the minibatch
    with pytest.raises(ValueError, match="batch=batch"):
        opt.update(grads, opt.init(params), params, value_fn=lambda p: mlp_loss(p, batch))

    with pytest.raises(ValueError, match="curvature='ggn' needs"):
        factory(curvature="ggn")
    with pytest.raises(ValueError, match="both `model_fn"):
        factory(model_fn=mlp_model)
    with pytest.raises(ValueError, match="`curvature` must be"):
        factory(curvature="fisher")


@pytest.mark.parametrize("factory, kwargs, match", [
    (O.hessian_free, {"damping": 0.0}, "damping"),
    (O.hessian_free, {"cg_max_steps": 0}, "cg_max_steps"),
    (O.hessian_free, {"cg_rtol": 1.0}, "cg_rtol"),
    (O.hessian_free, {"warm_start_decay": 1.5}, "warm_start_decay"),
    (O.hessian_free, {"learning_rate": -1.0}, "learning_rate"),
    (O.regularized_newton, {"lipschitz": 0.0}, "lipschitz"),
    (O.regularized_newton, {"cg_max_steps": 2.5}, "cg_max_steps"),
    (O.nystrom_sgd, {"rank": 0}, "rank"),
    (O.nystrom_sgd, {"rho": -1.0}, "rho"),
    (O.nystrom_sgd, {"update_freq": 0}, "update_freq"),
    (O.nystrom_sgd, {"learning_rate": float("nan")}, "learning_rate"),
    (O.diag_newton, {"b1": 1.0}, "b1"),
    (O.diag_newton, {"b2": -0.1}, "b2"),
    (O.diag_newton, {"num_probes": 0}, "num_probes"),
    (O.diag_newton, {"clip": 0.0}, "clip"),
    (O.diag_newton, {"gamma": 0.0}, "gamma"),
    (O.diag_newton, {"eps": -1.0}, "eps"),
])
def test_hyperparameters_are_validated(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_decrease_a_convex_loss(name):
    """Logistic regression, full batch, 20 steps with default settings (Hessian curvature
    from value_fn): the loss falls below half its initial value ln 2."""
    batch = logreg_data(seed=4)
    opt = getattr(jaxopt2.optimizers, name)()
    value_fn = lambda p: logreg(p, batch)

    @jax.jit
    def run(params):
        def body(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(value_fn)(params), state, params,
                                        value_fn=value_fn)
            return (optax.apply_updates(params, updates), state), value_fn(params)

        (params, _), values = jax.lax.scan(body, (params, opt.init(params)), None, length=20)
        return values, value_fn(params)

    values, final = run(logreg_params())
    assert float(final) < 0.5 * float(values[0])
    assert float(final) < float(values[10])  # still making progress, not a lucky first step


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_an_ensemble_equals_a_loop(name):
    """Training several models at once with `jax.vmap` (an ensemble over data sets) gives each
    model the result it gets alone, and a poisoned data set (NaN) leaves the others intact."""
    opt = getattr(jaxopt2.optimizers, name)()

    def train(params, batch):
        value_fn = lambda p: logreg(p, batch)

        def body(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(value_fn)(params), state, params,
                                        value_fn=value_fn)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=5)
        return params

    batches = [logreg_data(seed=s, n=32) for s in range(3)]
    batches[1] = (batches[1][0].at[0, 0].set(jnp.nan), batches[1][1])
    stacked = jtu.tree_map(lambda *xs: jnp.stack(xs), *batches)
    params0 = jtu.tree_map(lambda x: jnp.stack([x] * 3), logreg_params())
    ensemble = jax.jit(jax.vmap(train))(params0, stacked)
    single = jax.jit(train)
    for i in (0, 2):
        alone = single(logreg_params(), batches[i])
        member = jtu.tree_map(lambda x, i=i: x[i], ensemble)
        assert_close(flat(member), flat(alone), rtol=1e-9, atol=1e-12)
        assert float(logreg(alone, batches[i])) < float(np.log(2.0))


# ------------------------------------------------------- optax.inject_hyperparams, PRNG keys

# learning rates, a hyperparameter changed in the state, and its new value
INJECT = {
    "hessian_free": ({"cg_max_steps": 3}, "cg_max_steps", 1),
    "regularized_newton": ({}, "cg_rtol", 0.9),
    "nystrom_sgd": ({"rank": 3, "update_freq": 2, "rho": 0.1}, "rho", 0.3),
    "diag_newton": ({"update_freq": 2}, "num_probes", 3),
}


def _run(opt, params, batches, state=None, steps=3):
    value_fn = lambda b: (lambda p: logreg(p, b))
    update = jax.jit(lambda g, s, p, b: opt.update(g, s, p, value_fn=value_fn(b)))
    state = opt.init(params) if state is None else state
    out = []
    for b in batches[:steps]:
        updates, state = update(jax.grad(logreg)(params, b), state, params, b)
        params = optax.apply_updates(params, updates)
        out.append(flat(updates))
    return params, state, out


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_schedule_and_changed_value(name):
    """`optax.inject_hyperparams(X)(learning_rate=schedule)` takes the same steps as
    `X(learning_rate=schedule)`, and a hyperparameter changed in `state.hyperparams` gives the
    steps of the plain optimizer built with the new value (float32 throughout)."""
    factory = getattr(jaxopt2.optimizers, name)
    kwargs, changed, value = INJECT[name]
    params = jtu.tree_map(lambda x: x.astype(jnp.float32), logreg_params())
    batches = [jtu.tree_map(lambda x: x.astype(jnp.float32), logreg_data(seed=s, n=32))
               for s in range(6)]
    schedule = optax.linear_schedule(0.8, 0.2, 3)
    injected = optax.inject_hyperparams(factory)(learning_rate=schedule, **kwargs)
    plain = factory(learning_rate=schedule, **kwargs)
    p_inj, s_inj, u_inj = _run(injected, params, batches)
    p_ref, s_ref, u_ref = _run(plain, params, batches)
    for a, b in zip(u_inj, u_ref, strict=True):
        assert a.dtype == jnp.float32
        assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert float(jnp.max(jnp.abs(u_inj[0] - u_inj[-1]))) > 0  # the schedule was applied

    # change a hyperparameter (a constant learning rate now) and continue from both states
    const = optax.inject_hyperparams(factory)(learning_rate=0.5, **kwargs)
    state = const.init(params)._replace(inner_state=s_inj.inner_state)
    state.hyperparams[changed] = jnp.asarray(value, state.hyperparams[changed].dtype)
    reference = factory(learning_rate=0.5, **{**kwargs, changed: value})
    _, _, u_new = _run(const, p_inj, batches[3:], state=state)
    _, _, u_want = _run(reference, p_ref, batches[3:], state=s_ref)
    _, _, u_old = _run(factory(learning_rate=0.5, **kwargs), p_ref, batches[3:], state=s_ref)
    for a, b in zip(u_new, u_want, strict=True):
        # float32; a traced num_probes loops over the probes the plain one vmaps (same probes,
        # products rounded differently), and m/(γh) amplifies that on a flat coordinate
        assert_close(a, b, rtol=1e-3, atol=1e-6)
    # ...and the change mattered
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(u_new, u_old, strict=True)) > 0


@pytest.mark.slow  # seconds of compiling: `make test-slow` (CI) runs it
@pytest.mark.parametrize("name", ["nystrom_sgd", "diag_newton"])
def test_vmap_over_keys_gives_independent_streams(name):
    """Built inside `jax.vmap` from split keys, each ensemble member draws its own sketches or
    probes (three keys, three different curvature estimates); equal keys give equal results;
    `key=jax.random.key(s)`, a legacy `PRNGKey(s)` and `seed=s` are the same stream."""
    factory = getattr(jaxopt2.optimizers, name)
    kwargs = {"rank": 2} if name == "nystrom_sgd" else {}
    params = jtu.tree_map(lambda x: x.astype(jnp.float32), logreg_params())
    batch = jtu.tree_map(lambda x: x.astype(jnp.float32), logreg_data(seed=1, n=32))
    value_fn = lambda p: logreg(p, batch)

    def curvature(key=None, seed=0):
        opt = factory(key=key, seed=seed, **kwargs)
        _, state = opt.update(jax.grad(value_fn)(params), opt.init(params), params,
                              value_fn=value_fn)
        state = state if hasattr(state, "_fields") else state[0]
        return flat(state.U) if name == "nystrom_sgd" else flat(state.curvature)

    keys = jax.random.split(jax.random.key(7), 3)
    many = np.asarray(jax.jit(jax.vmap(curvature))(keys))
    for i in range(3):
        for j in range(i):
            assert np.max(np.abs(many[i] - many[j])) > 1e-3 * np.max(np.abs(many)), (i, j)
    same = np.asarray(jax.jit(jax.vmap(curvature))(jnp.stack([keys[2]] * 3)))
    np.testing.assert_allclose(same, np.broadcast_to(many[2], same.shape), rtol=1e-5,
                               atol=1e-6)
    by_seed = curvature(seed=4)
    np.testing.assert_allclose(curvature(key=jax.random.key(4)), by_seed, rtol=1e-6)
    np.testing.assert_allclose(curvature(key=jax.random.PRNGKey(4)), by_seed, rtol=1e-6)


@pytest.mark.parametrize("name", ["nystrom_sgd", "diag_newton"])
def test_key_argument_is_validated(name):
    factory = getattr(jaxopt2.optimizers, name)
    for bad in (3, 0.5, jnp.zeros(2, jnp.float32), jax.random.split(jax.random.key(0), 2)):
        with pytest.raises(TypeError, match="key"):
            factory(key=bad)
    with pytest.raises(TypeError, match="seed"):
        factory(seed=1.5)
    with pytest.raises(ValueError, match="either `key=` or `seed=`"):
        factory(key=jax.random.key(0), seed=2)


def test_inject_hyperparams_rank_read_at_init_only():
    """`rank` fixes the state's shapes: inside a jitted `init` it is traced, and the error
    says how to keep it static."""
    opt = optax.inject_hyperparams(jaxopt2.optimizers.nystrom_sgd)(rank=2)
    with pytest.raises(TypeError, match="static_args"):
        jax.jit(opt.init)(jnp.zeros(4, jnp.float32))
    static = optax.inject_hyperparams(jaxopt2.optimizers.nystrom_sgd, static_args="rank")(rank=2)
    assert jax.jit(static.init)(jnp.zeros(4, jnp.float32)).inner_state.U.shape == (4, 2)


def test_optimizer_state_from_other_params_is_refused():
    # a state made by `init` for other parameters names the field and the fix
    from jaxopt2 import optimizers

    params = {"w": jnp.zeros(4), "b": jnp.zeros(())}
    other = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    X = jnp.ones((8, 4))
    loss = lambda p, X: jnp.mean((X @ p["w"] + p["b"] - 1.0) ** 2)  # noqa: E731
    grads = jax.grad(loss)(params, X)
    for name, opt, field in [("diag_newton", optimizers.diag_newton(0.1), "state.momentum"),
                             ("hessian_free", optimizers.hessian_free(0.1), "state.direction"),
                             ("nystrom_sgd", optimizers.nystrom_sgd(0.1, rank=2), "state.U")]:
        state = opt.init(other)
        with pytest.raises(ValueError, match=f"{name}.update: `{field}.*init\\(params\\)"):
            opt.update(grads, state, params, value_fn=lambda q: loss(q, X))
        opt.update(grads, opt.init(params), params, value_fn=lambda q: loss(q, X))  # fine
