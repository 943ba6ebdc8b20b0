"""Run every example with its full config (or `--smoke`) on one device and write a table.

    python examples/run_all.py --device gpu          # what `make examples-gpu` runs
    python examples/run_all.py --device cpu --smoke  # the seconds-long configs

Each example runs in its own process (`--config configs/<name>.yaml --device <device>
--output-dir <output dir>/<name>`); the table lists its exit code (0 ok, 1 a solve or a
reported number failed, 2 a config error), wall time and the device line it printed, and is
written to <output dir>/results.md, beside each example's log (<output dir>/<name>.log). The
output directory is outputs/run_all (under the repository) unless `--output-dir` says
otherwise. Exits 1 if any example did not exit 0.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = {  # example -> (full config, smoke config)
    "demo": ("default.yaml", "smoke.yaml"),
    "equations": ("equations.yaml", "equations_smoke.yaml"),
    "hyperparameter_optimization": ("hyperparameter_optimization.yaml",
                                    "hyperparameter_optimization_smoke.yaml"),
    "dataset_distillation": ("dataset_distillation.yaml", "dataset_distillation_smoke.yaml"),
    "deq": ("deq.yaml", "deq_smoke.yaml"),
    "train_mlp": ("train_mlp.yaml", "train_mlp_smoke.yaml"),
    "sparse_regression": ("sparse_regression.yaml", "sparse_regression_smoke.yaml"),
    "optimal_transport": ("optimal_transport.yaml", "optimal_transport_smoke.yaml"),
    "constrained": ("constrained.yaml", "constrained_smoke.yaml"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, choices=["cpu", "gpu", "tpu"])
    parser.add_argument("--smoke", action="store_true", help="the *_smoke.yaml configs")
    parser.add_argument("--only", nargs="*", default=None, choices=list(EXAMPLES),
                        help="a subset of the examples")
    parser.add_argument("--output-dir", type=pathlib.Path, default=ROOT / "outputs" / "run_all",
                        help="where the table, logs and outputs go (default: outputs/run_all)")
    args = parser.parse_args(argv)
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, configs in EXAMPLES.items():
        if args.only and name not in args.only:
            continue
        config = ROOT / "configs" / configs[1 if args.smoke else 0]
        cmd = [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--config", str(config),
               "--output-dir", str(out / name)]
        if args.device:
            cmd += ["--device", args.device]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        device = next((line.strip() for line in proc.stdout.splitlines()
                       if "device" in line.lower()), "")
        rows.append((name, config.name, proc.returncode, f"{seconds:.0f}", device[:80]))
        print(f"{name:28s} exit {proc.returncode}  {seconds:7.1f} s", flush=True)
    table = ["| example | config | exit | wall s | device line |", "|---|---|---|---|---|"]
    table += [f"| {n} | {c} | {r} | {s} | {d.replace('|', '/')} |" for n, c, r, s, d in rows]
    (out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0 if all(r[2] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
