import os

# Tests are dominated by XLA compile time, not run time: skip the expensive LLVM passes
# (semantics-preserving; --xla_backend_optimization_level=0 is not: it changes rounding).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_llvm_disable_expensive_passes=true")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
