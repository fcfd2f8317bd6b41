"""Model folders (save/load round trip), bad inputs with clear errors, and the CLI."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from infd_core import configs
from infd_core.__main__ import main
from infd_core.checkpoint import CheckpointError, latent_bytes, latent_from_bytes, load_latent, save_latent
from infd_core.geometry import PixelRange
from infd_core.pipeline import Pipeline, check_size


def autoencoder_only() -> configs.ModelConfig:
    cfg = configs.cpu()
    cfg.diffusion = None
    return cfg


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """An autoencoder-only cpu-preset model folder (never modified: tests corrupt copies)."""
    folder = tmp_path_factory.mktemp("models") / "ae"
    Pipeline.from_config(autoencoder_only(), seed=1).save(folder)
    return folder


@pytest.fixture
def model_copy(small_model, tmp_path) -> Path:
    return Path(shutil.copytree(small_model, tmp_path / "copy"))


def latent(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# --- round trip ------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["cpu", "cpu3"])  # cpu3: a projection to phi after the decoder
def test_save_load_round_trip_gives_identical_phi_pixels_and_samples(tmp_path, preset):
    pipe = Pipeline.from_config(configs.preset(preset), seed=3)
    pipe.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "autoencoder.safetensors", "unet.safetensors"}
    loaded = Pipeline.load(tmp_path / "m")
    assert json.dumps(loaded.cfg.to_json()) == json.dumps(pipe.cfg.to_json())
    z = latent()
    a, b = pipe.field(z), loaded.field(z)
    assert torch.equal(a.phi, b.phi)
    assert np.array_equal(pipe.render(a, 300, 200), loaded.render(b, 300, 200))
    assert torch.equal(pipe.sample(seed=4, steps=2), loaded.sample(seed=4, steps=2))


def test_sampling_uses_the_models_own_eta_unless_told():
    pipe = Pipeline.from_config(configs.cpu(), seed=3)
    assert pipe.cfg.diffusion.eta == 0.0  # the cpu preset samples deterministically
    default, zero, one = (pipe.sample(seed=4, steps=2, **kw) for kw in ({}, {"eta": 0.0}, {"eta": 1.0}))
    assert torch.equal(default, zero) and not torch.equal(default, one)
    pipe.cfg.diffusion.eta = 1.0
    assert torch.equal(pipe.sample(seed=4, steps=2), one)


# --- bad model folders -----------------------------------------------------------------------

def test_missing_folder_config_and_weights(tmp_path, model_copy):
    with pytest.raises(CheckpointError, match="does not exist"):
        Pipeline.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        Pipeline.load(tmp_path / "empty")
    (model_copy / "autoencoder.safetensors").unlink()
    with pytest.raises(CheckpointError, match="autoencoder.safetensors"):
        Pipeline.load(model_copy)


def test_config_with_a_unet_but_no_unet_file(model_copy):
    data = json.loads((model_copy / "config.json").read_text())
    data["diffusion"] = configs.cpu().to_json()["diffusion"]
    (model_copy / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="unet.safetensors"):
        Pipeline.load(model_copy)


def test_truncated_and_corrupt_safetensors(model_copy):
    path = model_copy / "autoencoder.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="autoencoder.safetensors: not a readable safetensors file"):
        Pipeline.load(model_copy)
    path.write_bytes(b"\xff" * 8 + data[8:])  # header length garbage
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Pipeline.load(model_copy)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Pipeline.load(model_copy)


@pytest.mark.parametrize("text,match", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "not an infd model config"),
    ('{"format": "something-else"}', "not an infd model config"),
    ('{"format": "infd-model", "version": 99}', "unsupported infd model config version"),
    ('{"format": "infd-model", "version": 1, "autoencoder": {"renderer": {"kind": "nerf"}}}', "renderer kind"),
    ('{"format": "infd-model", "version": 1, "autoencoder": {"bogus_size": 3}}', "invalid model config"),
])
def test_malformed_config_json(model_copy, text, match):
    (model_copy / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        Pipeline.load(model_copy)


def test_config_sizes_that_do_not_match_the_weights(model_copy):
    data = json.loads((model_copy / "config.json").read_text())
    data["autoencoder"]["renderer"]["width"] = 48
    (model_copy / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"do not match config.json.*wrong shapes.*renderer"):
        Pipeline.load(model_copy)
    data["autoencoder"]["renderer"]["width"] = 32
    data["autoencoder"]["renderer"]["blocks"] = 3
    (model_copy / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"missing \(e.g. \['renderer.net.model.3"):
        Pipeline.load(model_copy)


def test_extra_weights_are_refused(model_copy):
    path = model_copy / "autoencoder.safetensors"
    state = load_file(str(path))
    state["stowaway"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected \(e.g. \['stowaway'\]\)"):
        Pipeline.load(model_copy)


# --- bad latents, sizes and options -------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe(small_model) -> Pipeline:
    return Pipeline.load(small_model)


@pytest.mark.parametrize("z,error,match", [
    (torch.randn(1, 3, 32, 32), ValueError, r"shape \[B, 3, 64, 64\]"),
    (torch.randn(3, 64, 64), ValueError, "shape"),
    (torch.randn(1, 4, 64, 64), ValueError, "shape"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.int64), TypeError, "floating-point"),
    (np.zeros((1, 3, 64, 64), dtype=np.float32), TypeError, "floating-point tensor"),
    (torch.full((1, 3, 64, 64), float("nan")), ValueError, "NaN"),
    (torch.full((1, 3, 64, 64), float("inf")), ValueError, "infinite"),
])
def test_bad_latents(pipe, z, error, match):
    with pytest.raises(error, match=match):
        pipe.field(z)


@pytest.mark.parametrize("height,width", [(0, 64), (64, -8), (64.5, 64), (10**7, 64)])
def test_bad_sizes(pipe, height, width):
    field = pipe.field(latent())
    with pytest.raises(ValueError, match="height|width"):
        pipe.render(field, height, width)
    with pytest.raises(ValueError):
        check_size(height, width)


def test_pixel_budget_and_regions_outside_the_level(pipe):
    with pytest.raises(ValueError, match="exceeds the limit"):
        check_size(8192, 8192, max_pixels=4096 * 4096)
    field = pipe.field(latent())
    with pytest.raises(ValueError, match="outside"):
        pipe.render(field, 64, 64, PixelRange(32, 80, 0, 16))
    with pytest.raises(ValueError, match="tile size"):
        pipe.render(field, 64, 64, tile=0)


def test_bad_pipeline_options(small_model):
    with pytest.raises(ValueError, match="precision"):
        Pipeline.load(small_model, precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            Pipeline.load(small_model, device="cuda")
    with pytest.raises(RuntimeError, match="no diffusion UNet"):
        Pipeline.load(small_model).sample(seed=0, steps=1)


# --- CLI --------------------------------------------------------------------------------------

def test_cli_samples_a_png_of_the_requested_size_and_renders_its_latent(tmp_path):
    out = tmp_path / "out.png"
    assert main(["sample", "--preset", "cpu", "--seed", "0", "--steps", "2", "--height", "96", "--width", "160",
                 "--out", str(out), "--quiet"]) == 0
    with Image.open(out) as img:
        assert img.size == (160, 96) and img.mode == "RGB"
    saved = tmp_path / "out.latent.safetensors"
    assert saved.is_file()
    full, crop = tmp_path / "full.png", tmp_path / "crop.png"
    common = ["render", "--preset", "cpu", "--latent", str(saved), "--size", "128", "--quiet"]
    assert main([*common, "--out", str(full)]) == 0
    assert main([*common, "--region", "0.25,0.5,0.75,1", "--tile", "32", "--out", str(crop)]) == 0
    full_px, crop_px = np.asarray(Image.open(full)), np.asarray(Image.open(crop))
    assert crop_px.shape == (64, 64, 3)
    assert np.array_equal(crop_px, full_px[64:128, 32:96])


def test_latent_files_are_one_format_and_old_cli_files_still_load(tmp_path):
    z = torch.randn(1, 3, 64, 64)
    save_latent(tmp_path / "a.latent.safetensors", z, {"model": "cpu", "seed": 3})
    assert torch.equal(load_latent(tmp_path / "a.latent.safetensors"), z)
    assert torch.equal(latent_from_bytes(latent_bytes(z)), z)  # what session files hold
    save_file({"z": z}, str(tmp_path / "old.latent.safetensors"))  # the CLI's files before the shared format
    assert torch.equal(load_latent(tmp_path / "old.latent.safetensors"), z)
    save_file({"w": z}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a latent file"):
        load_latent(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a latent file"):
        load_latent(tmp_path / "junk.safetensors")


def bad_latent_file(tmp_path: Path) -> str:
    path = tmp_path / "int.latent.safetensors"
    save_file({"z": torch.zeros(1, 3, 64, 64, dtype=torch.int32)}, str(path))
    return str(path)


@pytest.mark.parametrize("argv,match", [
    (["sample", "--size", "0"], "height must be a positive integer"),
    (["sample", "--size", "1000000"], "exceeds the maximum side"),
    (["sample", "--height", "64", "--width", "-3"], "width must be a positive integer"),
    (["sample", "--size", "64"], "no diffusion UNet"),  # this model is autoencoder-only
    (["render", "--latent", "{tmp}/missing.safetensors", "--size", "64"], "not a latent file"),
    (["render", "--latent", "{bad_latent}", "--size", "64"], "floating-point"),
    (["render", "--latent", "{bad_latent}", "--size", "64", "--region", "0.5,0.5,0.4,0.9"], "x1 > x0"),
    (["render", "--latent", "{bad_latent}", "--size", "64", "--region", "0.5,0.5,1.5,0.9"], "outside the image"),
    (["render", "--latent", "{bad_latent}", "--size", "64", "--region", "a,b"], "--region must be"),
])
def test_cli_bad_inputs_exit_2_with_a_message(small_model, tmp_path, capsys, argv, match):
    argv = [a.format(tmp=tmp_path, bad_latent=bad_latent_file(tmp_path)) for a in argv]
    assert main([*argv, "--model", str(small_model), "--out", str(tmp_path / "x.png"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err
    assert not (tmp_path / "x.png").exists()


def test_cli_bad_model_and_checkpoint(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint" * 10)
    assert main(["import-authors", str(garbage), "--out", str(tmp_path / "imported")]) == 2
    assert "garbage.pth: " in capsys.readouterr().err  # a CheckpointError naming the file
    assert main(["sample", "--preset", "cpu", "--steps", "0", "--size", "64", "--out", str(tmp_path / "x.png")]) == 2
    assert "steps must be an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage errors also exit with 2
        main(["sample", "--size", "big", "--out", "x.png"])
    assert exit_info.value.code == 2


def test_thumbnail_skip_starts_as_thumbnail_in_and_upsampled_latent_out() -> None:
    """cpu preset at init: latent mean = the 4x4-average thumbnail, phi[:3] += its bilinear upsampling."""
    from infd_core.autoencoder import Autoencoder

    torch.manual_seed(0)
    ae = Autoencoder(configs.cpu().autoencoder).eval()
    image = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        z = ae.encode(image)
        assert torch.allclose(z, torch.nn.functional.avg_pool2d(image, 4), atol=1e-6)
        up = torch.nn.functional.interpolate(z, size=(256, 256), mode="bilinear", align_corners=False)
        assert torch.allclose(ae.features(z)[:, :3] - ae.decoder(z)[:, :3], up, atol=1e-5)


def test_decode_pad_decodes_the_reflected_latent_and_crops_phi(tmp_path) -> None:
    """``decode_pad = k``: phi is the decoder's output for the latent with k cells of reflection on
    every side, cropped back to 4 phi cells per latent cell (any extent); saved and loaded with the model."""
    torch.manual_seed(0)
    cfg = configs.cpu3()
    padded = Pipeline.from_config(dataclasses.replace(cfg, autoencoder=dataclasses.replace(cfg.autoencoder, decode_pad=2)),
                                  seed=0)
    plain = Pipeline.from_config(cfg, seed=0)
    plain.autoencoder.load_state_dict(padded.autoencoder.state_dict())
    for cells in ((64, 64), (64, 128)):
        z = torch.randn(1, 3, *cells) * 0.5
        with torch.no_grad():
            phi = padded.autoencoder.decode(z)
            want = plain.autoencoder.features(torch.nn.functional.pad(z, (2, 2, 2, 2), mode="reflect"))[..., 8:-8, 8:-8]
            unpadded = plain.autoencoder.decode(z)
        assert phi.shape == unpadded.shape == (1, 16, 4 * cells[0], 4 * cells[1])
        assert torch.allclose(phi, want, atol=1e-6)
        assert (phi - unpadded)[..., :8, :].abs().mean() > 10 * (phi - unpadded)[..., 100:140, 100:140].abs().mean()
    padded.save(tmp_path / "m")
    assert Pipeline.load(tmp_path / "m").cfg.autoencoder.decode_pad == 2
    with pytest.raises(ValueError, match="decode_pad must be 0 to 4"):
        dataclasses.replace(cfg.autoencoder, decode_pad=5)


def test_configs_written_before_a_field_existed_load_as_before(model_copy) -> None:
    """Older model folders (and the authors' paper preset): no skip, no renderer base, φ = the decoder's top level,
    ε-prediction, no clamp."""
    data = json.loads((model_copy / "config.json").read_text())
    del data["autoencoder"]["thumbnail_skip"]
    del data["autoencoder"]["renderer"]["base"]
    del data["autoencoder"]["phi_channels"]
    data["autoencoder"].pop("decode_pad", None)
    data["diffusion"] = dataclasses.asdict(configs.cpu().diffusion)
    del data["diffusion"]["prediction"]
    del data["diffusion"]["latent_range"]
    cfg = configs.ModelConfig.from_json(data)
    assert cfg.autoencoder.thumbnail_skip is False and configs.paper().autoencoder.thumbnail_skip is False
    assert cfg.autoencoder.renderer.base == "none"
    assert cfg.diffusion.prediction == "epsilon" == configs.paper().diffusion.prediction
    assert cfg.diffusion.latent_range is None
    assert cfg.autoencoder.phi_channels is None  # phi is the decoder's top level
    assert cfg.autoencoder.decode_pad == 0  # the decoder's own zero padding at the borders
    with pytest.raises(ValueError, match="phi_channels must be at least 3"):
        configs.ModelConfig.from_json({**data, "autoencoder": {**data["autoencoder"], "phi_channels": 2}})
    with pytest.raises(ValueError, match="thumbnail_skip needs z_channels == 3"):
        configs.ModelConfig.from_json({**data, "autoencoder": {**data["autoencoder"], "thumbnail_skip": True,
                                                                 "z_channels": 4}})
