"""Sketching and randomized linear algebra.

- Sketching operators S (k × n) as lineax operators over flat vectors or pytrees, from a PRNG
  key: `gaussian_sketch`, `rademacher_sketch`, `srht_sketch` (randomized orthogonal transform
  plus row subsampling), `sparse_sign_sketch` (CountSketch-like, never materialised),
  `row_sampling_sketch` (uniform or importance, e.g. by `leverage_scores`).
- `nystrom(op, rank, key)`: the stable randomized Nyström approximation of a PSD operator
  (curvature operators included), with a closed-form shifted inverse;
  `nystrom_preconditioner` / `NystromPreconditioner` (Nyström PCG, Frangella–Tropp–Udell),
  usable as `NewtonCG(preconditioner=...)` and `ImplicitAdjoint(preconditioner=...)`.
- `randomized_eigh`, `randomized_svd` (range finder with power iterations), `hutchpp`
  (Hutch++ traces), `slq` and `logdet_slq` (stochastic Lanczos quadrature).
- `sketch_and_project(A, b, key, sketch_size=...)`: randomized iterative sketching (block
  Kaczmarz, Gaussian sketch-and-project) for large consistent linear systems.

The solvers built on sketches are `jaxopt2.SketchedNewton` (Newton sketch and subsampled
Newton for finite sums) and `jaxopt2.SubspaceNewton` (randomized subspace Newton).

```python
import jax, jaxopt2
solver = jaxopt2.NewtonCG(preconditioner=jaxopt2.sketch.NystromPreconditioner(rank=50))
```
"""

from ._estimators import hutchpp as hutchpp
from ._estimators import logdet_slq as logdet_slq
from ._estimators import slq as slq
from ._nystrom import NystromApproximation as NystromApproximation
from ._nystrom import NystromPreconditioner as NystromPreconditioner
from ._nystrom import nystrom as nystrom
from ._nystrom import nystrom_preconditioner as nystrom_preconditioner
from ._operators import gaussian_sketch as gaussian_sketch
from ._operators import leverage_scores as leverage_scores
from ._operators import rademacher_sketch as rademacher_sketch
from ._operators import row_sampling_sketch as row_sampling_sketch
from ._operators import sparse_sign_sketch as sparse_sign_sketch
from ._operators import srht_sketch as srht_sketch
from ._randomized import randomized_eigh as randomized_eigh
from ._randomized import randomized_svd as randomized_svd
from ._sketch_and_project import SketchAndProjectInfo as SketchAndProjectInfo
from ._sketch_and_project import sketch_and_project as sketch_and_project
