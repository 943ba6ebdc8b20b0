"""Entropic optimal transport.

- [`sinkhorn`][jaxopt2.ot.sinkhorn]: log-domain Sinkhorn, stable for small ε, stopping on the
  L1 error of both marginals.
- [`sinkhorn_newton_sparse`][jaxopt2.ot.sinkhorn_newton_sparse]: Sinkhorn-Newton-Sparse
  (Tang et al., 2024): a Sinkhorn warm-up, then Newton steps on the concave dual with the
  Hessian sparsified to the plan's largest entries; far fewer iterations for small ε.
- [`sinkhorn_points`][jaxopt2.ot.sinkhorn_points]: Sinkhorn between point clouds with the
  cost formed block by block, never as an n × m matrix (for 10⁴ × 10⁴ and larger).

Both return an [`OTResult`][jaxopt2.ot.OTResult] (potentials, plan, costs, marginal errors,
status, step counts), work under `jit` and `vmap`, and are differentiable with respect to the
cost matrix, the marginals and ε by the implicit function theorem (not by unrolling).
`jaxopt2.projection.birkhoff` (the entropic projection onto doubly stochastic matrices) is
built on `sinkhorn`.

```python
import jax, jax.numpy as jnp
from jaxopt2 import ot
x = jax.random.uniform(jax.random.key(0), (40, 2))
y = jax.random.normal(jax.random.key(1), (30, 2))
C = jnp.sum((x[:, None] - y[None]) ** 2, -1); C = C / C.mean()
out = ot.sinkhorn_newton_sparse(C, epsilon=0.01)
print(out.status, out.stats["num_steps"], out.transport_cost)
```
"""

from ._online import PointsOTResult as PointsOTResult
from ._online import sinkhorn_points as sinkhorn_points
from ._problem import OTResult as OTResult
from ._sinkhorn import sinkhorn as sinkhorn
from ._sns import sinkhorn_newton_sparse as sinkhorn_newton_sparse
