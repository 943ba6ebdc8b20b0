"""Several processes, one solve: NewtonCG and an implicit hypergradient on data that no
process holds whole, with `jax.distributed` and JAX's sharding (no communication code here).

    python examples/distributed.py --config configs/distributed.yaml

The launcher starts `num_processes` worker processes on this machine, each with
`local_devices` CPU devices (`--xla_force_host_platform_device_count`), connected by
`jax.distributed.initialize` (coordinator on localhost, CPU collectives by gloo). Each worker
loads only its own block of the examples and builds the global arrays with
`jaxopt2.distributed.local_data` (`jax.make_array_from_process_local_data`); the data is
sharded along the example axis over all num_processes × local_devices devices. Each worker
then runs, jitted and under the mesh:

- L2-regularized logistic regression by `jaxopt2.NewtonCG()`;
- the hypergradient d/dλ ‖w*(λ)‖² through the solve (implicit differentiation);
- and, listed in `also`, matrix-free `LevenbergMarquardt` on a tanh fit, `SketchedNewton`
  (rows sampled from every process's block with one key) and three `hessian_free` steps.

Then the launcher runs the same two computations in one process holding all the devices and
compares: the answers agree to float32 rounding (the reductions are summed in another order).
Results go to `output_dir/results.json` (params, statuses, hypergradients, run and compile
times of both runs) and `output_dir/results.md`.

**Several hosts.** Start one worker per host yourself, with the same config, and the first
host's address as coordinator:

    # on host i of N (i = 0 … N-1), host 0 reachable at 10.0.0.1
    python examples/distributed.py --config configs/distributed.yaml --worker \\
        --coordinator 10.0.0.1:12345 --num-processes N --process-id i

(`--local-devices 0` keeps the host's own devices: its GPUs or TPU chips.) Every host must
see the same config and load a block of the same size; the results are written by process 0.
On GPU/TPU clusters `jax.distributed.initialize()` without arguments reads the cluster's
environment (SLURM, Cloud TPU); pass `--coordinator auto` for that.

Expected output (CPU, 2 processes × 4 devices, n = 8192, d = 32, float32): both statuses
successful; NewtonCG parameters of the two-process and one-process runs within 1e-5
(relative; measured 5e-8), hypergradients within 1e-4 (measured 5e-7), the `also` solvers'
parameters within 1e-5 (measured ≤ 2e-6); the launcher exits with code 0. The workers need
CPU collectives (gloo); where jaxlib lacks them the launcher says so and exits with code 3.
Runs unchanged on GPU (each worker then uses its GPUs; `local_devices: 0`) and prints the
devices it used.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    ConfigError,
    load_config,
    markdown_table,
    prepare_output_dir,
    write_results,
)

DEFAULTS = {
    "num_processes": 2,
    "local_devices": 4,  # CPU devices per process; 0 = the process's own devices (GPU/TPU)
    "n": 8192,  # examples in all (a multiple of num_processes × local_devices)
    "d": 32,
    "l2": 1e-2,
    "seed": 0,
    "axis_type": "explicit",  # "explicit" (sharding in types) or "auto"
    "rtol": 1e-5,
    # compared too, besides NewtonCG and the hypergradient
    "also": ["levenberg_marquardt", "sketched_newton", "hessian_free"],
    "port": 0,  # coordinator port on localhost; 0 picks a free one
    "timeout": 600,  # seconds for each launched process
    "output_dir": "outputs/distributed",
}
UNAVAILABLE = 3  # exit code where this platform has no CPU collectives


def load_block(config: dict, block: int, blocks: int):
    """Block `block` of `blocks` of the data set: what one process would read from its own
    files. Each block has its own seed, so no process ever generates another's rows."""
    import numpy as np

    rows = config["n"] // blocks
    rng = np.random.default_rng([config["seed"], block])
    w_true = np.random.default_rng(config["seed"]).normal(size=config["d"])
    X = rng.normal(size=(rows, config["d"])).astype(np.float32)
    p = 1 / (1 + np.exp(-(X @ w_true) / np.sqrt(config["d"])))
    y = (rng.random(rows) < p).astype(np.float32)
    return X, y


