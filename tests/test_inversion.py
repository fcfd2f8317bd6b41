"""Latent refinement (infd_core.inversion) and the ``encode`` CLI, on the embedded default model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from infd_core.checkpoint import load_latent
from skimage import data

from infd_core.__main__ import main
from infd_core.geometry import PixelRange
from infd_core.inversion import encoder_target, refine_latent
from infd_core.perceptual import offline_lpips
from infd_core.pipeline import Pipeline


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(data.coffee()).resize((256, 256), Image.Resampling.LANCZOS)


def fit_loss(pipe: Pipeline, image: Image.Image, z: torch.Tensor) -> float:
    """What refine_latent minimises: L1 + LPIPS of the 256² render against the 256² image."""
    target = encoder_target(pipe, image)
    with torch.no_grad():
        out = pipe.render_tensor(pipe.field(z), 256, 256, PixelRange(0, 256, 0, 256))
        return float((out - target).abs().mean() + offline_lpips()(out, target).mean())


def test_refinement_lowers_the_fit_loss_deterministically(tiny_pipe: Pipeline, photo: Image.Image) -> None:
    z0 = tiny_pipe.encode(photo)
    seen = []
    z = refine_latent(tiny_pipe, photo, steps=6, callback=lambda i, n, loss: seen.append((i, n, loss)))
    assert z.shape == z0.shape and not z.requires_grad
    assert [s[:2] for s in seen] == [(i, 6) for i in range(1, 7)]
    before, after = fit_loss(tiny_pipe, photo, z0), fit_loss(tiny_pipe, photo, z)
    assert after < 0.9 * before, (before, after)
    assert torch.equal(z, refine_latent(tiny_pipe, photo, steps=6))
    assert torch.equal(refine_latent(tiny_pipe, photo, steps=0), z0)  # 0 steps: the encoder's latent


def test_refinement_stops_when_asked_and_starts_where_told(tiny_pipe: Pipeline, photo: Image.Image) -> None:
    steps = []
    z1 = refine_latent(tiny_pipe, photo, steps=50, perceptual_weight=0, callback=lambda i, n, loss: steps.append(i),
                       should_stop=lambda: len(steps) >= 2)
    assert steps == [1, 2]
    z2 = refine_latent(tiny_pipe, photo, steps=1, perceptual_weight=0, z=z1)
    assert not torch.equal(z1, z2) and z2.shape == z1.shape


@pytest.mark.parametrize("kw,match", [
    (dict(steps=-1), "steps must be"),
    (dict(steps=2.5), "steps must be"),
    (dict(lr=0.0), "lr must be"),
    (dict(lr=float("nan")), "lr must be"),
    (dict(perceptual_weight=-1.0), "perceptual_weight must be"),
    (dict(z=torch.zeros(2, 3, 64, 64)), "does not match image batch"),
    (dict(z=torch.zeros(1, 4, 64, 64)), "latent must have shape"),
])
def test_refinement_rejects_bad_arguments(tiny_pipe: Pipeline, photo: Image.Image, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        refine_latent(tiny_pipe, photo, **kw)


def test_cli_encode_writes_a_render_and_a_latent_that_render_reproduces(tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    Image.fromarray(data.chelsea()).save(src)  # 451x300: squashed to 256² like in training, rendered at 3:2
    out = tmp_path / "zoom.png"
    assert main(["encode", str(src), "--refine", "2", "--size", "320", "--out", str(out), "--quiet"]) == 0
    latent = tmp_path / "zoom.latent.safetensors"
    assert load_latent(latent).shape == (1, 3, 64, 64)
    again = tmp_path / "again.png"  # the latent file knows the photo's shape
    assert main(["render", "--latent", str(latent), "--size", "320", "--out", str(again), "--quiet"]) == 0
    a, b = np.asarray(Image.open(out)), np.asarray(Image.open(again))
    assert a.shape == (213, 320, 3) and np.array_equal(a, b)
    assert main(["render", "--latent", str(latent), "--size", "320x320", "--out", str(again), "--quiet"]) == 2
    assert main(["render", "--latent", str(latent), "--size", "640x426", "--out", str(again), "--quiet"]) == 0
    # the render resembles the photo (a real encoder, not noise)
    ref = np.asarray(Image.open(src).convert("RGB").resize((320, 213), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(a.astype(float) - ref).mean() < 25


@pytest.mark.parametrize("args,match", [
    (["{tmp}/missing.jpg"], "not a readable image"),
    (["{tmp}/garbage.jpg"], "not a readable image"),
    (["{tmp}/ok.png", "--refine", "-1"], "--refine must be >= 0"),
    (["{tmp}/ok.png", "--size", "0"], "height must be a positive integer"),
])
def test_cli_encode_bad_inputs_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     args: list[str], match: str) -> None:
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 20)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "ok.png")
    argv = ["encode", *(a.format(tmp=tmp_path) for a in args), "--out", str(tmp_path / "x.png"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.latent.safetensors").exists()
