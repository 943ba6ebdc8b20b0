"""General constrained optimization: `minimize_constrained` and its solvers.

min f(x) s.t. c_E(x) = 0, c_I(x) ≤ 0, l ≤ x ≤ u, by the safeguarded augmented Lagrangian
method (`AugmentedLagrangian`, everything) or by Newton steps on the KKT system with an exact
augmented-Lagrangian merit function (`SketchedSQP`, the KKT system solved by randomized
sketch-and-project; `DenseSQP`, solved directly; equality constraints only).
"""

from ._augmented_lagrangian import AugmentedLagrangian as AugmentedLagrangian
from ._base import AbstractConstrainedSolver as AbstractConstrainedSolver
from ._front import ConstrainedSolution as ConstrainedSolution
from ._front import minimize_constrained as minimize_constrained
from ._sqp import AbstractSQP as AbstractSQP
from ._sqp import DenseSQP as DenseSQP
from ._sqp import SketchedSQP as SketchedSQP
