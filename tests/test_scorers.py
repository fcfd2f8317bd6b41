"""Scorers with real weights on the CPU: the offline scorer end to end, CLIP on a saved random model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from infd_core.scorers import CLIP_ARCH_ENV, CLIP_WEIGHTS_ENV, ClipScorer, OfflineScorer, PromptTarget, load_scorer

from .conftest import TINY_ARCH

def crop(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> [1, 3, 224, 224] in [-1, 1]."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)


@pytest.fixture(scope="session")
def photos() -> torch.Tensor:
    return torch.cat([crop(data.chelsea()), crop(data.coffee())])  # [cat, coffee]


def test_offline_ranks_prompts(offline: OfflineScorer, photos: torch.Tensor) -> None:
    cat, coffee = offline.encode_prompt("a cat"), offline.encode_prompt("a cup of coffee")
    with torch.no_grad():
        s_cat = offline.score(photos, [cat, cat])
        s_coffee = offline.score(photos, [coffee, coffee])
        mixed = offline.score(photos, [cat, coffee])
    assert s_cat.shape == (2,) and torch.all(s_cat <= 0)
    assert s_cat[0] > s_coffee[0]  # the cat photo matches "a cat" better
    assert s_coffee[1] > s_cat[1]  # and the coffee photo "a cup of coffee"
    torch.testing.assert_close(mixed, torch.stack([s_cat[0], s_coffee[1]]))  # each image vs its own target


def test_offline_gradient(offline: OfflineScorer, photos: torch.Tensor) -> None:
    images = photos.clone().requires_grad_(True)
    target = offline.encode_prompt("a cat")
    offline.score(images, [target, target]).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum(dim=(1, 2, 3)).min() > 0
    assert all(p.grad is None and not p.requires_grad for p in offline.parameters())
    assert not offline.train().training  # frozen: stays in eval mode


def test_offline_explain_and_known(offline: OfflineScorer) -> None:
    cat = offline.encode_prompt("a cat")
    assert cat.known and cat.text == "a cat"
    assert " cat" in cat.explain() and "Egyptian cat" in {n for n, _ in cat.matches}
    assert sum(w for _, w in cat.matches) == pytest.approx(1.0)
    assert offline.encode_prompt("a photo of a cat").matches == cat.matches
    for far in ("qwxz blorp", "lorem ipsum dolor", "clouds in the sky"):  # no ImageNet class is close
        target = offline.encode_prompt(far)
        assert not target.known and "not understood" in target.explain()


def test_offline_explicit_classes(offline: OfflineScorer, photos: torch.Tensor) -> None:
    assert len(offline.class_names) == 1000 and "volcano" in offline.class_names
    target = offline.encode_prompt("Classes: volcano, Alp , volcano")
    assert target.known and [n for n, _ in target.matches] == ["volcano", "alp"]
    assert [w for _, w in target.matches] == [0.5, 0.5]
    assert "volcano 50%" in target.explain()
    espresso = offline.encode_classes("espresso")
    with torch.no_grad():
        s = offline.score(photos, [espresso, espresso])
    assert s[1] > s[0]
    assert offline.encode_classes(["Cardigan"]).matches != offline.encode_classes(["cardigan"]).matches
    with pytest.raises(ValueError, match="did you mean"):
        offline.encode_classes(["volcanoe"])
    with pytest.raises(ValueError):
        offline.encode_prompt("classes: , ")


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_prompt_rejected(offline: OfflineScorer, text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        offline.encode_prompt(text)


def test_score_checks_inputs(offline: OfflineScorer, photos: torch.Tensor) -> None:
    target = offline.encode_prompt("a cat")
    with pytest.raises(ValueError, match="targets"):
        offline.score(photos, [target])
    alien = PromptTarget("x", "clip:other", torch.zeros(8), True, (), "")
    with pytest.raises(ValueError, match="encoded by"):
        offline.score(photos[:1], [alien])


def test_clip_end_to_end(tiny_clip_file: Path) -> None:
    scorer = load_scorer(f"clip:{TINY_ARCH}:{tiny_clip_file}")
    assert isinstance(scorer, ClipScorer) and scorer.name == f"clip:{TINY_ARCH}/tiny.pt"
    targets = [scorer.encode_prompt("a cat"), scorer.encode_prompt("a red car on a road")]
    assert targets[0].vector.shape == (32,) and "CLIP" in targets[0].explain()
    images = (torch.rand(2, 3, 224, 224) * 2 - 1).requires_grad_(True)
    scores = scorer.score(images, targets)
    assert scores.shape == (2,) and torch.all(scores.abs() <= 100 + 1e-3)
    scores.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in scorer.parameters())


def test_load_scorer_auto(monkeypatch: pytest.MonkeyPatch, tiny_clip_file: Path, offline: OfflineScorer) -> None:
    monkeypatch.delenv(CLIP_WEIGHTS_ENV, raising=False)
    assert isinstance(load_scorer(None), OfflineScorer)
    monkeypatch.setenv(CLIP_WEIGHTS_ENV, str(tiny_clip_file))
    monkeypatch.setenv(CLIP_ARCH_ENV, TINY_ARCH)
    assert isinstance(load_scorer("auto"), ClipScorer)
    monkeypatch.setenv(CLIP_WEIGHTS_ENV, str(tiny_clip_file.with_name("missing.pt")))
    with pytest.raises(FileNotFoundError):
        load_scorer("auto")
    monkeypatch.delenv(CLIP_ARCH_ENV)
    with pytest.raises(ValueError, match=CLIP_ARCH_ENV):
        load_scorer("auto")


@pytest.mark.parametrize("spec, error", [
    ("bogus", ValueError),
    ("clip:ViT-B-32", ValueError),
    ("clip:ViT-B-32:", ValueError),
    ("clip:No-Such-Arch:openai", ValueError),
    ("clip:ViT-B-32:no-such-tag", ValueError),
    ("clip:ViT-B-32:/nonexistent/weights.pt", FileNotFoundError),
])
def test_load_scorer_errors(spec: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        load_scorer(spec)
