"""The recipes of ``python -m training.default_model`` and its last steps (export, evaluation, pictures,
model card) on the real photo set and a small real model. The training stages have their own tests; the whole
command with real step counts is the ~2.5 CPU-hour run recorded in the model card."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from infd_core import compositions, configs
from infd_core.checkpoint import read_config
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
                            "--scales", "64", "128", "--consistency-size", "64", "--detail-size", "0"])
    default_model.pictures(Pipeline.load(out), out, seeds=range(4), steps=2)
    with Image.open(out / "composition.jpg") as sheet:  # a row per example: sketch, 1024² shown at 384², 1:1 crops
        assert sheet.size == (4 * 384, 384 * len(compositions.names()))  # of the 1024² and the 2048² renders
    default_model.model_card(out, work, default_model.RECIPES["v1"], report, {})

    card = (out / "README.md").read_text()
    assert "{" not in card.split("## Licence")[0]  # every placeholder filled
    rows = ("| 7 | 2 | 2 min |", "| 5 | 2 | 1 min |", "| 4 | 2 | 4 min |", "| 3 | 8 | not recorded |", "| 2 | 2 | 2 min |")
    assert all(r in card for r in rows) and [card.index(r) for r in rows] == sorted(card.index(r) for r in rows)
    assert "v-prediction" in card and "### Targets" in card
    met = all(ok for _, ok, _ in evaluate.targets(report))
    assert ("Meets its v1 targets" in card) == met and ("Not yet at all its v1 targets" in card) == (not met)
    assert f"{report['reconstruction']['mean']['model']['128']['lpips']:.4f}" in card
    assert (out / "MANIFEST.md").read_text() == (work / "photos" / "MANIFEST.md").read_text()
    assert json.loads((work / "photos" / "manifest.json").read_text())
    assert Image.open(out / "samples.jpg").size == (4 * 256, 256)
    assert Image.open(out / "zoom.jpg").size == (4 * 512, 512)


def test_v2_export_evaluation_and_card(tmp_path: Path) -> None:
    """The v2 recipe's last steps: a cpu2 decoder run and a UNet run on the same frozen encoder
    become one model folder; the card compares it with the milestone."""
    work, out = tmp_path / "work", tmp_path / "model"
    photos = work / "photos-nature"
    photoset.main(["--out", str(photos), "--no-debian"])
    milestone = Pipeline.from_config(configs.cpu(), seed=0)
    milestone.cfg.meta = {"stage2_steps": 3, "stage2_seconds": 60}
    milestone.save(work / "milestone")
    milestone.save(tmp_path / "dm")  # the UNet run: the milestone's autoencoder, a fine-tuned UNet
    decoder = Pipeline.from_config(configs.cpu2(), seed=1)
    decoder.autoencoder.encoder.load_state_dict(milestone.autoencoder.encoder.state_dict())  # the frozen encoder
    decoder.cfg.diffusion, decoder.cfg.meta = None, {"stage1_steps": 5, "stage1_seconds": 120}
    decoder.save(tmp_path / "decoder")
    stranger = Pipeline.from_config(configs.cpu2(), seed=2)  # trained on another encoder
    stranger.cfg.diffusion = None
    stranger.save(tmp_path / "stranger")
    with pytest.raises(ValueError, match="different encoders"):
        default_model.export_stages(tmp_path / "stranger", tmp_path / "dm", out)

    default_model.export_stages(tmp_path / "decoder", tmp_path / "dm", out)
    model = Pipeline.load(out)
    assert model.cfg.autoencoder == configs.cpu2().autoencoder and model.cfg.diffusion == milestone.cfg.diffusion
    assert model.cfg.meta["decoder"]["stage1_steps"] == 5 and model.cfg.meta["diffusion"]["stage2_steps"] == 3
    assert (out / "autoencoder.safetensors").read_bytes() == (tmp_path / "decoder" / "autoencoder.safetensors").read_bytes()
    assert all(v.dtype == torch.float16 for v in load_file(str(out / "unet.safetensors")).values())

    holdout = str(photos / "holdout")
    report = evaluate.main(["--model", str(out), "--compare", str(work / "milestone"), "--data", holdout, "--crops", "16",
                            "--patch-sizes", "256", "--detail-size", "512", "--no-esrgan", "--scales", "256", "1024",
                            "--consistency-size", "64", "--grid-sizes", "1024"])
    pfid = ["--data", holdout, "--samples", "2", "--steps", "2", "--scales", "256", "--fid-size", "256",
            "--patch-sizes", "128", "256", "--crops", "4", "--grid-sizes", "--no-esrgan", "--consistency-size", "64",
            "--detail-size", "0",
            "--thumbnails"]  # the card reads only their pFID
    pfids = {"v2": evaluate.main(["--model", str(out), *pfid]),
             "v1": evaluate.main(["--model", str(work / "milestone"), *pfid])}
    default_model.model_card(out, work, default_model.RECIPES["v2"], report, pfids)
    card = (out / "README.md").read_text()
    assert "{" not in card.split("## Licence")[0]
    assert "PSNR at 256² +2 dB over v1" in card and "φ-grid visibility at 1024²" in card
    assert "| 5 | 2 | 2 min |" in card and "| 3 | 8 | 1 min |" in card and "ae_cpu2_decoder.json" in card
    assert "gives φ 16×256×256" in card
    side, cast = max(report["border"]["mean"]["model"].items(), key=lambda kv: kv[1])
    assert f"no coloured band along a border (mean cast at 1024² ≤ 3/255 on every side): " \
           f"{'met' if cast <= 3 else 'not met'} (worst: {side} {cast:.1f})" in card and "### Colour bands" in card
    for label, r in pfids.items():
        assert f"| {label} | " + " | ".join(f"{v['samples']:.1f}" for v in r["pfid"]["by_features"][
            next(iter(r["pfid"]["by_features"]))].values()) + " |" in card

    # v3 keeps a model folder's UNet as it is: the export carries that folder's record of it
    v3_pad = default_model.RECIPES["v3"].export.decode_pad
    default_model.export_stages(tmp_path / "decoder", out, tmp_path / "v3", decode_pad=v3_pad)
    assert read_config(tmp_path / "v3").meta["diffusion"] == model.cfg.meta["diffusion"]
    assert read_config(tmp_path / "v3").autoencoder.decode_pad == 2 and model.cfg.autoencoder.decode_pad == 0
    default_model.model_card(out, work, default_model.RECIPES["v3"], report, pfids)
    card = (out / "README.md").read_text()
    assert card.startswith("# infd-cpu-photos — the embedded default model (v3)")
    assert "{" not in card.split("## Licence")[0] and "+2 dB" not in card
    assert "ae_cpu3_decoder.json" in card and "UNet as it is" in card and "--compare runs/default/milestone-v2" in card
    mean = report["reconstruction"]["mean"]
    assert f"PSNR at 256² {mean['model']['256']['psnr'] - mean['compare']['256']['psnr']:+.2f} dB over v2" in card

    # with the v2 evaluation (v2 against v1) in WORK, v3's PSNR targets are measured against v1
    earlier = copy.deepcopy(report)
    v2, v1 = earlier["reconstruction"]["mean"]["model"], earlier["reconstruction"]["mean"]["compare"]
    for s in mean["compare"]:
        v2[s] = dict(mean["compare"][s])
        v1[s] = {**mean["compare"][s], "psnr": mean["compare"][s]["psnr"] - 1.5}
    (work / "evaluation-v2.json").write_text(json.dumps(earlier))
    default_model.model_card(out, work, default_model.RECIPES["v3"], report, pfids)
    card = (out / "README.md").read_text()
    gain = mean["model"]["1024"]["psnr"] - mean["compare"]["1024"]["psnr"] + 1.5
    assert f"PSNR at 1024² +2 dB over v1: {'met' if gain >= 2 else 'not met'} ({gain:+.2f} dB)" in card
    assert "The PSNR gains over v1 add the v2 evaluation's" in card
    v2["256"]["psnr"] += 0.5  # the shared model scored differently: the gains would not add up
    with pytest.raises(ValueError, match="not the same protocol"):
        default_model.baseline_psnr(report, earlier)

    # v4 (a texture loss on the same family): its card has the detail judges and their targets
    default_model.model_card(out, work, default_model.RECIPES["v4"], report, pfids)
    card = (out / "README.md").read_text()
    assert card.startswith("# infd-cpu-photos — the embedded default model (v4)") and "{" not in card.split("## Licence")[0]
    assert "texture loss (weight 1, 32-px Gram windows, levels above 512²)" in card and "fp32" in card
    dt = report["detail"]
    assert dt["size"] == 512 and "### Detail at 512², 1:1" in card
    s, s0 = (dt["native_mean"] or dt["mean"])["model"]["sharpness"], (dt["native_mean"] or dt["mean"])["compare"]["sharpness"]
    assert (f"sharpness at 512² 1:1 at least halfway from the milestone's to the photo's: "
            f"{'met' if s >= (s0 + 1) / 2 else 'not met'}") in card
    assert "flat-region noise at most bicubic's" in card and "patch-FID 256/1K below the milestone's" in card
    assert "--detail-size 2048 --patch-sizes 256 --strips runs/default/strips-v4" in card
    no_native = copy.deepcopy(report)  # no held-out photo as large as the detail size: the sharpness of them all
    no_native["detail"]["native"], no_native["detail"]["native_mean"] = [], {m: {} for m in dt["mean"]}
    assert default_model.detail_checks(no_native)[0][2].startswith(f"{dt['mean']['model']['sharpness']:.3f}, ")


def test_v2_manifest_credits_the_milestones_photos_once(tmp_path: Path) -> None:
    v1 = tmp_path / "v1.md"
    v1.write_text("# Offline photo set\n\n- train: 30 files\n| a.jpg | GPL-2+ |\n")
    nature = tmp_path / "nature.md"
    nature.write_text("# Offline photo set\n\n- train: 123 files\n| b.jpg | CC0 |\n")
    v2 = default_model.photo_credits(nature, v1)
    assert v2.startswith(nature.read_text().rstrip()) and v2.endswith(v1.read_text())
    # a v2 milestone (its manifest already begins with this set's) is passed on as it is, not nested
    (tmp_path / "v2.md").write_text(v2)
    assert default_model.photo_credits(nature, tmp_path / "v2.md") == v2
    assert default_model.photo_credits(nature, tmp_path / "missing.md") == nature.read_text()
    assert default_model.photo_credits(nature, None) == nature.read_text()  # a model from scratch: its own set


def test_a_recipe_refuses_a_milestone_of_another_family(tmp_path: Path) -> None:
    """On a fresh checkout the shipped folder is v3: continuing it as v3's milestone (v2) would label
    the v3 model "v2" in the card; the recipe refuses it and says where v2 is."""
    with pytest.raises(SystemExit, match=r"continues from v2 \(a cpu2 model\), but .* is a cpu3 model"):
        default_model.check_milestone(default_model.DEFAULT_OUT, default_model.RECIPES["v3"])
    Pipeline.from_config(configs.cpu2(), seed=0).save(tmp_path / "v2")
    default_model.check_milestone(tmp_path / "v2", default_model.RECIPES["v3"])
    with pytest.raises(SystemExit, match="a cpu model"):
        default_model.check_milestone(tmp_path / "v2", default_model.RECIPES["v2"])


def test_every_recipe_is_well_formed() -> None:
    """Each recipe's presets exist and load; each stage starts from earlier stages or the milestone, by
    name, with overrides its preset knows; its steps flag is on the command line; its export and PSNR
    baseline name what exists; its folders in WORK are its own; its evaluation's placeholders are filled."""
    ap = default_model.parser()
    assert ap.parse_args([]).recipe == "v3"
    folders = []
    for name, recipe in default_model.RECIPES.items():
        assert recipe.name == name and recipe.photo_set in photoset.SETS
        known = set()
        if recipe.milestone is not None:
            known.add(default_model.MILESTONE)
            assert getattr(configs, recipe.milestone.family)().name == recipe.milestone.family
            folders.append(recipe.milestone.folder)
        for stage in recipe.stages:
            assert (default_model.CONFIGS / stage.config).is_file()
            cfg = default_model.preset(stage)
            keys, sources = zip(*(item.split("=") for item in stage.init)) if stage.init else ((), ())
            assert set(keys) <= {f.name for f in dataclasses.fields(cfg)}, (name, stage.name)
            named = [*sources, *(s for s in (stage.latents, stage.decoder_of) if s is not None)]
            assert set(named) <= known, (name, stage.name, named)  # earlier stages or the milestone
            assert (stage.latents is not None) == (stage.trains == "diffusion")
            assert stage.decoder_of is None or stage.trains == "autoencoder"
            assert getattr(ap.parse_args([stage.steps_flag, "3"]), default_model.steps_dest(stage.steps_flag)) == 3
            assert stage.name not in known and stage.record.endswith("steps")
            known.add(stage.name)
            folders.append(stage.run)
        for part in recipe.card.kept:
            assert (default_model.CONFIGS / part.config).is_file() and default_model.preset(part)
        assert {recipe.export.unet, recipe.export.autoencoder} <= known
        gains = recipe.evaluation.gains
        assert gains is None or gains.baseline is None or default_model.RECIPES[gains.baseline].milestone
        settings = {"samples": 1, "crops": 2, "steps": 3, "refine": 4}
        values = default_model.protocol(recipe, Path("w"), Path("m"), settings)
        for template in (recipe.evaluation.args, recipe.evaluation.pfid):
            assert "None" not in default_model.fill(template, values)
        folders += [recipe.evaluation.report, *([recipe.evaluation.strips] if recipe.evaluation.strips else [])]
    assert len(folders) == len(set(folders))  # no recipe resumes from or overwrites another's runs


