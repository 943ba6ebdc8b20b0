"""Curvature-aware optimizers for JAX training loops, as optax gradient transformations.

Optimizers that use second-order information of the *minibatch* loss, each a drop-in
`optax.GradientTransformationExtraArgs` for the training loop you already have. Three are
Kronecker-factored:

- `shampoo`: Shampoo with Adam grafting, L^(−1/4) M R^(−1/4) from left/right gradient
  statistics per (blocked) matrix leaf; needs only the gradient.
- `soap`: Adam in the eigenbasis of Shampoo's factors (SOAP); needs only the gradient.
- `kfac`: K-FAC on Kronecker factors found by tracing `model_fn` (no layer registration;
  `jaxopt2.curvature.kronecker_factors`), with the quadratic-model step length and momentum
  and Levenberg-Marquardt damping judged on the next minibatch.

Four work with matrix-free curvature products:

- `hessian_free`: Martens' truncated Newton, CG on the damped Gauss-Newton (or Hessian) with
  Levenberg-Marquardt damping.
- `nystrom_sgd`: SketchySGD, SGD preconditioned by a randomized low-rank (Nyström)
  curvature approximation, with an automatic step size.
- `diag_newton`: a diagonal Newton method on Hutchinson estimates of the curvature diagonal
  (OASIS / Sophia style), clipped per coordinate.
- `regularized_newton`: the gradient-regularized Newton step p = −(C + √(H‖g‖) I)⁻¹ g.

They are full optimizers like `optax.adam`: the update already carries the minus sign and the
learning rate, so `optax.apply_updates(params, updates)` takes the step. `learning_rate` may
be an optax schedule (a function of the step count). As in optax, `diag_newton` is the alias
`optax.chain(scale_by_diag_newton(...), optax.scale_by_learning_rate(learning_rate))`; the
other three judge the step *with* the learning rate (a reduction-ratio or loss test on
θ + lr·p decides acceptance and damping), so the learning rate stays inside them and they have
no `scale_by_*` form.

**Hyperparameters in the state.** `optax.inject_hyperparams(jaxopt2.optimizers.X)(
learning_rate=...)` works for all four, as for every optax optimizer: numeric hyperparameters
may be arrays (also traced), Python numbers are checked at construction. optax takes every
callable argument for a schedule, so pass `static_args=("model_fn", "loss_fn")` when you give
those. Hyperparameters that fix the state's shapes or its random stream (`rank`, `key`, `seed`)
are read by `init` only.

**Random streams.** `nystrom_sgd` and `diag_newton` take `key=` (a `jax.random.key`, or a
legacy `jax.random.PRNGKey`), or `seed=` (an int, the shortcut for `jax.random.key(seed)`).
An ensemble trained under `jax.vmap` gets independent streams by building the optimizer inside
the vmapped function from split keys (see their docstrings).

**The extra-argument contract.** Every `update` has the signature

    update(grads, state, params, *, value_fn=None, batch=None, **extra_args)

- `params` is required (the curvature is evaluated there).
- `grads` is the minibatch gradient (or whatever the transformations before this one in an
  `optax.chain` made of it, e.g. a clipped gradient); the curvature is that of the minibatch
  loss at `params`.
- `value_fn(params) -> scalar` is the minibatch loss as a closure over the minibatch, the
  keyword optax's own line searches use (`optax.scale_by_zoom_linesearch`). Hessian
  products and the loss evaluations of the step checks (`hessian_free`,
  `regularized_newton`, `nystrom_sgd`) use it.
- Gauss-Newton curvature needs the loss split as `loss_fn(model_fn(params, batch), batch)`:
  give `model_fn` and `loss_fn` to the factory and the minibatch as `update(...,
  batch=batch)`; `value_fn` is then optional (derived from them when absent).
- `value` (f(params), as optax line searches pass it) saves `hessian_free`,
  `regularized_newton` and `nystrom_sgd` one evaluation of the loss; `grad` and any other
  extra argument are accepted and ignored, so these optimizers compose with anything in an
  `optax.chain` (which hands every extra argument to every member).
- A missing argument is a `ValueError` at trace time that says what to pass.

**State.** A NamedTuple of arrays whose structure, shapes and dtypes never change, so a
jitted training step compiles once. Scalars are in the parameters' precision (float32
parameters give float32 updates and state, float64 stay float64); PRNG keys are stored as raw
uint32 key data.

**Non-finite values.** If the gradient, or anything computed from it, is not finite (a bad
minibatch, a curvature that broke down), the step is skipped as `optax.apply_if_finite`
would: the update is zero and the state is returned unchanged (so the step counter does not
advance either). A step of `hessian_free` / `regularized_newton` whose trial loss is not
finite, or rises, is rejected instead: zero update, and more damping for the next step
(`nystrom_sgd` likewise halves its step size and refreshes its sketch).

**Cost per step** (a "product" is one curvature-vector product, ≈ 1.5 gradients for the GGN,
≈ 2 for the Hessian): `hessian_free` up to `cg_max_steps` + 2 products and 1–2 loss values;
`regularized_newton` up to `cg_max_steps` + 1 products and 1–2 loss values;
`nystrom_sgd` O(n·rank) and 1–2 loss values plus, every `update_freq` steps, `rank`
products (vmapped) and `power_iters` products; `diag_newton` O(n) plus, every
`update_freq` steps, `num_probes` products (vmapped). ("1–2 loss values": one when `value=`
is passed.) `shampoo` / `soap`: O(mn(m + n)) per m × n block and `eigh` of the factors every
`precondition_freq` steps; `kfac`: about four forward/backward passes plus `eigh` of the
factors every `inverse_freq` steps (see their docstrings).

`shampoo` and `soap` need only the gradient (they accept and ignore the extra arguments);
`kfac` needs `model_fn`, `loss_fn` and an `example_batch` at construction and `batch=` in
`update`, and should be the last member of an `optax.chain` (it judges its own update).

```python
import jax, jax.numpy as jnp, optax, jaxopt2

X = jax.random.normal(jax.random.key(0), (128, 4))
y = (X @ jnp.array([1.0, -2.0, 0.5, 3.0]) > 0).astype(jnp.float32)
model_fn = lambda p, batch: batch[0] @ p["w"] + p["b"]  # logits
loss_fn = lambda z, batch: jnp.mean(jnp.logaddexp(0.0, z) - batch[1] * z)
loss = lambda p, batch: loss_fn(model_fn(p, batch), batch)

optimizer = optax.chain(optax.clip_by_global_norm(10.0),
                        jaxopt2.optimizers.hessian_free(model_fn=model_fn, loss_fn=loss_fn))
params = {"w": jnp.zeros(4), "b": jnp.zeros(())}
state = optimizer.init(params)

@jax.jit
def step(params, state, batch):
    grads = jax.grad(loss)(params, batch)
    updates, state = optimizer.update(grads, state, params, batch=batch)
    return optax.apply_updates(params, updates), state

for _ in range(10):
    params, state = step(params, state, (X, y))
```
"""

from ._diag_newton import DiagNewtonState as DiagNewtonState
from ._diag_newton import diag_newton as diag_newton
from ._diag_newton import scale_by_diag_newton as scale_by_diag_newton
from ._hessian_free import HessianFreeState as HessianFreeState
from ._hessian_free import hessian_free as hessian_free
from ._kfac import KFACState as KFACState
from ._kfac import kfac as kfac
from ._nystrom_sgd import NystromSGDState as NystromSGDState
from ._nystrom_sgd import nystrom_sgd as nystrom_sgd
from ._regularized_newton import RegularizedNewtonState as RegularizedNewtonState
from ._regularized_newton import regularized_newton as regularized_newton
from ._shampoo import ShampooState as ShampooState
from ._shampoo import shampoo as shampoo
from ._soap import SOAPState as SOAPState
from ._soap import soap as soap
