"""Cost of one guided step: INFD's per-box 224² render vs the fixed-resolution way (paper §5.5).

For box sides 256..2048 px on 2048² and 8192² canvases, one DPS step = UNet forward, decode φ,
render the box, score it with the offline scorer, backward to x_t. "ours" renders the box on a
224² grid (``Pipeline.render_box``); "baseline" renders the box's whole region at canvas
resolution and resizes it to 224² (``guidance.render_box_fixed_resolution``), as a
fixed-resolution model must. Each case runs in a fresh subprocess; memory is its peak RSS during the timed
steps minus its RSS before them (VmHWM reset through /proc/self/clear_refs). Prints a table and the baseline/ours ratios.

    python bench/guidance.py [--config cpu] [--sides 256 512 1024 2048] [--canvases 2048 8192]

``--runs``: whole runs on the embedded model in one process instead, next to the unguided run: where
a guided step's time goes (a profile of its parts), then the app's edits (a text box, colour +
keep boxes, a sketch box on a current picture; a text box on a new one), each the plain way (every
step, DPS on each) and the app's (``guidance.EDIT``, ``EVERY``, ``EVERY_FRESH``), 50 steps at the
app's strength 0.2, with the scorer's and the judge's gains.

    python bench/guidance.py --runs [--model DIR]
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

from infd_bench import header, median_time, parse, pipeline, reset_peak, status_mb
from infd_core.geometry import Box
from infd_core.guidance import SCORE_SIZE, render_box_fixed_resolution
from infd_core.scorers import OfflineScorer


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


def profile_step(pipe, scorer, region) -> dict[str, float]:
    """Median seconds of the parts of one guided step (and of the whole) on ``pipe``."""
    from infd_core.diffusion import predict_x0, unet_eps
    from infd_core.guidance import Objective, prepare
    from infd_core.regions import Layout
    from infd_core.pipeline import Field

    (cond,) = prepare(pipe, Layout((region,)), scorer=scorer)
    d, x, t = pipe.cfg.diffusion, torch.randn(1, *pipe.latent_shape), torch.full((1,), 500)
    eps = unet_eps(pipe.unet, d, pipe.precision.dtype("unet"))
    z = d.denormalize(x)
    fld = pipe.field(z)
    crop = pipe.render_box(fld, region.box, SCORE_SIZE).detach()

    def grad_of(fn, v):  # the timer runs without gradients: they are asked for here
        with torch.enable_grad():
            v = v.detach().clone().requires_grad_()
            fn(v).sum().backward()

    def unet_forward():
        with torch.no_grad():
            eps(x, t)

    def whole():
        with torch.enable_grad():
            x_t = x.clone().requires_grad_()
            x0 = d.denormalize(predict_x0(x_t, eps(x_t, t), torch.tensor(0.5)))
            torch.autograd.grad(Objective(pipe, [cond]).losses(pipe.field(x0, grad=True)).sum(), x_t)

    parts = {
        "UNet forward": unet_forward,
        "UNet forward + backward": lambda: grad_of(lambda v: eps(v, t), x),
        "decoder (whole latent) forward + backward": lambda: grad_of(lambda v: pipe.field(v, grad=True).phi, z),
        f"box render {SCORE_SIZE}² forward + backward": lambda: grad_of(
            lambda p: pipe.render_box(Field(p, fld.norm_stats), region.box, SCORE_SIZE), fld.phi),
        f"scorer on {type(cond.region.spec).cutouts} cutouts forward + backward": lambda: grad_of(
            lambda c: cond.loss(c.clamp(-1, 1)).reshape(1), crop),
        "a whole guided step": whole,
    }
    return {name: median_time(fn, 5) for name, fn in parts.items()}


def runs(args) -> None:
    """``--runs``: see the module docstring."""
    import numpy as np

    from infd_core import compositions, guidance
    from infd_core.regions import Layout, Region
    from infd_core.pipeline import Pipeline
    from infd_core.scorers import load_scorer

    pipe = Pipeline.load(args.model)
    scorer = load_scorer(None, device=pipe.device)
    text = Region(Box(0.3, 0.3, 0.6, 0.6), "text", "a red apple")
    print(f"# guided runs: model={pipe.cfg.name} precision={pipe.describe()['precision']} "
          f"threads={torch.get_num_threads()}\n\n| part of a guided step | ms |\n|---|---:|")
    for name, s in profile_step(pipe, scorer, text).items():
        print(f"| {name} | {s * 1000:.0f} |", flush=True)
    pictures = [pipe.sample(100 + i, steps=50) for i in range(args.pictures)]
    sketch = compositions.example("lake")
    edits = {
        "text box": Layout((text,)),
        "colour + keep boxes": Layout((Region(Box(0.6, 0.1, 0.95, 0.45), "color", color=(0, 0, 1)),
                                       Region(Box(0, 0, 0.5, 1), "keep"))),
        "sketch box": Layout((Region(Box(0.5, 0.5, 1, 1), "sketch", image=np.asarray(sketch)),)),
    }

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    unguided = [timed(lambda: pipe.sample(i, steps=50))[0] for i in range(args.pictures)]
    base = sorted(unguided)[len(unguided) // 2]
    print(f"\n| run (50 steps, strength 0.2) | way | median s | × unguided | scorer gain | judge gain |\n"
          f"|---|---|---:|---:|---:|---:|\n| unguided | | {base:.2f} | 1.0 | | |")
    ways = {"plain": dict(edit=1.0, every=1), "app": dict(edit=guidance.EDIT, every=guidance.EVERY)}
    cases = [(name, layout, True) for name, layout in edits.items()] + [("text box, new picture", Layout((text,)), False)]
    for name, layout, on_picture in cases:
        for way, kw in ways.items():
            if not on_picture:
                kw = dict(every=1 if way == "plain" else guidance.EVERY_FRESH)
            seconds, gains = [], []
            for i, init in enumerate(pictures):
                s, (_, rep) = timed(lambda: guidance.guided_sample(
                    pipe, layout, seed=i, steps=50, scale=0.2, scorer=scorer if layout.needs_scorer else None,
                    init_latent=init if on_picture else None, **kw))
                seconds.append(s)
                r = rep["regions"][0]
                if "score" in r and "before" in r:
                    gains.append((r["score"] - r["before"]["score"], r["judge"] - r["before"]["judge"]))
            med = sorted(seconds)[len(seconds) // 2]
            g = (f"{np.mean([a for a, _ in gains]):.2f} | {np.mean([b for _, b in gains]):.2f}" if gains else " | ")
            print(f"| {name} | {way} | {med:.2f} | {med / base:.1f} | {g} |", flush=True)


def main() -> None:
    args = parse(__doc__.splitlines()[0], lambda ap: (
        ap.add_argument("--sides", type=int, nargs="+", default=[256, 512, 1024, 2048]),
        ap.add_argument("--canvases", type=int, nargs="+", default=[2048, 8192]),
        ap.add_argument("--child", action="store_true"), ap.add_argument("--mode"),
        ap.add_argument("--side", type=int), ap.add_argument("--canvas", type=int),
        ap.add_argument("--runs", action="store_true"), ap.add_argument("--model", default=None),
        ap.add_argument("--pictures", type=int, default=4, help="--runs: pictures (seeds) per case")))
    if args.child:
        return child(args)
    if args.runs:
        return runs(args)
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
