"""Cost of one guided step: INFD's per-box 224² render vs the fixed-resolution way (paper §5.5).

For box sides 256..2048 px on 2048² and 8192² canvases, one DPS step = UNet forward, decode φ,
render the box, score it with the offline scorer, backward to x_t. "ours" renders the box on a
224² grid (``Pipeline.render_box``); "baseline" renders the box's whole region at canvas
resolution and resizes it to 224² (``guidance.render_box_fixed_resolution``), as a
fixed-resolution model must. Each case runs in a fresh subprocess; memory is its peak RSS during the timed
steps minus its RSS before them (VmHWM reset through /proc/self/clear_refs). Prints a table and the baseline/ours ratios.

    python bench/guidance.py [--config cpu] [--sides 256 512 1024 2048] [--canvases 2048 8192]
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

from common import header, parse, pipeline
from infd_core.geometry import Box
from infd_core.guidance import SCORE_SIZE, render_box_fixed_resolution
from infd_core.scorers import OfflineScorer


def status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB (Linux)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def child(args) -> None:
    pipe = pipeline(args)
    scorer = OfflineScorer()
    target = scorer.encode_prompt("a volcano")
    box = Box(0.0, 0.0, args.side / args.canvas, args.side / args.canvas)
    x = torch.randn(1, *pipe.latent_shape)
    t = torch.full((1,), 500)

    def step() -> None:
        x_t = x.clone().requires_grad_(True)
        eps = pipe.unet(x_t, t).sample
        fld = pipe.field(pipe.cfg.diffusion.denormalize(x_t - eps), grad=True)  # a rough x̂0: cost, not quality
        crop = (pipe.render_box(fld, box, SCORE_SIZE) if args.mode == "ours"
                else render_box_fixed_resolution(pipe, fld, box, args.canvas, SCORE_SIZE))
        (grad,) = torch.autograd.grad(scorer.score(crop, [target]).sum(), x_t)
        assert torch.isfinite(grad).all()

    step()  # warm-up
    before = status_mb("VmRSS")
    reset_peak()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": sorted(times)[len(times) // 2], "peak_mb": status_mb("VmHWM"), "loaded_mb": before}))


def main() -> None:
    args = parse(__doc__.splitlines()[0], lambda ap: (
        ap.add_argument("--sides", type=int, nargs="+", default=[256, 512, 1024, 2048]),
        ap.add_argument("--canvases", type=int, nargs="+", default=[2048, 8192]),
        ap.add_argument("--child", action="store_true"), ap.add_argument("--mode"),
        ap.add_argument("--side", type=int), ap.add_argument("--canvas", type=int)))
    if args.child:
        return child(args)
    args.reps = min(args.reps, 3)
    header(args, "guided step per box")
    print("| canvas | box side | ours s | baseline s | time ratio | ours MB | baseline MB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for canvas in args.canvases:
        for side in (s for s in args.sides if s <= canvas):
            res = {}
            for mode in ("ours", "baseline"):  # interleaved, so load changes hit both alike
                cmd = [sys.executable, __file__, "--child", "--config", args.config, "--precision", args.precision,
                       "--reps", str(args.reps), "--mode", mode, "--side", str(side), "--canvas", str(canvas)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(out.stderr[-2000:])
                res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            o, b = res["ours"], res["baseline"]
            om, bm = o["peak_mb"] - o["loaded_mb"], b["peak_mb"] - b["loaded_mb"]
            print(f"| {canvas} | {side} | {o['seconds']:.2f} | {b['seconds']:.2f} | {b['seconds'] / o['seconds']:.1f}x "
                  f"| {om:.0f} | {bm:.0f} | {bm / max(om, 1):.1f}x |", flush=True)


if __name__ == "__main__":
    main()
