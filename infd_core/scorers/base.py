"""What every image-vs-prompt scorer offers (:func:`infd_core.scorers.load_scorer` picks one).

A scorer measures how well image crops match text prompts, differentiably, so that
layout-to-image guidance (DPS) can push each box's rendering towards its prompt:

* :meth:`Scorer.encode_prompt` turns text into a :class:`PromptTarget` once per prompt
  (text encoders are slow; targets are reused at every sampling step);
* :meth:`Scorer.score` takes RGB crops ``[B, 3, 224, 224]`` in ``[-1, 1]`` and one target
  per crop and returns ``[B]`` scores, higher = better match, differentiable w.r.t. the crops.

Scorers are frozen ``nn.Module``\\ s: always in eval mode, no parameter gradients, moved with
``.to(device)``. Targets live on the CPU and follow the images' device when scored.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PromptTarget", "Scorer", "normalize_images"]


@dataclass(frozen=True, eq=False)
class PromptTarget:
    """A prompt as one scorer understood it.

    Attributes:
        text: the prompt as typed.
        scorer: ``name`` of the scorer that made it; other scorers refuse it.
        vector: scorer-specific ``[D]`` CPU tensor (CLIP: unit text embedding; offline
            scorer: log-weights over the 1000 ImageNet classes, ``-inf`` outside the target).
        known: False when the prompt maps to nothing the scorer knows; guidance with it
            would steer towards something arbitrary, so callers should warn or skip it.
        matches: what the prompt was mapped to, ``(label, weight)`` best first (may be empty).
        explanation: one line for the user; returned by :meth:`explain`.
    """

    text: str
    scorer: str
    vector: Tensor
    known: bool
    matches: tuple[tuple[str, float], ...]
    explanation: str

    def explain(self) -> str:
        """What the prompt was understood as, for the user."""
        return self.explanation


class Scorer(nn.Module, ABC):
    """Image-vs-prompt scorer (frozen; see the module docstring)."""

    name: str  # e.g. "offline:efficientnet-lite0+minilm", "clip:ViT-B-32/openai"
    input_size: int = 224  # side of the crops :meth:`score` expects (others are resized)

    @abstractmethod
    def encode_prompt(self, text: str) -> PromptTarget:
        """Encode a prompt once; raises ValueError for an empty or whitespace-only prompt."""

    @abstractmethod
    def score(self, images: Tensor, targets: Sequence[PromptTarget]) -> Tensor:
        """Scores ``[B]`` of crops ``[B, 3, H, W]`` (RGB in [-1, 1], normally H = W = 224).

        Crop ``i`` is scored against ``targets[i]``; higher = better match. Differentiable
        w.r.t. ``images``.
        """

    @abstractmethod
    def embed_images(self, images: Tensor) -> Tensor:
        """Image embeddings ``[B, D]`` of crops ``[B, 3, H, W]`` in [-1, 1] (differentiable);
        used to match reference patches."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Scorer":
        """Scorers stay in eval mode whatever is asked (dropout/batch-norm must not change)."""
        return super().train(False)

    def _check(self, images: Tensor, targets: Sequence[PromptTarget]) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if len(targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
        for t in targets:
            if t.scorer != self.name:
                raise ValueError(f"target {t.text!r} was encoded by {t.scorer!r}, not by {self.name!r}")

    @staticmethod
    def _check_text(text: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("prompt is empty")
        return " ".join(text.split())


def normalize_images(images: Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[-1, 1] RGB ``[B, 3, H, W]`` -> ``[B, 3, size, size]`` normalised with ``mean``/``std``
    (given for [0, 1] pixels), differentiably (bilinear, antialiased when shrinking)."""
    x = (images + 1) / 2
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
