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
