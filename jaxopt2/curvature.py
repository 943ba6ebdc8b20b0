"""Matrix-free curvature operators, returned as `lineax` linear operators.

Each acts on pytrees shaped like the parameters; data (`args`) is never flattened or copied.
"""

from ._curvature import hessian as hessian
