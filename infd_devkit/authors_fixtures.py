"""Golden fixtures of the authors' code: two small authors'-format models and what their code computes.

``tools/make_authors_fixtures.py`` built them once with the authors' own code (a checkout of
github.com/yinboc/infd outside this repository; the commit is in each fixture's metadata). A
fixture stores no weights: the model's ``args`` and the names and shapes of its state dict, from
which :func:`random_weights` regenerates the exact weights (a seeded generator; the SHA-256 of
the weights is stored to prove it). Large outputs (phi, renders) are stored as a fixed sample of
their elements plus per-channel means and one crop across a patch seam, to stay small.

Both sizes are non-paper sizes on purpose: base 32 with ch_mult (1, 2, 2, 4) (a 32² latent,
layers narrower than 128 channels) and base 64 with (2, 2, 4).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "authors"
SAMPLES = 4096  # elements kept of each large tensor
CROP = (slice(None), slice(None), slice(240, 272), slice(240, 272))  # across the 256-px patch seam


def _coder(ch: int, mult: list[int]) -> dict[str, Any]:
    return {"name": "encoder_vqf4", "args": {"ch": ch, "ch_mult": mult, "num_res_blocks": 1}}


def _spec(ch: int, mult: list[int], width: int, latent: int, unet: dict[str, Any]) -> dict[str, Any]:
    """INFDBase arguments (the authors' model spec) of one fixture model."""
    return {"encoder": _coder(ch, mult), "decoder": {"name": "decoder_vqf4", "args": _coder(ch, mult)["args"]},
            "z_shape": [3, latent, latent], "quantizer": True, "n_embed": 64,
            "renderer": {"name": "renderer_concat_wrapper",
                         "args": {"z_dec_channels": ch * mult[0],
                                  "net": {"name": "simple_renderer_net", "args": {"hidden_channels": width}}}},
            "z_dm": {"name": "openai_unet", "args": unet},
            "z_dp": {"linear_beta_start": 0.0015, "linear_beta_end": 0.0195}}


SPECS: dict[str, dict[str, Any]] = {
    # 2 heads of 16 channels at 32 wide, 4 at 64: exercises ADM's legacy qkv order
    "base32": _spec(32, [1, 2, 2, 4], 32, 32, {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                                               "attention_resolutions": [2], "num_head_channels": 16}),
    # scale-shift norm, attention at two levels, 2 blocks per level
    "base64": _spec(64, [2, 2, 4], 64, 64, {"model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 2,
                                            "attention_resolutions": [2, 4], "num_head_channels": 32,
                                            "use_scale_shift_norm": True}),
}


def random_weights(keys: list[tuple[str, list[int]]], seed: int) -> dict[str, Tensor]:
    """Deterministic weights for the state-dict ``keys`` (in order): unit-variance activations
    for weights, GroupNorm scales near 1, small biases, a unit-normal codebook."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    for name, shape in keys:
        x = torch.randn(shape, generator=g)
        if name == "quantizer.embedding.weight":
            sd[name] = x
        elif len(shape) > 1:
            sd[name] = x / torch.tensor(shape[1:]).prod().float().sqrt()
        elif "norm" in name and name.endswith(".weight"):
            sd[name] = 1 + 0.1 * x
        else:
            sd[name] = 0.1 * x
    return sd


def weights_sha256(sd: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def sample_indices(numel: int, seed: int = 0) -> Tensor:
    """The flat indices kept of a tensor with ``numel`` elements."""
    return torch.randperm(numel, generator=torch.Generator().manual_seed(seed))[:min(SAMPLES, numel)]


def summarize(name: str, x: Tensor, crop: bool = False) -> dict[str, Tensor]:
    """What a fixture keeps of a large ``[B, C, H, W]`` tensor."""
    out = {f"{name}.samples": x.flatten()[sample_indices(x.numel())].contiguous(),
           f"{name}.channel_means": x.double().mean(dim=(0, 2, 3)).contiguous()}
    if crop:
        out[f"{name}.crop"] = x[CROP].contiguous()
    return out


def load(name: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A fixture's tensors and metadata (``spec``, ``keys``, ``seed``, ``sha256``, ``authors_commit``, ...)."""
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return tensors, meta


def test_image() -> Tensor:
    """The encoder's input: ``[1, 3, 256, 256]`` in [-1, 1]."""
    return torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_latent(sd: dict[str, Tensor], side: int) -> Tensor:
    """A latent ``[1, 3, side, side]`` a little off the codebook: every implementation quantises it alike."""
    g = torch.Generator().manual_seed(2)
    codes = sd["quantizer.embedding.weight"]
    z = codes[torch.randint(0, codes.shape[0], (side * side,), generator=g)].view(1, side, side, -1).permute(0, 3, 1, 2)
    return (z + 1e-3 * torch.randn(z.shape, generator=g)).contiguous()


def unet_inputs(side: int) -> tuple[Tensor, Tensor]:
    """A UNet batch: ``x [2, 3, side, side]`` and timesteps ``[2]``."""
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(3))
    return x, torch.tensor([500, 999])


DDIM_SEED = 4  # torch.manual_seed before the authors' loop; its draws: x_T, then one noise per step
