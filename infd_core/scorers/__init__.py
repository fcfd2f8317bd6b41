"""Image-vs-prompt scorers for layout-to-image guidance (DPS).

>>> scorer = load_scorer("offline")          # or "auto", "clip:ViT-B-32:/path/weights.pt"
>>> target = scorer.encode_prompt("a cat")   # once per prompt; target.explain() for the user
>>> scores = scorer.score(crops, [target])   # crops [B, 3, 224, 224] in [-1, 1] -> [B], differentiable
"""
from .base import PromptTarget, Scorer, load_scorer
from .clip import ClipScorer
from .offline import OfflineScorer

__all__ = ["PromptTarget", "Scorer", "load_scorer", "OfflineScorer", "ClipScorer"]
