"""Evaluation: metrics against known values, and the CLI end to end on real photos (small sizes)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from infd_core import configs
from infd_core.pipeline import Pipeline
from training import features
from training.data import ImageFolder
from training.evaluate import (Settings, border_cast, _labels, baselines, encoder_input_size, evaluate_image, grid_visibility, frechet_distance, main, patch_label, psnr,
                               random_crops, square, targets)
from training.losses import offline_lpips

SMALL = Settings(scales=(64, 128), consistency_size=64, fid_size=128, patch_sizes=(64, 128), crops=8,
                 samples=2, steps=2, grid_sizes=(512,), detail_size=256)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.from_config(configs.cpu(), seed=0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("holdout")
    for name in ("astronaut", "coffee"):  # square 512² and 600x400 (squashed like in training)
        Image.fromarray(getattr(data, name)()).save(root / f"{name}.png")
    return root


def test_psnr_identical_and_known_noise() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 250, size=(32, 32, 3), dtype=np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 5) == pytest.approx(20 * math.log10(255 / 5))  # MSE = (5/255)^2 everywhere
    f = a / 255.0
    noisy = f + rng.choice([-0.01, 0.01], size=f.shape)  # |error| = 0.01 everywhere: 40 dB
    assert psnr(f, noisy) == pytest.approx(40.0)


def test_frechet_distance_zero_for_same_set_and_grows_with_shift() -> None:
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x + 1) == pytest.approx(8.0, rel=1e-6)  # |mean shift|^2, same covariance
    assert frechet_distance(x, x + 2) > frechet_distance(x, x + 1)
    few = x[:5, :4].repeat(16, axis=1)  # 5 vectors in 64-d: singular covariance, still defined
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-4)
    assert frechet_distance(few, few + 0.5) == pytest.approx(64 * 0.25, rel=1e-3)


def test_offline_features_tell_photos_from_blur() -> None:
    extractor = features.efficientnet_lite0()
    assert extractor.label == "pFID-EffNetLite0 (not Inception-FID)"
    img = square(Image.fromarray(data.astronaut()), 512)
    blurred = np.array(Image.fromarray(img).resize((64, 64)).resize((512, 512), Image.Resampling.BILINEAR))
    crops, blurry = random_crops([img], 128, 12), random_crops([blurred], 128, 12)
    assert [c.shape for c in crops] == [(128, 128, 3)] * 12
    f, g = extractor(crops), extractor(blurry)
    assert f.shape == (12, 1280) and np.isfinite(f).all()
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-3)
    assert frechet_distance(f, g) > 1.0


def test_inception_path_loads_a_state_dict(tmp_path: Path) -> None:
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    extractor = features.inception_v3(tmp_path / "inception.pth")
    out = extractor([np.zeros((100, 100, 3), np.uint8), np.full((100, 100, 3), 255, np.uint8)])
    assert out.shape == (2, 2048) and np.isfinite(out).all()


def test_scale_consistency_and_bicubic_baseline(pipe: Pipeline, photos: Path) -> None:
    res = evaluate_image(ImageFolder(photos)[0], {"model": pipe}, SMALL, offline_lpips())
    methods = ("bicubic", "bicubic-64", "bicubic-128", "model")
    assert {(r["method"], r["scale"]) for r in res.rows} == {(m, s) for m in methods for s in (64, 128)}
    bicubic = [r for r in res.rows if r["method"] == "bicubic"]
    assert all(20 < r["psnr"] < 60 and 0 <= r["lpips"] < 0.3 for r in bicubic)
    # at 128², a 64² thumbnail upsampled loses to the 128² thumbnail itself
    at128 = {r["method"]: r for r in res.rows if r["scale"] == 128}
    assert at128["bicubic-64"]["psnr"] < at128["bicubic-128"]["psnr"]
    assert at128["bicubic-64"]["lpips"] > at128["bicubic-128"]["lpips"]
    assert math.isfinite(res.consistency["model"])
    assert set(res.grid) == {"gt", "bicubic", "model"} and all(set(v) == {512} for v in res.grid.values())
    assert 0.8 < res.grid["gt"][512] < 1.25  # a photo shows no 2-px grid
    assert res.images["model"][128].shape == res.images["gt"][128].shape == (128, 128, 3)
    assert set(res.detail) == {"bicubic", "model"} and all(v["sharpness"] > 0 for v in res.detail.values())


def test_cli_end_to_end(pipe: Pipeline, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipe.save(tmp_path / "model")
    out = tmp_path / "report.json"
    main(["--model", str(tmp_path / "model"), "--data", str(photos), "--samples", "2", "--steps", "2",
          "--scales", "64", "128", "--consistency-size", "64", "--fid-size", "128", "--patch-sizes", "64", "128",
          "--crops", "8", "--refine", "1", "--grid-sizes", "512", "--detail-size", "512", "--out", str(out)])
    report = json.loads(out.read_text())
    detail = report["detail"]
    assert detail["size"] == 512 and detail["native"] == ["astronaut.png"]  # coffee is 400 px high
    assert set(detail["mean"]) == {"bicubic", "model"} and set(detail["per_image"]["model"]) == {"astronaut.png", "coffee.png"}
    assert 0 < detail["mean"]["bicubic"]["sharpness"] < 1  # bicubic of the 256² input is blurrier than the photo
    assert set(report["reconstruction"]["mean"]) == {"bicubic", "bicubic-64", "bicubic-128", "model", "model+refine"}
    assert report["methods"]["model+refine"].endswith("latent refined 1 step")
    assert report["methods"]["bicubic-64"] == "bicubic upsampling of a 64² thumbnail (as many values as the latent)"
    assert report["methods"]["bicubic-128"] == "bicubic upsampling of a 128² thumbnail (4× the latent's values)"
    assert len(report["scale_consistency"]["per_image_db"]["model"]) == 2
    pfid = report["pfid"]["by_features"]["pFID-EffNetLite0 (not Inception-FID)"]
    assert set(pfid) == {patch_label(64, 128), patch_label(128, 128)} == {"64/128", "128/128"}
    assert all(v["reconstruction"] >= 0 and v["samples"] >= 0 for v in pfid.values())
    assert report["pfid"]["n_samples"] == 2
    assert report["settings"]["eta"] == pipe.cfg.diffusion.eta == 0.0  # the samples used the model's own η
    printed = capsys.readouterr().out
    assert "pFID-EffNetLite0 (not Inception-FID)" in printed and "| 128² | bicubic" in printed
    assert "2 samples (DDIM η = 0, 2 steps)" in printed
    (zoom, zoom_ok, zoom_text), (consistency, consistency_ok, _) = targets(report)
    mean = report["reconstruction"]["mean"]
    assert zoom_ok == (mean["model"]["128"]["lpips"] < mean["bicubic"]["128"]["lpips"])
    assert f"{mean['model']['128']['lpips']:.4f}" in zoom_text and zoom.startswith("128²")
    assert consistency_ok == (report["scale_consistency"]["mean_db"]["model"] >= 30)
    assert f"| {zoom} | {'yes' if zoom_ok else '**no**'} |" in printed


def test_compared_models_of_the_same_kind_get_distinct_labels(pipe: Pipeline) -> None:
    assert _labels({"model": pipe}) == {"model": "cpu (CLIF renderer)"}
    assert _labels({"model": pipe, "compare": pipe}) == {"model": "cpu (CLIF renderer), model",
                                                         "compare": "cpu (CLIF renderer), compare"}


def test_thumbnail_sizes_are_validated(pipe: Pipeline) -> None:
    with pytest.raises(ValueError, match="thumbnail sizes"):
        Settings(thumbnails=(0, 64))
    with pytest.raises(ValueError, match="below the encoder input"):
        encoder_input_size({"model": pipe}, Settings(thumbnails=(64, pipe.input_size)))
    assert baselines(Settings(thumbnails=(128, 96))) == ["bicubic", "bicubic-96", "bicubic-128"]


def test_grid_visibility_sees_blocks_and_not_smooth_images() -> None:
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    blocky = np.kron(cells, np.ones((8, 8, 1), np.uint8))  # nearest upsampling: steps only at cell edges
    assert grid_visibility(blocky, 8) > 100
    smooth = np.asarray(Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.LANCZOS))
    assert 0.8 < grid_visibility(smooth, 8) < 1.25
    with pytest.raises(ValueError, match="2 or more pixels"):
        grid_visibility(smooth, 1)
    with pytest.raises(ValueError, match="grid sizes must be multiples of 512"):
        Settings(grid_sizes=(768,))


def test_realesrgan_rows_and_comparison_strip(pipe: Pipeline, photos: Path) -> None:
    from training import realesrgan
    from training.evaluate import ESRGAN, comparison_strip, esrgan_of, evaluate, markdown

    torch.manual_seed(0)  # a tiny random RRDBNet stands in for realesrgan-x4plus: the rows, not its quality
    net = realesrgan.RRDBNet(blocks=1, nf=8, gc=4).eval()
    calls = []

    def upscaler(img: np.ndarray) -> np.ndarray:
        calls.append(img.shape)
        return realesrgan.upscale(net, img)

    settings = Settings(scales=(64, 512), consistency_size=64, grid_sizes=(512,), thumbnails=(64,), detail_size=512)
    report = evaluate(pipe, ImageFolder(photos), settings, upscaler=upscaler)
    assert set(report["detail"]["mean"]) == {"bicubic", ESRGAN, "model"}
    assert report["detail"]["native"] == ["astronaut.png"]  # coffee is 400 px high: its 512² reference is upsampled
    assert calls == [(256, 256, 3)] * 4  # per photo: the 256² input and the model's 256² render
    mean = report["reconstruction"]["mean"]
    assert set(mean[ESRGAN]) == set(mean[esrgan_of("model")]) == {"512"}  # zooms of the input only
    assert report["methods"][ESRGAN] == "Real-ESRGAN ×4 of the 256² input"
    assert report["methods"][esrgan_of("model")] == "Real-ESRGAN ×4 of the 256² render of cpu (CLIF renderer)"
    text = markdown(report)
    assert "| 512² | Real-ESRGAN ×4 of the 256² input |" in text and "| 64² | Real-ESRGAN" not in text
    assert "Real-ESRGAN ×4 output at 1024², LANCZOS-resized below." in text
    without = evaluate(pipe, ImageFolder(photos), Settings(scales=(64,), consistency_size=64, grid_sizes=(512,),
                                                           thumbnails=(64,), detail_size=0))
    assert "detail" not in without
    assert ESRGAN not in without["methods"] and "no Real-ESRGAN rows" in markdown(without)
    strip = comparison_strip(ImageFolder(photos)[0], pipe, upscaler, size=512, crop=96, gap=4)
    assert strip.shape == (96, 4 * 96 + 3 * 4, 3) and strip.dtype == np.uint8
    assert (strip[:, 96:100] == 255).all()  # white gaps between the panels
    two = comparison_strip(ImageFolder(photos)[0], [pipe, pipe], upscaler, size=512, crop=96, gap=4)
    assert two.shape == (96, 5 * 96 + 4 * 4, 3)  # previous and new model side by side
    assert (two[:, -96:] == two[:, -2 * 96 - 4:-96 - 4]).all()  # the same model twice renders the same


def test_border_cast_finds_a_band_and_ignores_content() -> None:
    """A +20 red band along the top border (16 px) of an otherwise noisy reconstruction: the top
    side reads about (+20, 0, 0); the other sides, where only noise differs, read about 0."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (512, 512, 3)).astype(np.float64)
    img = truth + rng.normal(0, 5, truth.shape)
    img[:16, :, 0] += 20
    cast = border_cast(img, truth, 16)
    assert set(cast) == {"top", "bottom", "left", "right"}
    assert np.allclose(cast["top"], [20, 0, 0], atol=0.5)
    assert all(np.abs(cast[side]).max() < 0.5 for side in ("bottom", "left", "right"))
    flipped = border_cast(img[::-1, ::-1], truth[::-1, ::-1], 16)  # the band is now along the bottom
    assert np.allclose(flipped["bottom"], cast["top"]) and np.allclose(flipped["right"], cast["left"])
