"""jaxopt2: differentiable second-order solvers for JAX."""

from . import curvature as curvature
from ._adjoint import AbstractAdjoint as AbstractAdjoint
from ._adjoint import ImplicitAdjoint as ImplicitAdjoint
from ._base import AbstractFixedPointSolver as AbstractFixedPointSolver
from ._base import AbstractLeastSquaresSolver as AbstractLeastSquaresSolver
from ._base import AbstractMinimizer as AbstractMinimizer
from ._base import AbstractRootFinder as AbstractRootFinder
from ._equations import fixed_point as fixed_point
from ._equations import least_squares as least_squares
from ._equations import root_find as root_find
from ._minimize import minimize as minimize
from ._results import RESULTS as RESULTS
from ._results import status_name as status_name
from ._solution import Solution as Solution
from ._solver.anderson import Anderson as Anderson
from ._solver.bisection import Bisection as Bisection
from ._solver.broyden import Broyden as Broyden
from ._solver.damped_newton import DampedNewton as DampedNewton
from ._solver.fixed_point_iteration import FixedPointIteration as FixedPointIteration
from ._solver.gauss_newton import GaussNewton as GaussNewton
from ._solver.gradient_descent import GradientDescent as GradientDescent
from ._solver.levenberg_marquardt import LevenbergMarquardt as LevenbergMarquardt
from ._solver.newton import Newton as Newton
from ._solver.newton_cg import NewtonCG as NewtonCG
from ._solver.newton_krylov import NewtonKrylov as NewtonKrylov
from ._solver.quasi_newton import BFGS as BFGS
from ._solver.quasi_newton import LBFGS as LBFGS
from ._solver.regularized_newton import RegularizedNewton as RegularizedNewton
from ._solver.root_newton import NewtonRaphson as NewtonRaphson

__version__ = "0.1.0"
