"""The authors' FFHQ model at paper size: a 256² tile, a 2048² render (both render modes), one UNet
step and a 200-step DDIM sample with their sampler.

    python bench/authors.py --device cpu      # capped: times a few tiles / UNet steps and extrapolates
    python bench/authors.py --device cuda     # everything for real

The model is the ``paper`` preset with the knobs ``import-authors`` sets (32 GroupNorm groups,
``grid_sample`` cell ties, leading timesteps with a final x0 step, 200 steps, η = 1) and random
weights (weights do not change the cost). On a CPU a 2048² render of the width-256 renderer and
200 steps of the 274M-parameter UNet take many minutes, so ``--tiles`` and ``--unet-steps``
default to a few there; whatever is extrapolated is printed as such.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from infd_bench import median_time
from infd_core import configs
from infd_core.diffusion import unet_eps
from infd_core.geometry import PixelRange
from infd_core.pipeline import Pipeline
from infd_core.tiling import iter_authors_patches, tile_ranges


def authors_paper_config() -> configs.ModelConfig:
    """The ``paper`` preset as ``import-authors`` configures the authors' FFHQ checkpoint."""
    cfg = configs.paper()
    ae = cfg.autoencoder
    ae.encoder = dataclasses.replace(ae.encoder, norm_groups=32)
    ae.decoder = dataclasses.replace(ae.decoder, norm_groups=32)
    ae.renderer = dataclasses.replace(ae.renderer, cell_ties="grid_sample")
    cfg.diffusion = dataclasses.replace(cfg.diffusion, steps=200, eta=1.0, timestep_spacing="leading",
                                        set_alpha_to_one=True)
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--tiles", type=int, default=None, help="2048² tiles to time, fewer than 8 to extrapolate (default: all 64 on cuda, 2 on cpu)")
    ap.add_argument("--unet-steps", type=int, default=None, help="UNet steps to time (default: 200 on cuda, 2 on cpu)")
    args = ap.parse_args()
    pipe = Pipeline.from_config(authors_paper_config(), device=args.device, precision=args.precision)
    dev, cpu = pipe.device, pipe.device.type == "cpu"
    tiles = args.tiles or (2 if cpu else 64)
    unet_steps = args.unet_steps or (2 if cpu else 200)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# authors' paper-size model: device={dev} precision={args.precision} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} load average={load}")
    n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"params: encoder {n(pipe.autoencoder.encoder):.1f}M, decoder {n(pipe.autoencoder.decoder):.1f}M, "
          f"renderer {n(pipe.autoencoder.renderer):.2f}M, UNet {n(pipe.unet):.0f}M")

    z = torch.randn(1, *pipe.latent_shape, generator=torch.Generator().manual_seed(0)).to(dev)
    field = pipe.field(z)
    print(f"decode z -> phi (once per image): {timed(lambda: pipe.field(z), dev):.2f} s")
    tile = median_time(lambda: (pipe.render(field, 2048, 2048, PixelRange(0, 256, 0, 256)), sync(dev)), 1 if cpu else 10)
    print(f"256² tile of a 2048² level (fixed statistics): median {tile * 1e3:.0f} ms")

    grid = list(tile_ranges(PixelRange(0, 2048, 0, 2048), 256))
    part = PixelRange(0, 256, 0, 256 * tiles) if tiles < 8 else None  # the first tiles of the top row
    measured = tiles if part is not None else len(grid)
    whole = timed(lambda: pipe.render(field, 2048, 2048, part), dev) * len(grid) / measured
    note = "" if measured == len(grid) else f" (extrapolated from {measured} of {len(grid)} tiles)"
    print(f"2048² render, fixed statistics: {whole:.1f} s{note}")
    patches = iter(iter_authors_patches(pipe.autoencoder.renderer, field.phi, 2048, 2048, part,
                                        autocast_dtype=pipe.precision.dtype("renderer"),
                                        channels_last=pipe.precision.renderer == "bf16"))
    patchwise = timed(lambda: [None for _ in patches], dev) * len(grid) / measured
    print(f"2048² render, authors-patchwise: {patchwise:.1f} s{note}")

    eps = unet_eps(pipe.unet, pipe.cfg.diffusion, pipe.precision.dtype("unet"))
    x, t = torch.randn(1, *pipe.latent_shape).to(dev), torch.tensor([500], device=dev)
    timed(lambda: eps(x, t), dev)  # warm-up
    step = timed(lambda: [eps(x, t) for _ in range(unet_steps)], dev) / unet_steps
    print(f"UNet step: {step * 1e3:.0f} ms (mean of {unet_steps})")
    if unet_steps >= 200:
        total = timed(lambda: pipe.sample(seed=0), dev)
        print(f"200-step DDIM (the authors' sampler, eta 1): {total:.1f} s")
    else:
        print(f"200-step DDIM (the authors' sampler, eta 1): ~{200 * step:.0f} s (extrapolated: 200 x the UNet step)")


if __name__ == "__main__":
    main()
