"""Cost of a composition: a whole run holding a sketch's block means against the unguided run.

One process, the same model, seeds and step count; the three kinds of run interleaved over
``--rounds`` rounds (so a change in the machine's speed hits all of them), median whole-run
seconds each and their ratio to unguided:

* ``unguided``: ``Pipeline.sample``;
* ``sketch``: an example composition over the whole canvas (``guided_sample`` with one sketch
  region: the sketch encoded once, its block means held at every step);
* ``colours``: three colour boxes (sky, mountain, field), held the same way.

The held block means cost two average-pools and an add per step, next to a UNet call: a
composition is expected within ±10 % of unguided.

    python bench/composition.py [--model assets/models/infd-cpu-photos] [--steps 30] [--rounds 4] [--cells 64x64]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from infd_bench import matmul_gflops
from infd_core import compositions
from infd_core.geometry import Box, Size
from infd_core.guidance import guided_sample
from infd_core.regions import Layout, Region
from infd_core.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--cells", default="64x64", help="latent extent COLSxROWS, e.g. 192x64 for a 3:1 panorama")
    args = ap.parse_args()
    cells = Size.parse(args.cells, "--cells")
    pipe = Pipeline.load(args.model)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# composition cost: model={pipe.cfg.name} steps={args.steps} cells={args.cells} threads="
          f"{torch.get_num_threads()} load average={load} fp32 matmul {matmul_gflops():.0f} GFLOP/s")
    sketch = Layout((compositions.whole_canvas(compositions.example("lake")),))
    colours = Layout((Region(Box(0, 0, 1, 0.45), "color", color=(0.45, 0.65, 0.9)),
                      Region(Box(0.2, 0.25, 0.8, 0.55), "color", color=(0.5, 0.5, 0.52)),
                      Region(Box(0, 0.5, 1, 1), "color", color=(0.3, 0.55, 0.2))))
    runs = {
        "unguided": lambda seed: pipe.sample(seed, steps=args.steps, cells=cells),
        "sketch": lambda seed: guided_sample(pipe, sketch, seed=seed, steps=args.steps, cells=cells,
                                             describe_regions=False),  # as Generate runs it: no report
        "colours": lambda seed: guided_sample(pipe, colours, seed=seed, steps=args.steps, cells=cells,
                                              describe_regions=False),
    }
    runs["unguided"](0)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t = time.perf_counter()
            runs[name](r)
            seconds[name].append(time.perf_counter() - t)
            print(f"round {r} {name:9s} {seconds[name][-1]:6.2f} s", flush=True)
    base = statistics.median(seconds["unguided"])
    print(f"\n| run | median s ({args.steps} steps) | × unguided |\n|---|---:|---:|")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(values) / base:.3f} |")


if __name__ == "__main__":
    main()
