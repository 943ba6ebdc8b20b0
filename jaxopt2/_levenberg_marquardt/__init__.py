"""The two algorithms behind `jaxopt2.LevenbergMarquardt`, one module each:

- `dense`: Moré's scaled trust region on the SVD of J D⁻¹ (MINPACK's `lmder`);
- `matrix_free`: the λ-form with Nielsen's damping and damped (preconditioned) CGLS.

Each module has its own state type and `init(solver, fn, point, args)` /
`step(solver, fn, point, args, state)`; the public class picks one statically from its
`linear_solver` and the problem's shapes. What both share (MINPACK's acceptance threshold,
the geodesic-acceleration test) is in `_common`; the trust-region rules are in
`jaxopt2._trust_region`, the least-squares numerics in `jaxopt2._least_squares`, and the
XLA:CPU compile-time workaround in `jaxopt2._xla_cpu`.
"""

from . import dense as dense
from . import matrix_free as matrix_free