def test_the_one_path_runs_the_v2_recipe_and_writes_its_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one path (:func:`default_model.run`) on the v2 recipe's runs of a small real model, with --out the
    milestone's folder: the milestone is copied into WORK before the export overwrites it; the evaluation
    (v2's protocol at smaller sizes), the sample patch-FID of both models, the pictures and the strip
    follow; the card is the v2 card, and the reports kept in WORK rewrite it byte for byte."""
    work, shipped = tmp_path / "work", tmp_path / "shipped"
    photoset.main(["--out", str(work / "photos-nature"), "--no-debian"])
    milestone = Pipeline.from_config(configs.cpu(), seed=0)
    milestone.cfg.meta = {"stage2_steps": 3, "stage2_seconds": 60}
    milestone.save(shipped)
    milestone.save(work / "dm2" / "model")  # the UNet run: the milestone's autoencoder, a fine-tuned UNet
    decoder = Pipeline.from_config(configs.cpu2(), seed=1)
    decoder.autoencoder.encoder.load_state_dict(milestone.autoencoder.encoder.state_dict())  # the frozen encoder
    decoder.cfg.diffusion, decoder.cfg.meta = None, {"stage1_steps": 5, "stage1_seconds": 120}
    decoder.save(work / "decoder2" / "model")
    # Real-ESRGAN is optional (requirements-eval.txt) and has its own tests; the strips need an upscaler
    bicubic_x4 = lambda img: np.asarray(Image.fromarray(img).resize((4 * img.shape[1], 4 * img.shape[0]),  # noqa: E731
                                                                     Image.Resampling.BICUBIC))
    monkeypatch.setattr(evaluate, "default_upscaler", lambda *args, **kwargs: bicubic_x4)
    v2 = default_model.RECIPES["v2"]
    smaller = ("--scales", "256", "1024", "--consistency-size", "64", "--grid-sizes", "1024", "--detail-size", "512",
               "--crops", "16")  # the later occurrences win
    recipe = dataclasses.replace(v2, evaluation=dataclasses.replace(v2.evaluation, args=v2.evaluation.args + smaller))
    args = default_model.parser().parse_args(["--recipe", "v2", "--skip-training", "--work", str(work), "--out",
                                              str(shipped), "--milestone", str(shipped), "--samples", "2",
                                              "--crops", "4", "--sample-steps", "2"])
    default_model.run(recipe, args)

    assert read_config(work / "milestone").name == "cpu" and read_config(shipped).name == "cpu2"
    card = (shipped / "README.md").read_text()
    assert card.startswith("# infd-cpu-photos — the embedded default model (v2)")
    assert "{" not in card.split("## Licence")[0] and "PSNR at 256² +2 dB over v1" in card
    assert "| 5 | 2 | 2 min |" in card and "| 3 | 8 | 1 min |" in card and "ae_cpu2_decoder.json" in card
    assert "--compare runs/default/milestone --data runs/default/photos-nature/holdout --grid-sizes" in card
    assert "| v2 (this model) | " in card and "| v1 (the milestone) | " in card and "![strip](strip.jpg)" in card
    assert all((shipped / f).is_file() for f in ("strip.jpg", "zoom.jpg", "composition.jpg"))
    assert Image.open(shipped / "samples.jpg").size == (4 * 256, 4 * 256)  # seeds 0-15
    assert (shipped / "MANIFEST.md").read_text() == (work / "photos-nature" / "MANIFEST.md").read_text()
    report = json.loads((work / "evaluation-v2.json").read_text())
    pfids = {"v2 (this model)": json.loads((work / "pfid-v2.json").read_text()),
             "v1 (the milestone)": json.loads((work / "pfid-v1.json").read_text())}
    default_model.model_card(shipped, work, recipe, report, pfids)
    assert (shipped / "README.md").read_text() == card
