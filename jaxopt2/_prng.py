"""PRNG keys of the randomized solvers, optimizers and preconditioners, in JAX's convention.

Each takes `key=`: a typed key (`jax.random.key(0)`) or a legacy raw uint32 key
(`jax.random.PRNGKey(0)`), as every JAX function that draws random numbers does; `seed=` (an
int) is a shortcut for `key=jax.random.key(seed)`. A key may be a traced value, so a solver or
optimizer built inside `jax.vmap` over a batch of keys (`jax.random.split(key, n)`) gets one
independent random stream per batch member, where a Python `seed` would give them all the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _legacy_shape() -> tuple[int, ...]:
    """Shape of the raw data of one key of the default PRNG implementation ((2,) for
    threefry)."""
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape


def _describe(value) -> str:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return f"{type(value).__name__} {value!r}"
    return f"{type(value).__name__} of dtype {dtype} and shape {getattr(value, 'shape', ())}"


def as_key(key, owner: str, *, batched: bool = False):
    """`key` as a typed PRNG key array (None stays None).

    Accepts a typed key (`jax.random.key`) or legacy raw uint32 key data
    (`jax.random.PRNGKey`), concrete or traced. A single key (shape ()) unless `batched`, which
    also accepts a batch of keys (for a module vmapped with `eqx.filter_vmap`). Anything else
    is a TypeError that says what to pass.
    """
    if key is None:
        return None
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            typed = key
        elif key.dtype == jnp.uint32 and key.shape[-1:] == _legacy_shape()[-1:]:
            typed = jax.random.wrap_key_data(key)
        else:
            typed = None
        if typed is not None and (batched or typed.shape == ()):
            return typed
        if typed is not None:
            raise TypeError(
                f"{owner}: `key` must be one PRNG key; got a batch of keys of shape "
                f"{typed.shape}. To give a batch of problems independent random streams, "
                f"`jax.vmap` over the keys and build one {owner} per key inside.")
    hint = (f" For an integer seed pass `seed={key}`." if isinstance(key, int)
            and not isinstance(key, bool) else "")
    raise TypeError(
        f"{owner}: `key` must be a JAX PRNG key, `jax.random.key(0)` (or a legacy "
        f"`jax.random.PRNGKey(0)`); got {_describe(key)}.{hint}")


def check_seed(seed, owner: str, key=None, *, traced_ok: bool = False):
    """`seed`: a Python int ≥ 0 (an integer array, possibly traced, with `traced_ok`, as
    `optax.inject_hyperparams` passes every numeric argument). Passing both a `key` and a
    nonzero `seed` is a ValueError: only one of them can choose the stream."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"{owner}: `seed` must be an int ≥ 0; got {seed!r}.")
        if key is not None and seed != 0:
            raise ValueError(f"{owner}: pass either `key=` or `seed=`, not both (`seed` is a "
                             f"shortcut for key=jax.random.key(seed)).")
        return
    if traced_ok and isinstance(seed, (jax.Array, np.ndarray)) and seed.shape == () \
            and jnp.issubdtype(seed.dtype, jnp.integer):
        return
    raise TypeError(f"{owner}: `seed` must be a Python int ≥ 0; got {_describe(seed)}. "
                    f"To pass a PRNG key, use `key=`.")


def resolve(key, seed):
    """The typed key to draw from: `key` if given, else `jax.random.key(seed)`."""
    return jax.random.key(seed) if key is None else key


def module_key(key, seed, owner: str):
    """The one typed key a module (solver, preconditioner) draws from; a module still holding
    a batch of keys (built with `key=jax.random.split(...)` and not vmapped) is a TypeError."""
    key = resolve(key, seed)
    if key.shape != ():
        raise TypeError(f"{owner} holds a batch of keys of shape {key.shape}: vmap over it "
                        f"(e.g. `eqx.filter_vmap`, one key per problem) before solving.")
    return key
