"""jaxopt2: differentiable second-order solvers for JAX."""

from . import curvature as curvature
from ._adjoint import AbstractAdjoint as AbstractAdjoint
from ._adjoint import ImplicitAdjoint as ImplicitAdjoint
from ._base import AbstractMinimizer as AbstractMinimizer
from ._minimize import minimize as minimize
from ._results import RESULTS as RESULTS
from ._solution import Solution as Solution
from ._solver.gradient_descent import GradientDescent as GradientDescent

__version__ = "0.1.0"
