"""Both training stages on real (small) images with tiny real models: learning, exact resume, DDP."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage import data

from infd_core.autoencoder import CoderConfig
from infd_core.checkpoint import read_config
from infd_core.configs import ModelConfig, cpu
from infd_core.diffusion import unet_kwargs
from infd_core.pipeline import Pipeline
from training import autoencoder as stage1
from training import default_model
from training import diffusion as stage2
from training.common import wall_time
from training.data import ImageFolder, NeuralFieldCrops

ROOT = Path(__file__).resolve().parent.parent


def tiny_model() -> dict:
    cfg = cpu()
    coder = CoderConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, mid_attn=False)
    cfg.autoencoder.encoder, cfg.autoencoder.decoder = coder, dataclasses.replace(coder)
    cfg.autoencoder.renderer.width, cfg.autoencoder.renderer.blocks = 16, 1
    cfg.autoencoder.n_embed = 64
    cfg.diffusion.unet = unet_kwargs(32, (1, 2), 1, attn_levels=())
    return cfg.to_json()


def ae_config(**kw) -> stage1.AETrainConfig:
    base = dict(model=tiny_model(), batch=2, lr=2e-3, patch=32, min_r=256, max_r=512, p_max=0.5, disc_ndf=8,
                disc_start=0, steps=4, ckpt_every=2, log_every=1, sample_every=1000, workers=0)
    return stage1.AETrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    return folder


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder))


def test_autoencoder_resume_is_exact(photos: Path, tmp_path: Path) -> None:
    stage1.train(ae_config(), [str(photos)], tmp_path / "straight", progress=False)
    stage1.train(ae_config(), [str(photos)], tmp_path / "resumed", steps=2, progress=False)
    stage1.train(ae_config(), [str(photos)], tmp_path / "resumed", resume=True, progress=False)
    a = weights(tmp_path / "straight" / "model" / "autoencoder.safetensors")
    b = weights(tmp_path / "resumed" / "model" / "autoencoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,time,l1,lpips") and len(log) == 5


def test_decoder_stage_trains_on_a_frozen_encoder(photos: Path, tmp_path: Path) -> None:
    """``init_encoder``: the donor's encoder is loaded and stays fixed (so are the latents a
    diffusion model was trained on); the decoder and renderer train from scratch."""
    stage1.train(ae_config(steps=2), [str(photos)], tmp_path / "first", progress=False)
    donor = tmp_path / "first" / "model"
    stage1.train(ae_config(steps=3, init_encoder=str(donor), lr_final=1e-4), [str(photos)], tmp_path / "second",
                 progress=False)
    a = weights(donor / "autoencoder.safetensors")
    b = weights(tmp_path / "second" / "model" / "autoencoder.safetensors")
    enc = [k for k in a if k.startswith("encoder.")]
    assert enc and all(torch.equal(a[k], b[k]) for k in enc)
    assert not torch.equal(a["renderer.net.conv_out.weight"], b["renderer.net.conv_out.weight"])
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert torch.equal(Pipeline.load(donor).encode(image), Pipeline.load(tmp_path / "second" / "model").encode(image))
    meta = read_config(tmp_path / "second" / "model").meta  # where the encoder came from, for the model card
    assert meta["encoder"] == {"from": str(donor), "steps": 2, "seconds": read_config(donor).meta["stage1_seconds"]}
    assert meta["stage1_steps"] == 3 and isinstance(meta["stage1_seconds"], int)


def test_texture_stage_continues_a_model_folder_on_its_frozen_encoder(photos: Path, tmp_path: Path) -> None:
    """``model`` may be a model folder (continued as it is); the texture loss acts on crops above
    ``texture_min_r`` only, and the log records it."""
    stage1.train(ae_config(steps=2), [str(photos)], tmp_path / "first", progress=False)
    donor = str(tmp_path / "first" / "model")
    cfg = ae_config(model=donor, init=donor, init_encoder=donor, texture_weight=1.0, texture_min_r=300, texture_patch=16,
                    min_r=256, max_r=512, disc_start=10**9, steps=6)
    stage1.train(cfg, [str(photos)], tmp_path / "texture", progress=False)
    assert read_config(tmp_path / "texture" / "model").autoencoder == read_config(Path(donor)).autoencoder
    rows = list(csv.DictReader((tmp_path / "texture" / "log.csv").read_text().splitlines()))
    assert len(rows) == 6 and any(float(r["texture"]) > 0 for r in rows)
    levels = stage1.crop_levels(torch.full((2, 3, 4, 4, 2), 2 / 640))  # [B, K, P, P, 2] -> one level per crop
    assert levels.tolist() == [640.0] * 6


def test_init_encoder_of_another_architecture_is_a_clear_error(photos: Path, tmp_path: Path) -> None:
    other = cpu()
    other.diffusion = None
    other.autoencoder.encoder = CoderConfig(ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, mid_attn=False)
    Pipeline.from_config(other).save(tmp_path / "other")
    with pytest.raises(ValueError, match="does not fit this model's encoder"):
        stage1.train(ae_config(init_encoder=str(tmp_path / "other")), [str(photos)], tmp_path / "run", progress=False)


def test_init_fine_tunes_the_whole_autoencoder(photos: Path, tmp_path: Path) -> None:
    """``init``: training starts from the donor's weights (step 0 renders exactly like the donor)
    and every part trains, the encoder included; the donor's history is kept for the card."""
    stage1.train(ae_config(steps=2), [str(photos)], tmp_path / "first", progress=False)
    first = tmp_path / "first" / "model"
    stage1.train(ae_config(steps=3, init_encoder=str(first)), [str(photos)], tmp_path / "decoder", progress=False)
    donor = tmp_path / "decoder" / "model"
    stage1.train(ae_config(steps=2, init=str(donor)), [str(photos)], tmp_path / "tuned", progress=False)
    a = weights(donor / "autoencoder.safetensors")
    b = weights(tmp_path / "tuned" / "model" / "autoencoder.safetensors")
    assert a.keys() == b.keys()
    for part in ("encoder.", "decoder.", "renderer."):
        assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith(part)), part
    meta = read_config(tmp_path / "tuned" / "model").meta
    first_run = {"from": str(first), "steps": 2, "seconds": read_config(first).meta["stage1_seconds"]}
    decoder_run = {"from": str(donor), "steps": 3, "seconds": read_config(donor).meta["stage1_seconds"]}
    assert meta["init"] == {**decoder_run, "before": {"encoder": first_run}}
    stages = default_model.autoencoder_stages(meta)  # what the model card reads: all three runs, in order
    assert [s["steps"] for s in stages] == [2, 3, 2]
    # with a zero learning rate nothing moves: the starting point really is the donor's weights
    stage1.train(ae_config(steps=1, lr=0.0, init=str(donor)), [str(photos)], tmp_path / "zero", progress=False)
    c = weights(tmp_path / "zero" / "model" / "autoencoder.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_init_from_another_architecture_is_a_clear_error(photos: Path, tmp_path: Path) -> None:
    other = cpu()
    other.diffusion = None
    Pipeline.from_config(other).save(tmp_path / "other")
    with pytest.raises(ValueError, match="differs from this model's"):
        stage1.train(ae_config(init=str(tmp_path / "other")), [str(photos)], tmp_path / "run", progress=False)


def test_posterior_mean_decodes_deterministically() -> None:
    """``posterior="mean"`` trains the decoder on the KL posterior mean (what encode() gives and
    what the diffusion model was trained on) instead of a noisy sample of it."""
    ae = Pipeline.from_config(stage1.model_config(tiny_model())).autoencoder
    with torch.no_grad():  # widen the posterior so that a sample differs visibly from the mean
        ae.encoder[1].bias[3:] = 0.0  # log-variance 0: unit noise
    inp = torch.rand(2, 3, 256, 256) * 2 - 1
    coord = torch.rand(2, 16, 16, 2) * 2 - 1
    cell = torch.full((2, 16, 16, 2), 2 / 256)
    with torch.no_grad():
        mean = [stage1.FieldReconstruction(ae, sample=False)(inp, coord, cell)[0] for _ in range(2)]
        noisy = stage1.FieldReconstruction(ae)(inp, coord, cell)[0]
        z = ae.encode(inp)
    assert torch.equal(mean[0], mean[1]) and not torch.allclose(mean[0], noisy, atol=1e-3)
    assert torch.equal(mean[0], ae.renderer(ae.features(z), coord, cell))
    with pytest.raises(ValueError, match="posterior must be"):
        ae_config(posterior="mode")


def test_posterior_mean_of_a_vq_model_is_a_clear_error(photos: Path, tmp_path: Path) -> None:
    vq = stage1.model_config(tiny_model())
    vq.autoencoder.regularizer, vq.autoencoder.thumbnail_skip = "vq", False
    with pytest.raises(ValueError, match="needs a KL autoencoder"):
        stage1.train(ae_config(model=vq.to_json(), posterior="mean"), [str(photos)], tmp_path, progress=False)


def test_cosine_learning_rate() -> None:
    assert stage1.cosine_lr(0, 100, 1e-3, 1e-5) == 1e-3 and stage1.cosine_lr(7, 100, 1e-3, None) == 1e-3
    assert stage1.cosine_lr(50, 100, 1e-3, 1e-5) == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert stage1.cosine_lr(100, 100, 1e-3, 1e-5) == pytest.approx(1e-5)


def test_autoencoder_learns(photos: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)
    probe = [NeuralFieldCrops(ImageFolder(photos), patch=32, min_r=256, max_r=512)[i] for i in range(4)]

    def l1(model_dir: Path) -> float:
        ae = Pipeline.load(model_dir).autoencoder
        net = stage1.FieldReconstruction(ae)
        batch = {k: torch.stack([p[k] for p in probe]) for k in probe[0]}
        with torch.no_grad():
            pred, _ = net(batch["inp"], batch["coord"], batch["cell"])
        return float((pred - batch["gt"]).abs().mean())

    stage1.train(ae_config(steps=1, ckpt_every=1, disc_start=10**6), [str(photos)], tmp_path, progress=False)
    before = l1(tmp_path / "model")
    stage1.train(ae_config(steps=40, ckpt_every=40, disc_start=10**6), [str(photos)], tmp_path, resume=True,
                 progress=False)
    after = l1(tmp_path / "model")
    assert after < 0.8 * before, (before, after)


def test_diffusion_stage_learns_and_resumes(photos: Path, tmp_path: Path) -> None:
    stage1.train(ae_config(steps=2), [str(photos)], tmp_path / "ae", progress=False)
    cfg = stage2.DMTrainConfig(unet=tiny_model()["diffusion"], batch=4, lr=2e-3, ema=0.9, steps=6, repeats=2,
                               crop_scale=(0.5, 1.0), ckpt_every=3, log_every=1, sample_every=10**6)
    stage2.train(cfg, tmp_path / "ae" / "model", [str(photos)], tmp_path / "dm", steps=3, progress=False)
    stage2.train(cfg, tmp_path / "ae" / "model", [str(photos)], tmp_path / "dm", resume=True, progress=False)
    stage2.train(cfg, tmp_path / "ae" / "model", [str(photos)], tmp_path / "dm2", progress=False)
    a = weights(tmp_path / "dm" / "model" / "unet.safetensors")
    b = weights(tmp_path / "dm2" / "model" / "unet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    z = load_file(str(tmp_path / "dm" / "latents.safetensors"))["z"]
    assert z.shape == (8, 3, 64, 64)
    pipe = Pipeline.load(tmp_path / "dm" / "model")
    assert abs(pipe.cfg.diffusion.latent_std - float(z.std())) < 1e-5
    losses = [float(r.split(",")[2]) for r in (tmp_path / "dm2" / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 6 and all(np.isfinite(losses))
    out = pipe.sample(0, steps=3)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_diffusion_init_starts_from_a_models_unet(photos: Path, tmp_path: Path) -> None:
    stage1.train(ae_config(steps=2), [str(photos)], tmp_path / "ae", progress=False)
    cfg = stage2.DMTrainConfig(unet=tiny_model()["diffusion"], batch=4, lr=2e-3, ema=0.9, steps=2, repeats=1,
                               ckpt_every=2, log_every=1, sample_every=10**6)
    stage2.train(cfg, tmp_path / "ae" / "model", [str(photos)], tmp_path / "dm", progress=False)
    donor = tmp_path / "dm" / "model"
    frozen = dataclasses.replace(cfg, lr=0.0, steps=1, init=str(donor))  # lr 0: the start point is kept as is
    stage2.train(frozen, tmp_path / "ae" / "model", [str(photos)], tmp_path / "tuned", progress=False)
    a, b = weights(donor / "unet.safetensors"), weights(tmp_path / "tuned" / "model" / "unet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = read_config(tmp_path / "tuned" / "model").meta
    assert meta["stage2_init"] == {"from": str(donor), "steps": 2, "seconds": read_config(donor).meta["stage2_seconds"]}
    other = dataclasses.replace(cfg, unet="cpu", init=str(donor))  # the cpu preset's (larger) UNet
    with pytest.raises(ValueError, match="no diffusion UNet of this architecture"):
        stage2.train(other, tmp_path / "ae" / "model", [str(photos)], tmp_path / "bad", progress=False)


@pytest.mark.slow
def test_ddp_two_cpu_processes(photos: Path, tmp_path: Path) -> None:
    import json

    cfg = tmp_path / "ae.json"
    cfg.write_text(json.dumps(dataclasses.asdict(ae_config(steps=2, ckpt_every=2))))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "training.autoencoder", "--config", str(cfg), "--data", str(photos), "--out", str(tmp_path / "out"),
           "--device", "cpu"]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "out" / "model" / "autoencoder.safetensors").exists()
    assert len((tmp_path / "out" / "log.csv").read_text().splitlines()) == 3  # header + 2 steps, rank 0 only


def test_wall_time_sums_restarts(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    assert wall_time(log) == 0.0
    log.write_text("step,time,l1\n25,10.0,0.5\n50,20.0,0.4\n50,5.0,0.4\n75,15.0,0.3\n")  # resumed after step 50
    assert wall_time(log) == 35.0


@pytest.mark.slow
def test_fast_recipe_packs_a_small_set_and_trains_both_stages_within_a_budget(photos: Path, tmp_path: Path) -> None:
    from training import fast

    packed = fast.pack(photos, tmp_path / "packed", size=256, per_image=3, max_mb=0.2)
    files = sorted((tmp_path / "packed").glob("*.jpg"))
    assert packed["files"] == len(files) >= 2 and packed["bytes"] <= 0.2e6 and packed["skipped_over_budget"] > 0
    assert all(Image.open(f).size == (256, 256) for f in files)
    again = fast.pack(photos, tmp_path / "again", size=256, per_image=3, max_mb=0.2)  # deterministic per seed
    assert again == {**packed, "source": str(photos)} and all(
        f.read_bytes() == (tmp_path / "again" / f.name).read_bytes() for f in files)

    tiny = tiny_model()
    milestone = Pipeline.from_config(ModelConfig.from_json(tiny), seed=0)
    milestone.save(tmp_path / "milestone")
    v2 = json.loads(json.dumps(tiny))
    v2["autoencoder"]["decoder"]["ch"], v2["autoencoder"]["renderer"]["features"] = 12, "bilinear"
    model = fast.train(tmp_path / "packed", tmp_path / "run", minutes=0.01, device="cpu",
                       milestone=tmp_path / "milestone", calib=1,
                       ae_set=[f"model={json.dumps(v2)}", "patch=32", "disc_ndf=8", "max_r=256"],
                       dm_set=[f"unet={json.dumps(tiny['diffusion'])}", "batch=2", "repeats=1"])
    pipe = Pipeline.load(model)
    assert pipe.cfg.autoencoder.renderer.features == "bilinear" and pipe.cfg.autoencoder.decoder.ch == 12
    assert pipe.cfg.meta["decoder"]["stage1_steps"] == 10 and pipe.cfg.meta["diffusion"]["stage2_steps"] == 10  # the floor
    enc = {k: v for k, v in weights(model / "autoencoder.safetensors").items() if k.startswith("encoder.")}
    assert all(v.equal(weights(tmp_path / "milestone" / "autoencoder.safetensors")[k]) for k, v in enc.items())
    assert not (tmp_path / "run" / "calibration").exists()
    assert pipe.render(pipe.field(pipe.sample(0, steps=2)), 64, 64).shape == (64, 64, 3)
