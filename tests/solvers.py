"""The registry of public minimizers that the contract tests (tests/test_contract.py) run over.
Every public solver adds itself here: a name and a zero-argument factory giving a configured
instance, plus the step budget it needs on the small strongly convex contract problem."""

import jax
import jax.numpy as jnp
import pytest

import jaxopt2


def logistic_sqrt_hessian(params, args):
    """∇²f = BᵀB + λI for the contract problem (tests/test_contract.py: the mean logistic loss
    of the margins X w + b plus (λ/2)(‖w‖² + b²)), with params as a dict or as the tuple
    (w, [b]) of its pytree test; B's columns follow the flattened params."""
    X, _, lam = args
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def margins(v):
        p = unravel(v)
        w, b = (p["w"], p["b"]) if isinstance(p, dict) else (p[0], p[1][0])
        return X @ w + b

    z, A = margins(flat), jax.jacfwd(margins)(flat)  # A: the (n, d) design matrix
    p = jax.nn.sigmoid(z)
    return jnp.sqrt(p * (1 - p) / X.shape[0])[:, None] * A, lam


MINIMIZERS = {
    "GradientDescent": (lambda: jaxopt2.GradientDescent(), 2000),
    "Newton": (lambda: jaxopt2.Newton(), 50),
    "NewtonCG": (lambda: jaxopt2.NewtonCG(), 100),
    "NewtonCG-trust-region": (lambda: jaxopt2.NewtonCG(trust_region=True), 100),
    "LBFGS": (lambda: jaxopt2.LBFGS(), 200),
    "BFGS": (lambda: jaxopt2.BFGS(), 200),
    # the bound-constrained solvers without bounds (their bounded contract: tests/test_lbfgsb.py)
    "LBFGSB": (lambda: jaxopt2.LBFGSB(), 200),
    "ProjectedNewtonCG": (lambda: jaxopt2.ProjectedNewtonCG(), 100),
    # the composite solvers without a prox (their composite contract: tests/test_proximal.py)
    "ProximalGradient": (lambda: jaxopt2.ProximalGradient(), 500),
    "ProximalNewton": (lambda: jaxopt2.ProximalNewton(), 100),
    "RegularizedNewton": (lambda: jaxopt2.RegularizedNewton(), 100),
    "DampedNewton": (lambda: jaxopt2.DampedNewton(), 100),
    "SketchedNewton": (lambda: jaxopt2.SketchedNewton(sketch_size=20), 200),
    "SketchedNewton-sqrt": (lambda: jaxopt2.SketchedNewton(sketch_size=20, sketch="sparse_sign",
                                                           sqrt_hessian=logistic_sqrt_hessian),
                            200),
    # a typed key (the stream of the default seed=0): the contract holds with a key leaf too
    "SubspaceNewton": (lambda: jaxopt2.SubspaceNewton(subspace_dim=2, key=jax.random.key(0)),
                       400),
}

# Solvers of the equation front doors, run by tests/test_equations_contract.py: name ->
# (factory, budget). Root finders are also run through `fixed_point` (on g(y) − y).
LEAST_SQUARES = {
    "LevenbergMarquardt": (lambda: jaxopt2.LevenbergMarquardt(), 100),
    "LevenbergMarquardt-cg": (lambda: jaxopt2.LevenbergMarquardt(linear_solver="cg"), 100),
    "GaussNewton": (lambda: jaxopt2.GaussNewton(), 100),
    "GaussNewton-cg": (lambda: jaxopt2.GaussNewton(linear_solver="cg"), 100),
    # rank 2 < 3 parameters: a genuinely low-rank sketch with a flat remainder
    "LevenbergMarquardt-cg-nystrom": (lambda: jaxopt2.LevenbergMarquardt(
        linear_solver="cg", preconditioner=jaxopt2.sketch.NystromPreconditioner(rank=2)), 100),
    "GaussNewton-cg-nystrom": (lambda: jaxopt2.GaussNewton(
        linear_solver="cg",
        preconditioner=jaxopt2.sketch.NystromPreconditioner(rank=2, key=jax.random.key(0))), 100),
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


# `make test` runs the contract tests on one solver of each family (dense Newton, matrix-free
# Newton, quasi-Newton, bounded, randomized; for the equation doors one per door and kind of
# inner solve); the other solvers' contract tests are marked slow and run in `make test-slow`
# (.ci/run runs both). Every solver stays under the whole contract in CI; only the quick
# everyday run is thinner.
CORE = {
    "Newton", "NewtonCG", "LBFGS", "LBFGSB", "SketchedNewton",
    "least_squares-LevenbergMarquardt", "least_squares-GaussNewton-cg",
    "root_find-NewtonRaphson", "root_find-Broyden", "scalar_root-Bisection",
    "fixed_point-Anderson", "fixed_point-NewtonKrylov",
}


def contract_params(values, ids=None):
    """`values` for `pytest.mark.parametrize`, those outside `CORE` marked slow."""
    ids = list(values) if ids is None else ids
    return [pytest.param(v, id=i, marks=() if i in CORE else pytest.mark.slow)
            for v, i in zip(values, ids, strict=True)]
