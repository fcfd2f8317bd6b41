"""Image-vs-prompt scorers for layout-to-image guidance (DPS), and :func:`load_scorer` to pick one.

>>> scorer = load_scorer("offline")          # or "auto", "clip:ViT-B-32:/path/weights.pt"
>>> target = scorer.encode_prompt("a cat")   # once per prompt; target.explain() for the user
>>> scores = scorer.score(crops, [target])   # crops [B, 3, 224, 224] in [-1, 1] -> [B], differentiable

``base`` defines what a scorer is; ``offline`` and ``clip`` are the two kinds (each imports its
heavy dependencies only when built).
"""
from __future__ import annotations

import os

import torch

from .base import PromptTarget, Scorer
from .clip import ClipScorer
from .offline import OfflineScorer

CLIP_WEIGHTS_ENV = "INFD_CLIP_WEIGHTS"  # local open_clip weights file used by the "auto" spec
CLIP_ARCH_ENV = "INFD_CLIP_ARCH"  # its open_clip architecture, e.g. "ViT-B-32"


def load_scorer(spec: str | None = None, device: str | torch.device = "cpu") -> Scorer:
    """Build a scorer from a spec string.

    * ``None`` or ``"auto"``: CLIP if ``$INFD_CLIP_WEIGHTS`` names a local open_clip weights
      file (architecture in ``$INFD_CLIP_ARCH``), otherwise the offline scorer;
    * ``"offline"``: EfficientNet-Lite0 ImageNet classifier + MiniLM prompt mapping (no download);
    * ``"clip:ARCH:PRETRAINED"``: open_clip architecture ``ARCH`` with ``PRETRAINED`` either a
      local weights file or an open_clip tag such as ``openai`` (tags download: online only).

    Raises ValueError for a malformed or unknown spec, FileNotFoundError for a missing file.
    """
    spec = "auto" if spec is None else spec.strip()
    if spec == "auto":
        weights = os.environ.get(CLIP_WEIGHTS_ENV, "").strip()
        if not weights:
            spec = "offline"
        else:
            arch = os.environ.get(CLIP_ARCH_ENV, "").strip()
            if not arch:
                raise ValueError(f"${CLIP_WEIGHTS_ENV} is set but ${CLIP_ARCH_ENV} is not: "
                                 "set it to the open_clip architecture of the weights, e.g. ViT-B-32")
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"${CLIP_WEIGHTS_ENV} names a missing file: {weights}")
            spec = f"clip:{arch}:{weights}"

    if spec == "offline":
        scorer: Scorer = OfflineScorer()
    elif spec.startswith("clip:"):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"CLIP spec must be 'clip:ARCH:PRETRAINED' (tag or local file), got {spec!r}")
        scorer = ClipScorer(parts[1], parts[2])
    else:
        raise ValueError(f"unknown scorer spec {spec!r}: use 'auto', 'offline' or 'clip:ARCH:PRETRAINED'")
    return scorer.to(device)


__all__ = ["CLIP_ARCH_ENV", "CLIP_WEIGHTS_ENV", "ClipScorer", "OfflineScorer", "PromptTarget", "Scorer", "load_scorer"]
