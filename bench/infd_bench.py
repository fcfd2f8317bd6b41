"""Shared pieces of the benchmark scripts: arguments, the pipeline under test, timing.

Every script runs as ``python bench/NAME.py [--config cpu|paper] [--precision fp32|bf16]`` and
prints numbers; nothing is asserted. (Named ``infd_bench``, not ``common``, a PyPI name: the scripts
run as files, so this module is found as a top-level one beside them.) Timings on a shared 2-core machine are noisy (another busy
process makes everything 2-5x slower), so each script prints the load average first.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

# the checkout measured: this one, or the one named by $INFD_BENCH_TREE (see run_in_tree)
TREE = Path(os.environ.get("INFD_BENCH_TREE") or Path(__file__).resolve().parents[1]).resolve()
sys.path.insert(0, str(TREE))

from infd_core import configs  # noqa: E402
from infd_core.pipeline import Pipeline  # noqa: E402
from infd_core.precision import median_seconds as median_time  # noqa: E402,F401  (the scripts' timer)


def parse(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", default="cpu", choices=sorted(configs.PRESETS))
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--reps", type=int, default=None, help="repetitions per timing (default: 10 for cpu, 3 for paper)")
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    if args.reps is None:
        args.reps = 10 if args.config == "cpu" else 3
    return args


def status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB (Linux)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """fp32 matmul throughput now, to put the timings in scale (a quiet 2-core Xeon with AMX: ~400 GFLOP/s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_time(lambda: a @ b, reps) / 1e9


def header(args: argparse.Namespace, what: str) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# {what}: config={args.config} precision={args.precision} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} load average={load} fp32 matmul {matmul_gflops():.0f} GFLOP/s "
          f"(shared machine: timings are noisy)")


def model_config(name: str, diffusion: bool = True) -> configs.ModelConfig:
    cfg = configs.preset(name)
    if not diffusion:
        cfg.diffusion = None
    return cfg


def pipeline(args: argparse.Namespace, diffusion: bool = True) -> Pipeline:
    """Randomly initialised preset (weights do not change the cost)."""
    return Pipeline.from_config(model_config(args.config, diffusion), precision=args.precision)


def latent(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def once(fn: Callable[[], object]) -> float:
    with torch.no_grad():
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def run_in_tree(script: str | Path, tree: Path, argv: list[str]) -> list[dict]:
    """Run ``script --child *argv`` in a fresh process that imports ``app``, ``infd_core`` and
    ``tests`` from the checkout ``tree`` (:data:`TREE` there); its JSON lines."""
    import json
    import subprocess

    cmd = [sys.executable, str(script), "--child", *argv]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,  # stderr: shown
                         env={**os.environ, "INFD_BENCH_TREE": str(tree)})
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def alternate(trees: list[tuple[str, Path]], rounds: int, measure: Callable[[Path], list[dict]],
              show: Callable[[int, str, dict], None]) -> dict[str, list[dict]]:
    """``measure(tree)`` for each named tree, ``rounds`` times in alternating order (the last tree
    first in round 0), so that a change in the machine's load hits both; rows by tree name."""
    results: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for r in range(rounds):
        for name, tree in (trees if r % 2 else trees[::-1]):
            for row in measure(tree):
                results[name].append(row)
                show(r, name, row)
    return results
