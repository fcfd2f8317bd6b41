"""Parameter counts of both presets, compared with the authors' released FFHQ model.

Modules are built on the meta device: counting is instant and allocates nothing.
``--config``/``--precision`` are accepted for a uniform command line; both presets are printed.
"""
from __future__ import annotations

import torch
from torch import nn

from infd_bench import header, model_config, parse
from infd_core.autoencoder import Autoencoder
from infd_core.diffusion import build_unet

AUTHORS = {"encoder": 22.3e6, "decoder": 33.0e6, "renderer": 2.67e6, "unet": 274e6}  # their released FFHQ checkpoint


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def counts(name: str) -> dict[str, int]:
    cfg = model_config(name)
    with torch.device("meta"):
        ae = Autoencoder(cfg.autoencoder)
        unet = build_unet(cfg.diffusion)
    return {"encoder": count(ae.encoder), "decoder": count(ae.decoder), "renderer": count(ae.renderer),
            "quantizer": count(ae.quantizer), "unet": count(unet)}


def main() -> None:
    args = parse(__doc__)
    header(args, "parameter counts")
    table = {name: counts(name) for name in ("paper", "cpu")}
    print(f"{'module':<10} {'authors':>10} {'paper':>10} {'paper/authors':>14} {'cpu':>10}")
    for part in ("encoder", "decoder", "renderer", "quantizer", "unet"):
        ref = AUTHORS.get(part)
        ratio = f"{table['paper'][part] / ref:.3f}" if ref else "-"
        ref_s = f"{ref / 1e6:.2f}M" if ref else "-"
        print(f"{part:<10} {ref_s:>10} {table['paper'][part] / 1e6:>9.2f}M {ratio:>14} {table['cpu'][part] / 1e6:>9.3f}M")
    for name in ("paper", "cpu"):
        print(f"total {name}: {sum(table[name].values()) / 1e6:.1f}M")


if __name__ == "__main__":
    main()
