"""jaxopt2: differentiable second-order solvers for JAX."""

from . import curvature as curvature
from . import distributed as distributed
from . import implicit as implicit
from . import optimizers as optimizers
from . import projection as projection
from . import prox as prox
from . import qp as qp
from . import sketch as sketch
from ._adjoint import AbstractAdjoint as AbstractAdjoint
from ._adjoint import ImplicitAdjoint as ImplicitAdjoint
from ._adjoint import Neumann as Neumann
from ._adjoint import UnrolledAdjoint as UnrolledAdjoint
from ._base import AbstractFixedPointSolver as AbstractFixedPointSolver
from ._base import AbstractLeastSquaresSolver as AbstractLeastSquaresSolver
from ._base import AbstractMinimizer as AbstractMinimizer
from ._base import AbstractRootFinder as AbstractRootFinder
from ._equations import fixed_point as fixed_point
from ._equations import least_squares as least_squares
from ._equations import root_find as root_find
from ._minimize import minimize as minimize
from ._precision import MixedPrecision as MixedPrecision
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
from ._solver.lbfgsb import LBFGSB as LBFGSB
from ._solver.levenberg_marquardt import LevenbergMarquardt as LevenbergMarquardt
from ._solver.newton import Newton as Newton
from ._solver.newton_cg import NewtonCG as NewtonCG
from ._solver.newton_krylov import NewtonKrylov as NewtonKrylov
from ._solver.projected_newton_cg import ProjectedNewtonCG as ProjectedNewtonCG
from ._solver.proximal_gradient import ProximalGradient as ProximalGradient
from ._solver.proximal_newton import ProximalNewton as ProximalNewton
from ._solver.quasi_newton import BFGS as BFGS
from ._solver.quasi_newton import LBFGS as LBFGS
from ._solver.regularized_newton import RegularizedNewton as RegularizedNewton
from ._solver.root_newton import NewtonRaphson as NewtonRaphson
from ._solver.sketched_newton import SketchedNewton as SketchedNewton
from ._solver.subspace_newton import SubspaceNewton as SubspaceNewton
from ._stepper import Stepper as Stepper
from ._stepper import StepState as StepState
from ._version import __version__ as __version__
from .constrained import AugmentedLagrangian as AugmentedLagrangian
from .constrained import ConstrainedSolution as ConstrainedSolution
from .constrained import DenseSQP as DenseSQP
from .constrained import SketchedSQP as SketchedSQP
from .constrained import minimize_constrained as minimize_constrained
from .implicit import custom_fixed_point as custom_fixed_point
from .implicit import custom_root as custom_root
from .implicit import root_jvp as root_jvp
from .implicit import root_vjp as root_vjp


def __getattr__(name):
    # `jaxopt2.scipy` (the SciPy bridge) is imported on first use, so `import jaxopt2` never
    # pays for it; SciPy itself is imported only when one of its functions is called.
    if name == "scipy":
        import importlib

        return importlib.import_module(".scipy", __name__)
    raise AttributeError(f"module 'jaxopt2' has no attribute {name!r}")
