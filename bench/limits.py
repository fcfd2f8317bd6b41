"""How far each part is from what this machine can do: achieved GFLOP/s against a peak measured
in the same run, in fp32 and in bf16.

For each part (the decoder on one latent, the renderer on one 256² tile, one UNet step) the
FLOPs of one call are counted with ``torch.utils.flop_counter`` (convolutions and matrix
products, 2 per multiply-add), the call is timed, and the rate is divided by two peaks measured
just before: a large matmul (the machine's best case) and a 3×3 convolution of the part's own
typical width (what a conv net can hope for). ``python bench/limits.py [--config cpu|paper]``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from infd_bench import header, latent, median_time, parse, pipeline
from infd_core.diffusion import unet_eps
from infd_core.geometry import PixelRange
from infd_core.pipeline import Pipeline
from infd_core.precision import Precision


def flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return counter.get_total_flops()


def amp(dtype: torch.dtype | None):
    return torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)


def matmul_peak(dtype: torch.dtype | None, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n×n matmul (bf16 inputs when ``dtype`` is bf16)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    if dtype is not None:
        a, b = a.to(dtype), b.to(dtype)
    return 2 * n ** 3 / median_time(lambda: a @ b, reps) / 1e9


def conv_peak(dtype: torch.dtype | None, channels: int, side: int = 128, reps: int = 5) -> float:
    """GFLOP/s of a 3×3, ``channels``→``channels`` convolution on a ``side``² map (channels-last for bf16)."""
    x = torch.randn(1, channels, side, side)
    w = torch.randn(channels, channels, 3, 3)
    if dtype is not None:
        x, w = (t.to(dtype).contiguous(memory_format=torch.channels_last) for t in (x, w))
    work = 2 * channels * channels * 9 * side * side
    return work / median_time(lambda: F.conv2d(x, w, padding=1), reps) / 1e9


def parts(pipe: Pipeline) -> dict[str, Callable[[], object]]:
    """One call of each part, in the pipeline's precision."""
    z = latent()
    field = pipe.field(z)
    tile = PixelRange(1024, 1280, 1024, 1280)
    out = {"decoder": lambda: pipe.field(z),
           "renderer (256² tile)": lambda: pipe.render_tensor(field, 2048, 2048, tile)}
    if pipe.unet is not None:
        eps = unet_eps(pipe.unet, pipe.cfg.diffusion, pipe.precision.dtype("unet"))
        x, t = torch.randn(1, *pipe.latent_shape), torch.full((1,), 500)
        out["UNet step"] = lambda: eps(x, t)
    return out


def main() -> None:
    args = parse(__doc__)
    header(args, "limits")
    rows = []
    for choice in ("fp32", "bf16"):
        args.precision = choice
        pipe = pipeline(args)
        widths = {"decoder": pipe.cfg.autoencoder.decoder.ch * max(pipe.cfg.autoencoder.decoder.ch_mult),
                  "renderer (256² tile)": pipe.cfg.autoencoder.renderer.width,
                  "UNet step": max(pipe.cfg.diffusion.unet["block_out_channels"])}
        dtype = Precision.uniform(choice).dtype("unet")
        mm = matmul_peak(dtype)
        for name, fn in parts(pipe).items():
            work = flops(fn)
            seconds = median_time(fn, args.reps)
            conv = conv_peak(dtype, widths[name])
            rate = work / seconds / 1e9
            rows.append((choice, name, work / 1e9, seconds * 1e3, rate, mm, conv))
    print(f"{'precision':9s} {'part':22s} {'GFLOP':>8s} {'ms':>8s} {'GFLOP/s':>8s} {'matmul peak':>12s} "
          f"{'of it':>6s} {'conv peak':>10s} {'of it':>6s}")
    for choice, name, gflop, ms, rate, mm, conv in rows:
        print(f"{choice:9s} {name:22s} {gflop:8.3f} {ms:8.1f} {rate:8.1f} {mm:12.0f} {rate / mm:6.1%} "
              f"{conv:10.0f} {rate / conv:6.1%}")


if __name__ == "__main__":
    main()
