"""The benchmark problems: L2-regularized logistic and softmax regression, float64.

Every problem is `fun(params, data) -> scalar` with params a pytree ({"w", "b"} or {"W", "b"}),
started from zeros, plus the same data as NumPy arrays for the scikit-learn anchor. The
intercept is not penalized, as in scikit-learn, so with `C = 1 / (n * lam)` scikit-learn's
objective `C * sum(loss) + |w|^2 / 2` is `n * C` times ours and has the same minimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

LAM = 1e-3


def logistic_loss(params, data):
    """mean_i [log(1 + exp(z_i)) - y_i z_i] + lam/2 |w|^2, z = X w + b, y in {0, 1}."""
    z = data["X"] @ params["w"] + params["b"]
    return jnp.mean(jnp.logaddexp(0.0, z) - data["y"] * z) + 0.5 * LAM * jnp.sum(params["w"] ** 2)


def softmax_loss(params, data):
    """mean_i [logsumexp(Z_i) - Z_{i, y_i}] + lam/2 |W|_F^2, Z = X W + b."""
    z = data["X"] @ params["W"] + params["b"]
    picked = jnp.take_along_axis(z, data["y"][:, None], axis=1)[:, 0]
    return (jnp.mean(jax.nn.logsumexp(z, axis=1) - picked)
            + 0.5 * LAM * jnp.sum(params["W"] ** 2))


@dataclasses.dataclass
class Problem:
    name: str
    title: str
    fun: Any                # fun(params, data) -> scalar
    data: dict              # jnp arrays, the argument every jitted solver takes
    params0: Any            # pytree of zeros
    X: np.ndarray           # for scikit-learn
    y: np.ndarray
    multinomial: bool
    n: int
    d: int                  # number of parameters (weights + intercepts)
    hess_eigs: np.ndarray = None   # eigenvalues of the Hessian at params0

    @property
    def cond(self) -> float:
        """Condition number of the Hessian at 0, over its nonzero eigenvalues (softmax has a
        null direction, b -> b + c·1, along which the loss is constant)."""
        e = self.hess_eigs
        pos = e[e > 1e-10 * e.max()]
        return float(pos.max() / pos.min())

    @property
    def null_dim(self) -> int:
        e = self.hess_eigs
        return int(np.sum(e <= 1e-10 * e.max()))


def _standardize(X):
    from sklearn.preprocessing import StandardScaler
    return StandardScaler().fit_transform(X)


def _logistic(name, title, X, y):
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    n, d = X.shape
    data = {"X": jnp.asarray(X), "y": jnp.asarray(y)}
    params0 = {"w": jnp.zeros(d), "b": jnp.zeros(())}
    return Problem(name, title, logistic_loss, data, params0, X, y, False, n, d + 1)


def breast_cancer() -> Problem:
    from sklearn.datasets import load_breast_cancer
    X, y = load_breast_cancer(return_X_y=True)
    return _logistic("breast_cancer", "Logistic regression, breast cancer (n=569, d=30)",
                     _standardize(X), y)


def digits_binary() -> Problem:
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return _logistic("digits_binary", "Logistic regression, digits 0-4 vs 5-9 (n=1797, d=64)",
                     _standardize(X), (y >= 5).astype(np.float64))


def synthetic(n: int = 20_000, d: int = 500, cond: float = 1e4, seed: int = 0) -> Problem:
    """Dense Gaussian features X = Z diag(s), s log-spaced, so that the Hessian at 0,
    (1/4n) [X 1]^T [X 1] + lam I_w, has condition number about `cond`: its eigenvalues are
    about s_j^2 / 4 + lam, so s_max^2 / 4 = cond * lam_min with lam_min ~ lam + s_min^2 / 4.
    Labels from a random true w (logits of standard deviation about 2) plus logistic noise."""
    rng = np.random.default_rng(seed)
    s_min = 2 * np.sqrt(LAM) * 0.3            # contributes 0.09 lam to the smallest eigenvalue
    s_max = 2 * np.sqrt(cond * LAM * 1.09)
    s = np.logspace(np.log10(s_min), np.log10(s_max), d)
    X = rng.standard_normal((n, d)) * s
    w_true = rng.standard_normal(d)
    w_true *= 2.0 / np.std(X @ w_true)
    logits = X @ w_true + 0.5
    y = (logits + rng.logistic(size=n) > 0).astype(np.float64)
    return _logistic("synthetic", f"Logistic regression, synthetic dense (n={n}, d={d}, "
                     f"target cond 1e{int(round(np.log10(cond)))})", X, y)


def softmax_digits() -> Problem:
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = np.asarray(_standardize(X), np.float64)
    n, d = X.shape
    k = 10
    data = {"X": jnp.asarray(X), "y": jnp.asarray(y, jnp.int32)}
    params0 = {"W": jnp.zeros((d, k)), "b": jnp.zeros(k)}
    return Problem("softmax_digits", "Softmax regression, digits, 10 classes (n=1797, d=64)",
                   softmax_loss, data, params0, X, np.asarray(y), True, n, d * k + k)


def hessian_eigs(problem: Problem) -> np.ndarray:
    if not problem.multinomial:
        # At w = 0, b = 0 every sigmoid' is 1/4: H = (1/4n) [X 1]^T [X 1] + lam I_w.
        A = np.hstack([problem.X, np.ones((problem.n, 1))])
        H = A.T @ A / (4 * problem.n) + np.diag(np.r_[np.full(problem.d - 1, LAM), 0.0])
        return np.linalg.eigvalsh(H)
    flat0, unravel = ravel_pytree(problem.params0)
    H = jax.jit(jax.hessian(lambda v: problem.fun(unravel(v), problem.data)))(flat0)
    return np.linalg.eigvalsh(np.asarray(H))


def build(name: str, quick: bool = False) -> Problem:
    if name == "synthetic":
        p = synthetic(n=2_000, d=100) if quick else synthetic()
    else:
        p = {"breast_cancer": breast_cancer, "digits_binary": digits_binary,
             "softmax_digits": softmax_digits}[name]()
    p.hess_eigs = hessian_eigs(p)
    return p


PROBLEMS = ("breast_cancer", "digits_binary", "synthetic", "softmax_digits")
