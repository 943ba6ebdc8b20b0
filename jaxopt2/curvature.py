"""Matrix-free curvature operators, returned as `lineax` linear operators, and randomized
estimators (Hutchinson diagonal and trace, Lanczos extreme eigenvalues) that run on them.

Each operator acts on pytrees shaped like the parameters; data (`args`) is never flattened or
copied.
"""

from ._curvature import empirical_fisher as empirical_fisher
from ._curvature import fisher as fisher
from ._curvature import gauss_newton as gauss_newton
from ._curvature import hessian as hessian
from ._curvature import jacobian as jacobian
from ._estimators import diagonal as diagonal
from ._estimators import extreme_eigenvalues as extreme_eigenvalues
from ._estimators import trace as trace
from ._jacobi import JacobiPreconditioner as JacobiPreconditioner
from ._kronecker import KroneckerFactors as KroneckerFactors
from ._kronecker import kronecker_factors as kronecker_factors
