"""CLIP scorer (open_clip): 100 x cosine similarity of image and text embeddings.

No CLIP weights install from PyPI or Debian: pass a local open_clip state-dict file
(``.pt``/``.pth``/``.bin``/``.safetensors``) or, online, an open_clip tag such as ``openai``.
The BPE tokenizer ships with open_clip and works offline.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PromptTarget, Scorer, normalize_images

__all__ = ["ClipScorer"]

SCALE = 100.0  # CLIP's trained logit scale; fixed so guidance strengths transfer between checkpoints
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")


class ClipScorer(Scorer):
    """open_clip model ``arch`` with weights ``pretrained`` (a local file or an open_clip tag).

    Raises ValueError for an unknown architecture or tag, FileNotFoundError for a missing file.
    """

    input_size = 224

    def __init__(self, arch: str, pretrained: str) -> None:
        super().__init__()
        import open_clip

        arch = arch.replace("/", "-")  # "ViT-B/32" is open_clip's "ViT-B-32"
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {arch!r}; e.g. ViT-B-32, ViT-B-16, ViT-L-14")
        is_file = os.path.isfile(pretrained)
        if not is_file:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if os.sep in pretrained or pretrained.lower().endswith(_WEIGHT_SUFFIXES):
                raise FileNotFoundError(f"CLIP weights file not found: {pretrained}")
            if pretrained not in tags:
                raise ValueError(f"{pretrained!r} is neither a file nor an open_clip tag of {arch} "
                                 f"(tags: {', '.join(tags) or 'none'})")
        try:
            self.model = open_clip.create_model(arch, pretrained=pretrained)
        except RuntimeError as e:
            if is_file:
                raise
            raise RuntimeError(f"could not fetch CLIP weights {arch}/{pretrained} (tags need the internet; "
                               f"offline, pass a local weights file): {e}") from e
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg["size"]
        self.model_size = size if isinstance(size, int) else int(size[0])
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.name = f"clip:{arch}/{os.path.basename(pretrained) if is_file else pretrained}"
        self._freeze()

    def encode_prompt(self, text: str) -> PromptTarget:
        """Unit text embedding ``[D]`` of the prompt (long prompts are truncated to the context)."""
        text = self._check_text(text)
        tokens = self.tokenizer([text])
        device = next(self.model.parameters()).device
        with torch.no_grad():
            emb = F.normalize(self.model.encode_text(tokens.to(device)).float(), dim=-1)[0].cpu()
        full = bool(tokens[0, -1] != 0)  # the last slot is padding unless the text filled the context
        note = " (may be truncated: too long for CLIP's context)" if full else ""
        return PromptTarget(text, self.name, emb, True, (),
                            f'"{text}" → CLIP text embedding ({self.name}){note}')

    def embed_images(self, images: Tensor) -> Tensor:
        """CLIP image embeddings ``[B, D]``."""
        return self.model.encode_image(normalize_images(images, self.model_size, self.mean, self.std)).float()

    def score(self, images: Tensor, targets: Sequence[PromptTarget]) -> Tensor:
        """``100 * cos(image embedding, text embedding)`` per crop: ``[B, 3, H, W]`` in [-1, 1] -> ``[B]``."""
        self._check(images, targets)
        x = normalize_images(images, self.model_size, self.mean, self.std)
        img = F.normalize(self.model.encode_image(x).float(), dim=-1)  # [B, D]
        txt = torch.stack([t.vector for t in targets]).to(img.device)  # [B, D]
        return SCALE * (img * txt).sum(dim=-1)
