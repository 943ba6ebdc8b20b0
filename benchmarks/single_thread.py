"""Import this first (before jax or NumPy) in every benchmark script: single-threaded timing.

The thread flags must be set before jax (and NumPy's BLAS) are imported. They alone do not stop
XLA:CPU (jax 0.10) from splitting large dots over a thread pool, and with another process on the
second core that split runs up to ~3x slower than one thread; so the process is also pinned to
one core: `--cpu N` picks it, `--no-pin` turns pinning off (both read from sys.argv here and
ignored by the scripts' own parsers, which must accept them).
"""

from __future__ import annotations

import argparse
import os

_pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # `--n` is not `--no-pin`
_pre.add_argument("--cpu", type=int, default=None)
_pre.add_argument("--no-pin", action="store_true")
_pin_args, _ = _pre.parse_known_args()

PINNED_CPU = None
if not _pin_args.no_pin and hasattr(os, "sched_setaffinity"):
    _allowed = sorted(os.sched_getaffinity(0))
    PINNED_CPU = _pin_args.cpu if _pin_args.cpu is not None else _allowed[0]
    os.sched_setaffinity(0, {PINNED_CPU})

THREAD_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
for _k, _v in THREAD_ENV.items():
    os.environ.setdefault(_k, _v)
