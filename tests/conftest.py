import os

# Tests are dominated by XLA compile time, not run time: skip the expensive LLVM passes
# (semantics-preserving; --xla_backend_optimization_level=0 is not: it changes rounding).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_llvm_disable_expensive_passes=true")

# Two pytest workers share two cores: LAPACK (QR, SVD, Cholesky in the sketches) must not
# spawn threads of its own, or contention makes small factorisations 1000x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
