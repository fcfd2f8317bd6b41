"""Shared fixtures: a fixed-seed random model for mechanics, the embedded default model (its quality
tests live in ``test_shipped_model.py``), the offline scorer, a tiny saved open_clip model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from infd_core import configs
from infd_core.pipeline import Pipeline, default_model_dir
from infd_core.scorers import OfflineScorer

TINY_ARCH = "infd-test-tiny-clip"  # registered with open_clip below; 64 px so the resize path runs
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_pipe() -> Pipeline:
    """The cpu preset with fixed-seed random weights: what mechanics are tested on, so that
    retraining the shipped model does not move them."""
    return Pipeline.from_config(configs.cpu(), seed=0)


@pytest.fixture(scope="session")
def default_pipe() -> Pipeline:
    """The trained model shipped in assets/models (fp32, CPU)."""
    folder = default_model_dir()
    if not (folder / "config.json").exists():
        pytest.fail(f"the embedded default model is missing at {folder}")
    return Pipeline.load(folder)


@pytest.fixture(scope="session")
def offline() -> OfflineScorer:
    return OfflineScorer()


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight open_clip model saved to a local file (no download)."""
    import open_clip

    cfg_dir = tmp_path_factory.mktemp("clip_cfg")
    (cfg_dir / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH, pretrained=None)
    path = tmp_path_factory.mktemp("clip_weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path
