"""The last steps of ``python -m training.default_model`` (export, evaluation, pictures, model card)
on the real photo set and a small real model. The training stages have their own tests; the whole
command with real step counts is the ~2.5 CPU-hour run recorded in the model card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from infd_core import configs
from infd_core.pipeline import Pipeline
from training import default_model, evaluate, photoset

pytestmark = pytest.mark.slow


def test_export_pictures_and_card(tmp_path: Path) -> None:
    work, trained, out = tmp_path / "work", tmp_path / "trained", tmp_path / "model"
    photoset.main(["--out", str(work / "photos")])
    pipe = Pipeline.from_config(configs.cpu(), seed=0)
    first = {"from": "runs/ae/model", "steps": 7, "seconds": 120}  # the meta chain training.autoencoder writes
    decoder = {"from": "runs/decoder/model", "steps": 5, "seconds": 60, "before": {"encoder": first}}
    pipe.cfg.meta = {"init": decoder, "stage1_steps": 4, "stage1_seconds": 240, "stage2_steps": 3, "stage2_seconds": None}
    pipe.save(trained)
    zoom = tmp_path / "zoom"  # a decoder + renderer refit on the same encoder
    refit = Pipeline.from_config(configs.cpu(), seed=1)
    refit.cfg.diffusion, refit.cfg.meta = None, {"stage1_steps": 2, "stage1_seconds": 150}
    refit.save(zoom)
    default_model.export(trained, out, autoencoder=zoom)
    assert load_file(str(out / "autoencoder.safetensors")).keys() == load_file(str(zoom / "autoencoder.safetensors")).keys()
    assert (out / "autoencoder.safetensors").read_bytes() == (zoom / "autoencoder.safetensors").read_bytes()
    assert Pipeline.load(out).cfg.meta["zoom"] == {"from": str(zoom), "steps": 2, "seconds": 150}
    other = configs.cpu()
    other.diffusion, other.autoencoder.renderer.width = None, 16
    Pipeline.from_config(other).save(tmp_path / "other")
    with pytest.raises(ValueError, match="differs from"):
        default_model.export(trained, tmp_path / "bad", autoencoder=tmp_path / "other")
    assert all(v.dtype.itemsize == 2 for v in load_file(str(out / "unet.safetensors")).values())  # fp16 on disk
    report = evaluate.main(["--model", str(out), "--data", str(work / "photos" / "holdout"), "--no-pfid",
                            "--scales", "64", "128", "--consistency-size", "64"])
    default_model.pictures(Pipeline.load(out), out, seeds=range(4), steps=2)
    default_model.model_card(out, work, report, samples=0, crops=0)

    card = (out / "README.md").read_text()
    assert "{" not in card.split("## Licence")[0]  # every placeholder filled
    rows = ("| 7 | 2 | 2 min |", "| 5 | 2 | 1 min |", "| 4 | 2 | 4 min |", "| 3 | 8 | not recorded |", "| 2 | 2 | 2 min |")
    assert all(r in card for r in rows) and [card.index(r) for r in rows] == sorted(card.index(r) for r in rows)
    assert "v-prediction" in card and "### Targets" in card
    met = all(ok for _, ok, _ in evaluate.targets(report))
    assert ("Meets its targets" in card) == met and ("Not yet at all its targets" in card) == (not met)
    assert f"{report['reconstruction']['mean']['model']['128']['lpips']:.4f}" in card
    assert (out / "MANIFEST.md").read_text() == (work / "photos" / "MANIFEST.md").read_text()
    assert json.loads((work / "photos" / "manifest.json").read_text())
    assert Image.open(out / "samples.jpg").size == (4 * 256, 256)
    assert Image.open(out / "zoom.jpg").size == (4 * 512, 512)
