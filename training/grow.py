"""Grow a trained autoencoder into a wider and deeper one that starts out computing the same phi.

A larger decoder trained from scratch for the few thousand steps 2 CPU cores allow ends far
below the small model it should replace (measured: 18.6 dB vs 21.4 dB at 256^2 after 900
steps). Growing instead keeps everything the small model learned and adds capacity that
starts silent (the Net2Net idea, with zeros instead of copies):

* a parameter both models have is copied into the leading slice of the larger one;
* a conv's weights from *new* input channels to *old* output channels are zero, so new
  channels do not reach old ones yet; new output channels keep their fresh initialisation, so
  they carry signal from the start, and the zero weights that would pass it on to old channels
  get non-zero gradients at once: the first update connects them;
* a ResNet block only the larger model has starts as the identity (its ``conv2`` is zero);
* GroupNorm must keep its channels per group, so appended channels form groups of their own
  and the old groups' statistics are unchanged;
* a top level that grows wider than phi gets a 1x1 projection to phi
  (``AutoencoderConfig.phi_channels``) that starts by passing the old channels through.

Hence ``big.features(z) == small.features(z)`` (same phi channels) up to float rounding.

The renderer may switch from the nearest phi vector to bilinear phi features
(:class:`~infd_core.renderers.RendererConfig` ``features``): its first conv keeps the weights
of phi and of the relative cell and drops those of the relative coordinate. At phi cell
centres (a render at phi's own resolution) the relative coordinate is 0 and the two inputs are
equal, so the grown renderer reproduces the small one there; between centres it interpolates
instead of jumping at cell edges, which is the point of the switch.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from infd_core.autoencoder import Autoencoder, ResnetBlock
from infd_core.renderers import without_relative_coord


def _paste(dst: Tensor, src: Tensor, name: str) -> None:
    """Copy ``src`` into the leading slice of ``dst``; weights from new inputs to old outputs become 0."""
    if dst.ndim != src.ndim or any(d < s for d, s in zip(dst.shape, src.shape)):
        raise ValueError(f"{name}: cannot grow {tuple(src.shape)} into {tuple(dst.shape)}")
    if dst.ndim == 4 and dst.shape[1] > src.shape[1]:  # conv weight [out, in, kh, kw] that gains inputs
        dst[:src.shape[0], src.shape[1]:] = 0
    dst[tuple(slice(0, s) for s in src.shape)] = src


def _check_groups(small: nn.Module, big: nn.Module) -> None:
    small_norms = {n: m for n, m in small.named_modules() if isinstance(m, nn.GroupNorm)}
    for name, m in big.named_modules():
        if isinstance(m, nn.GroupNorm) and name in small_norms:
            s = small_norms[name]
            if s.num_channels // s.num_groups != m.num_channels // m.num_groups:
                raise ValueError(f"{name}: GroupNorm channels per group change from {s.num_channels // s.num_groups} "
                                 f"to {m.num_channels // m.num_groups}; the old groups' statistics would change")


def _renderer_state(small: Autoencoder, big: Autoencoder) -> dict[str, Tensor]:
    """The small renderer's weights, the first conv's inputs rearranged for the big renderer's features."""
    state = dict(small.renderer.state_dict())
    old, new = small.cfg.renderer, big.cfg.renderer
    if (old.kind, old.width, old.blocks, old.norm, old.base) != (new.kind, new.width, new.blocks, new.norm, new.base):
        raise ValueError(f"the renderer can only change its features when growing: {old} vs {new}")
    if old.features == new.features:
        return state
    if (old.features, new.features) != ("nearest", "bilinear"):
        raise ValueError(f"cannot grow a renderer from {old.features!r} to {new.features!r} features")
    first = next(n for n, m in small.renderer.named_modules() if m is small.renderer.first_layer) + ".weight"
    state[first] = without_relative_coord(state[first])
    return state


@torch.no_grad()
def grow_autoencoder(small: Autoencoder, big: Autoencoder) -> dict[str, Any]:
    """Load ``small``'s weights into ``big`` so that ``big`` computes ``small``'s phi (see the module docstring).

    The encoders must be identical (the latents, hence a diffusion model trained on them, stay
    valid) and phi keeps its channel count. Returns a summary for the model's ``meta``.
    """
    if small.cfg.encoder != big.cfg.encoder or small.cfg.z_channels != big.cfg.z_channels:
        raise ValueError("growing keeps the encoder: both models need the same encoder and latent channels")
    if small.phi_channels != big.phi_channels:
        raise ValueError(f"phi channels must stay {small.phi_channels}, got {big.phi_channels}")
    _check_groups(small, big)
    big_params = dict(big.named_parameters())
    new_names = []
    for module_name in ("encoder", "quantizer", "decoder", "skip"):
        if not hasattr(small, module_name):
            continue
        for name, src in getattr(small, module_name).state_dict().items():
            key = f"{module_name}.{name}"
            if key not in big_params:
                raise ValueError(f"{key} of the small model has no counterpart in the large one")
            _paste(big_params[key].data, src, key)
    for name, src in _renderer_state(small, big).items():
        _paste(big_params[f"renderer.{name}"].data, src, f"renderer.{name}")
    small_names = set(dict(small.named_parameters()))
    if len(big.decoder) > len(small.decoder):  # a new projection to phi: it passes the old top level's channels on
        project = big.decoder[-1]
        project.weight.zero_()
        project.bias.zero_()
        project.weight[:, :small.phi_channels, 0, 0] = torch.eye(small.phi_channels)
        new_names.append(f"decoder.{len(big.decoder) - 1}")
    for name, module in big.decoder.named_modules():
        if isinstance(module, ResnetBlock) and f"decoder.{name}.conv1.weight" not in small_names:
            if module.nin_shortcut is not None:
                raise ValueError(f"decoder.{name}: a new block that changes width cannot start as the identity")
            module.conv2.weight.zero_()
            module.conv2.bias.zero_()
            new_names.append(f"decoder.{name}")
    small_count = sum(p.numel() for p in small.decoder.parameters())
    big_count = sum(p.numel() for p in big.decoder.parameters())
    return {"decoder_params": [small_count, big_count], "new_blocks": new_names,
            "renderer_features": [small.cfg.renderer.features, big.cfg.renderer.features]}
