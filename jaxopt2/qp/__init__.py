"""Convex quadratic programs: `solve_qp` (dense primal-dual interior point, differentiable
as a layer, batched under `vmap`; or OSQP-style ADMM, `method="admm"`/`ADMM(...)`, dense or
matrix-free).

    minimize ½xᵀQx + cᵀx   subject to   Ax = b,   Gx ≤ h,   lower ≤ x ≤ upper
"""

from ._admm import ADMM as ADMM
from ._solve import QPSolution as QPSolution
from ._solve import solve_qp as solve_qp
