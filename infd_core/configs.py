"""Model configurations: the paper's sizes (appendix H) and an interactive CPU size.

A :class:`ModelConfig` is what ``config.json`` of a model folder holds. Parameter counts of
the presets (``python -m infd_core info --preset paper``) are compared with the counts of
the authors' released FFHQ checkpoint by ``bench/params.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .autoencoder import AutoencoderConfig, CoderConfig
from .diffusion import DiffusionConfig, unet_kwargs
from .renderers import RendererConfig

FORMAT = "infd-model"
VERSION = 1


@dataclass
class ModelConfig:
    name: str = "infd"
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    diffusion: DiffusionConfig | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.autoencoder, dict):
            self.autoencoder = AutoencoderConfig(**self.autoencoder)
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig(**self.diffusion)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelConfig":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not an infd model config (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported infd model config version {data.get('version')!r} (this code reads {VERSION})")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def paper() -> ModelConfig:
    """Appendix H: LDM encoder/decoder base 128 (1,2,4), CLIF width 256 with GroupNorm, VQ 8192x3,
    ADM UNet 224 (1,2,3,4), 2 blocks, attention at 32/16/8, 32 channels per head."""
    coder = CoderConfig(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, mid_attn=True)
    ae = AutoencoderConfig(encoder=coder, decoder=dataclasses.replace(coder),
                           renderer=RendererConfig("clif", width=256, blocks=2, norm="group"),
                           regularizer="vq", n_embed=8192)
    dm = DiffusionConfig(unet=unet_kwargs(224, (1, 2, 3, 4), 2, attn_levels=(1, 2, 3)))
    return ModelConfig(name="paper", autoencoder=ae, diffusion=dm)


def cpu() -> ModelConfig:
    """Interactive on 2 CPU cores and trainable on them: encoder/decoder base 16 (1,2,4) without attention
    (phi has 16 channels), tile-exact CLIF (no norm) width 32 with 2 blocks, KL latent (no codebook
    to collapse in a short CPU run) whose mean is a 4x4 thumbnail plus a learned residual
    (``thumbnail_skip``: colours right from step 0, trains in CPU-minutes); the renderer predicts a
    residual over bilinear phi[:3] (``base``: it starts as a smooth upsampler of the thumbnail).
    UNet 64 (1,2,2,2) (6.3M), 1 block, attention at 16^2 and 8^2, predicting v (a short run of an
    ε-model drifts to saturated colours: see :class:`DiffusionConfig`), sampling with DDIM η = 0."""
    coder = CoderConfig(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, mid_attn=False)
    ae = AutoencoderConfig(encoder=coder, decoder=dataclasses.replace(coder),
                           renderer=RendererConfig("clif", width=32, blocks=2, norm="none", base="bilinear"),
                           regularizer="kl", kl_weight=1e-6, thumbnail_skip=True)
    dm = DiffusionConfig(unet=unet_kwargs(64, (1, 2, 2, 2), 1, attn_levels=(2, 3)), prediction="v", eta=0.0)
    return ModelConfig(name="cpu", autoencoder=ae, diffusion=dm)


def cpu2() -> ModelConfig:
    """The CPU family, version 2: :func:`cpu`'s encoder, latent and UNet (a v1 model's encoder and
    UNet carry over), with the capacity spent where it is cheap. The decoder runs once per image,
    so it grows 5x: widths 128 at 64^2, 64 at 128^2, 16 at 256^2, 3 ResNet blocks per level.
    The renderer runs per pixel, so it keeps v1's width, depth and 16 phi channels (each phi
    channel costs every pixel, in the interpolation and the first conv), and reads phi
    interpolated bilinearly instead of the nearest phi vector (``features="bilinear"``: no cell
    grid when zoomed far in)."""
    v1 = cpu()
    ae = dataclasses.replace(v1.autoencoder,
                             decoder=CoderConfig(ch=16, ch_mult=(1, 4, 8), num_res_blocks=2, mid_attn=False),
                             renderer=dataclasses.replace(v1.autoencoder.renderer, features="bilinear"))
    return ModelConfig(name="cpu2", autoencoder=ae, diffusion=v1.diffusion)


def cpu3() -> ModelConfig:
    """The CPU family, version 3: :func:`cpu2` with a top decoder level twice as wide (32 channels
    at 256^2, where the finest detail of phi is made) projected to the same 16 phi channels
    (``phi_channels``): the decoder costs about twice as much, tiles cost the same."""
    v2 = cpu2()
    ae = dataclasses.replace(v2.autoencoder, phi_channels=16,
                             decoder=dataclasses.replace(v2.autoencoder.decoder, ch_mult=(2, 4, 8)))
    return ModelConfig(name="cpu3", autoencoder=ae, diffusion=v2.diffusion)


PRESETS = {"paper": paper, "cpu": cpu, "cpu2": cpu2, "cpu3": cpu3}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
