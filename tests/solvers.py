"""The registry of public minimizers that the contract tests (tests/test_contract.py) run over.
Every public solver adds itself here: a name and a zero-argument factory giving a configured
instance, plus the step budget it needs on the small strongly convex contract problem."""

import jaxopt2

MINIMIZERS = {
    "GradientDescent": (lambda: jaxopt2.GradientDescent(), 2000),
}
