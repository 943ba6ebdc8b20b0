"""The registry of public minimizers that the contract tests (tests/test_contract.py) run over.
Every public solver adds itself here: a name and a zero-argument factory giving a configured
instance, plus the step budget it needs on the small strongly convex contract problem."""

import jaxopt2

MINIMIZERS = {
    "GradientDescent": (lambda: jaxopt2.GradientDescent(), 2000),
    "Newton": (lambda: jaxopt2.Newton(), 50),
    "NewtonCG": (lambda: jaxopt2.NewtonCG(), 100),
    "NewtonCG-trust-region": (lambda: jaxopt2.NewtonCG(trust_region=True), 100),
    "LBFGS": (lambda: jaxopt2.LBFGS(), 200),
    "BFGS": (lambda: jaxopt2.BFGS(), 200),
    "RegularizedNewton": (lambda: jaxopt2.RegularizedNewton(), 100),
    "DampedNewton": (lambda: jaxopt2.DampedNewton(), 100),
}

# Solvers of the equation front doors, run by tests/test_equations_contract.py: name ->
# (factory, budget). Root finders are also run through `fixed_point` (on g(y) − y).
LEAST_SQUARES = {
    "LevenbergMarquardt": (lambda: jaxopt2.LevenbergMarquardt(), 100),
    "LevenbergMarquardt-cg": (lambda: jaxopt2.LevenbergMarquardt(linear_solver="cg"), 100),
    "GaussNewton": (lambda: jaxopt2.GaussNewton(), 100),
    "GaussNewton-cg": (lambda: jaxopt2.GaussNewton(linear_solver="cg"), 100),
}
ROOT_FINDERS = {
    "NewtonRaphson": (lambda: jaxopt2.NewtonRaphson(), 50),
    "NewtonKrylov": (lambda: jaxopt2.NewtonKrylov(), 50),
    "Broyden": (lambda: jaxopt2.Broyden(), 100),
}
SCALAR_ROOT_FINDERS = {
    "Bisection": (lambda: jaxopt2.Bisection(lower=-10.0, upper=10.0), 200),
    "Bisection-expanding": (lambda: jaxopt2.Bisection(), 200),
}
FIXED_POINT = {
    "FixedPointIteration": (lambda: jaxopt2.FixedPointIteration(), 400),
    "Anderson": (lambda: jaxopt2.Anderson(), 100),
}
