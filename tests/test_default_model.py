"""The one command that retrains the embedded default model, run end to end with a few steps per stage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from infd_core.checkpoint import read_config
from infd_core.pipeline import Pipeline
from training import default_model

pytestmark = pytest.mark.slow


def test_one_command_retrains_exports_evaluates_and_writes_the_card(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "model"
    default_model.main(["--work", str(work), "--out", str(out), "--ae-steps", "2", "--decoder-steps", "2",
                        "--dm-steps", "2", "--samples", "2", "--crops", "8", "--sample-steps", "2"])
    manifest = json.loads((work / "photos" / "manifest.json").read_text())
    files = manifest["files"] if isinstance(manifest, dict) else manifest
    assert {f["split"] for f in files} == {"train", "holdout"}

    meta = read_config(out).meta  # the whole history travels with the model
    assert meta["encoder"]["steps"] == 2 and meta["stage1_steps"] == 2 and meta["stage2_steps"] == 2
    assert meta["encoder"]["from"] == str(work / "ae" / "model")
    assert all(v.dtype.itemsize == 2 for v in load_file(str(out / "unet.safetensors")).values())  # fp16 on disk
    pipe = Pipeline.load(out)
    assert pipe.unet is not None and pipe.render(pipe.field(pipe.sample(0, steps=2)), 32, 32).shape == (32, 32, 3)

    report = json.loads((work / "evaluation.json").read_text())
    card = (out / "README.md").read_text()
    assert "{" not in card.split("## Licence")[0]  # every placeholder filled
    assert "| autoencoder (L1 + LPIPS-VGG + KL" in card and "| 2 | 2 |" in card
    lpips = report["reconstruction"]["mean"]["model"]["1024"]["lpips"]
    assert f"{lpips:.4f}" in card and "### Targets" in card and "Not yet at all its targets" in card
    assert (out / "MANIFEST.md").read_text() == (work / "photos" / "MANIFEST.md").read_text()
    assert Image.open(out / "samples.jpg").size == (4 * 256, 2 * 256)  # seeds 0-7 in rows of 4
    assert Image.open(out / "zoom.jpg").size == (4 * 512, 512)
