"""Running a test script in its own process with 8 host CPU devices (the device count is fixed
when JAX starts, so it cannot change inside the pytest process)."""

import os
import subprocess
import sys

import pytest


def run_on_eight_devices(script: str, args, done: str):
    """Run `python -c script *args` with 8 host devices, float32 by default; fail with the
    end of its output unless it exits 0 and prints `done`. Skipped on JAX versions without
    Explicit mesh axes (`jax.set_mesh`)."""
    import jax

    if not (hasattr(jax.sharding, "AxisType") and hasattr(jax, "set_mesh")):
        pytest.skip(f"jax {jax.__version__} has no Explicit mesh axes / jax.set_mesh")
    run_on_devices(script, args, done, devices=8, x64=False)


def run_on_devices(script: str, args, done: str, *, devices: int, x64: bool):
    """Run `python -c script *args` with `devices` host CPU devices (x64 on or off); fail with
    the end of its output unless it exits 0 and prints `done`."""
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=(env.get("XLA_FLAGS", "")
                   + f" --xla_force_host_platform_device_count={devices}").strip(),
        JAX_PLATFORMS="cpu",
        JAX_ENABLE_X64="1" if x64 else "0",
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert done in proc.stdout, output[-6000:]