def compute(config: dict, process_index: int, num_processes: int) -> dict:
    """The distributed part: global arrays from this process's block, the solve and the
    hypergradient, timed (first call compiles; the second is timed)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType

    import jaxopt2
    from jaxopt2 import distributed

    kind = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[config["axis_type"]]
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(kind,))
    if num_processes > 1:
        local = load_block(config, process_index, num_processes)
    else:  # one process holds every block
        blocks = [load_block(config, b, config["num_processes"])
                  for b in range(config["num_processes"])]
        local = tuple(np.concatenate(parts) for parts in zip(*blocks, strict=True))
    data = distributed.local_data(local, mesh)
    distributed.check_placement(data, mesh)
    d, l2, rtol = config["d"], config["l2"], config["rtol"]

    def loss(w, data, lam):
        X, y = data
        z = X @ w
        return jnp.mean(jax.nn.softplus(z) - y * z) + 0.5 * lam * w @ w

    def solve(data, lam):
        return jaxopt2.minimize(lambda w, a: loss(w, a, lam), jnp.zeros(d), data,
                                solver=jaxopt2.NewtonCG(rtol=rtol), throw=False)

    @jax.jit
    def run(data):
        sol = solve(data, l2)
        return sol.params, sol.status._value, sol.stats["num_steps"]

    @jax.jit
    def hypergradient(data):
        return jax.grad(lambda lam: jnp.sum(solve(data, lam).params ** 2))(l2)

    def residual(w, data):  # a nonlinear least-squares fit of the labels
        X, y = data
        return jnp.tanh(X @ w) - (2 * y - 1) * 0.5

    @jax.jit
    def levenberg_marquardt(data):
        sol = jaxopt2.least_squares(residual, jnp.zeros(d), data, throw=False,
                                    solver=jaxopt2.LevenbergMarquardt(linear_solver="cg"))
        return sol.params, sol.status._value, sol.stats["num_steps"]

    @jax.jit
    def sketched_newton(data):  # rows sampled from every process's block, same key
        sol = jaxopt2.minimize(lambda w, a: loss(w, a, l2), jnp.zeros(d), data, throw=False,
                               solver=jaxopt2.SketchedNewton(key=jax.random.key(1),
                                                             rtol=rtol))
        return sol.params, sol.status._value, sol.stats["num_steps"]

    @jax.jit
    def hessian_free(data):  # three steps of the optax transformation on the full batch
        opt = jaxopt2.optimizers.hessian_free(
            model_fn=lambda w, b: b[0] @ w,
            loss_fn=lambda z, b: jnp.mean(jax.nn.softplus(z) - b[1] * z))
        w = jnp.zeros(d)
        state = opt.init(w)
        for _ in range(3):
            g = jax.grad(lambda w: loss(w, data, 0.0))(w)
            updates, state = opt.update(g, state, w, batch=data)
            w = w + updates
        return w, jnp.int32(0), jnp.int32(3)

    extra = {"levenberg_marquardt": levenberg_marquardt, "sketched_newton": sketched_newton,
             "hessian_free": hessian_free}
    out = {}
    with jax.set_mesh(mesh):
        for name, fn in (("newton_cg", run), ("hypergradient", hypergradient),
                         *((name, extra[name]) for name in config["also"])):
            start = time.perf_counter()
            jax.block_until_ready(fn(data))
            first = time.perf_counter() - start
            start = time.perf_counter()
            result = jax.block_until_ready(fn(data))
            seconds = time.perf_counter() - start
            out[name] = {"seconds": seconds, "compile_seconds": first - seconds}
            if name == "hypergradient":
                out[name]["value"] = float(result)
            else:
                params, status, steps = result
                out[name].update(params=np.asarray(params).tolist(),
                                 status=jaxopt2.status_name(int(status)),
                                 steps=int(steps))
    out["devices"] = jax.device_count()
    out["processes"] = num_processes
    out["platform"] = jax.devices()[0].platform
    return out


def worker(config: dict, coordinator: str | None, num_processes: int, process_id: int,
           output: str | None) -> int:
    import jax

    if num_processes > 1:
        if coordinator == "auto":
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator_address=coordinator,
                                       num_processes=num_processes, process_id=process_id)
    print(f"process {jax.process_index()} of {jax.process_count()}: local devices "
          f"{jax.local_devices()}, {jax.device_count()} in all", flush=True)
    result = compute(config, jax.process_index(), jax.process_count())
    if output and jax.process_index() == 0:
        with open(output, "w") as f:
            json.dump(result, f)
    if num_processes > 1:
        jax.distributed.shutdown()
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    if devices:
        # First: XLA may stop reading at a malformed flag further on.
        flags = f"--xla_force_host_platform_device_count={devices} " + env.get("XLA_FLAGS", "")
        env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    return env


def _has_cpu_collectives() -> bool:
    try:
        from jax._src.lib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


def launch(config: dict, config_path: str | None, sets) -> int:
    out = prepare_output_dir(config)
    script = os.path.abspath(__file__)
    base = [sys.executable, script] + (["--config", config_path] if config_path else [])
    for s in sets:
        base += ["--set", s]
    P, k = config["num_processes"], config["local_devices"]
    if k and not _has_cpu_collectives():
        print("this jaxlib has no CPU collectives (gloo): the multi-process run cannot start "
              "on CPU", file=sys.stderr)
        return UNAVAILABLE
    port = config["port"] or _free_port()
    multi_json = os.path.join(out, "multi_process.json")
    single_json = os.path.join(out, "single_process.json")
    procs = [subprocess.Popen(base + ["--worker", "--coordinator", f"localhost:{port}",
                                      "--num-processes", str(P), "--process-id", str(i),
                                      "--output", multi_json], env=_env(k))
             for i in range(P)]
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=config["timeout"]))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            print(f"a worker ran past {config['timeout']} s", file=sys.stderr)
            return 1
    if any(codes):
        print(f"workers exited with {codes}", file=sys.stderr)
        return 1
    single = subprocess.run(base + ["--worker", "--num-processes", "1", "--process-id", "0",
                                    "--output", single_json], env=_env(P * k),
                            timeout=config["timeout"])
    if single.returncode:
        return 1
    with open(multi_json) as f:
        multi = json.load(f)
    with open(single_json) as f:
        one = json.load(f)
    return report(config, out, multi, one)


def report(config: dict, out: str, multi: dict, one: dict) -> int:
    import numpy as np

    def differs(name):
        a, b = np.asarray(multi[name]["params"]), np.asarray(one[name]["params"])
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))

    params_err = differs("newton_cg")
    ha, hb = multi["hypergradient"]["value"], one["hypergradient"]["value"]
    hyper_err = abs(ha - hb) / max(abs(hb), 1e-30)
    also = {name: differs(name) for name in config["also"]}
    ok = (multi["newton_cg"]["status"] == one["newton_cg"]["status"] == "successful"
          and params_err <= 1e-5 and hyper_err <= 1e-4
          and all(err <= 1e-5 and multi[name]["status"] == one[name]["status"]
                  for name, err in also.items()))
    rows = [[f"{r['processes']} × {r['devices'] // r['processes']}", r["newton_cg"]["status"],
             r["newton_cg"]["steps"], r["newton_cg"]["seconds"],
             r["newton_cg"]["compile_seconds"], r["hypergradient"]["value"],
             r["hypergradient"]["seconds"]] for r in (multi, one)]
    table = markdown_table(["processes × devices", "NewtonCG status", "steps", "solve s",
                            "compile s", "hypergradient", "hypergradient s"], rows)
    summary = (f"relative difference: parameters {params_err:.2e} (≤ 1e-5), "
               f"hypergradient {hyper_err:.2e} (≤ 1e-4)"
               + "".join(f", {name} {err:.2e} ({multi[name]['status']}; ≤ 1e-5)"
                         for name, err in also.items())
               + f": {'ok' if ok else 'FAILED'}")
    print(table + "\n" + summary)
    write_results(out, table, summary)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"multi_process": multi, "single_process": one, "params_rel_diff": params_err,
                   "hypergradient_rel_diff": hyper_err, "also_rel_diff": also, "ok": ok}, f,
                  indent=1)
    return 0 if ok else 1


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--worker", action="store_true",
                        help="run one process of the computation (what the launcher starts)")
    parser.add_argument("--coordinator", default=None, help="host:port of process 0, or auto")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON written by process 0")
    cli = parser.parse_args(argv)
    try:
        config = load_config(DEFAULTS, cli.config, cli.set)
        unknown = set(config["also"]) - set(DEFAULTS["also"])
        if unknown:
            raise ConfigError(f"also: unknown {sorted(unknown)}; choose from {DEFAULTS['also']}")
        if config["axis_type"] not in ("explicit", "auto"):
            raise ConfigError(f"axis_type must be 'explicit' or 'auto', got "
                              f"{config['axis_type']!r}")
        devices = config["num_processes"] * max(config["local_devices"], 1)
        if config["n"] % devices:
            raise ConfigError(f"n = {config['n']} must be a multiple of num_processes × "
                              f"local_devices = {devices}")
    except ConfigError as e:
        print(f"python examples/distributed.py: error: {e}", file=sys.stderr)
        return 2
    if cli.worker:
        return worker(config, cli.coordinator, cli.num_processes, cli.process_id, cli.output)
    print("config: " + json.dumps(config))
    return launch(config, cli.config, cli.set)


if __name__ == "__main__":
    raise SystemExit(main())
