"""Latent diffusion cost: one UNet step (batch 1, 3x64x64) and a 50-step DDIM run (eta 1)."""
from __future__ import annotations

import argparse

import torch

from infd_bench import header, median_time, parse, pipeline
from infd_core.diffusion import unet_eps


def main() -> None:
    def extra(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--steps", type=int, default=50)

    args = parse(__doc__, extra)
    header(args, "sampling")
    pipe = pipeline(args)
    print(f"UNet {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f}M params")
    eps = unet_eps(pipe.unet, pipe.cfg.diffusion, pipe.precision.dtype("unet"))
    x, t = torch.randn(1, *pipe.latent_shape), torch.tensor([500])
    print(f"UNet step: median {median_time(lambda: eps(x, t), args.reps) * 1e3:.0f} ms over {args.reps}")
    runs = 3 if args.config == "cpu" else 1
    total = median_time(lambda: pipe.sample(seed=0, steps=args.steps), runs, warmup=0)
    print(f"{args.steps}-step DDIM (eta 1): {total:.2f} s (median of {runs}; {total / args.steps * 1e3:.0f} ms/step)")


if __name__ == "__main__":
    main()
