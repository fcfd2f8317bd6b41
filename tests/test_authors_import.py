"""The importer for the authors' released ``.pth`` checkpoints.

Two kinds of check. (1) Golden fixtures made by the authors' own code (``infd_devkit/authors_fixtures.py``,
two non-paper sizes with a UNet each): the import must reproduce their encoder, decoder, renders,
UNet and DDIM sampler. (2) An autoencoder-only checkpoint built here from a written-down
description of their key layout (LDM encoder/decoder names, their CLIF renderer, LPIPS and
discriminator junk), at widths of 128 channels, random weights. The imported model is checked against
references that do not use infd_core's modules: diffusers' ``Encoder``/``Decoder`` loaded with
diffusers' own LDM key converter, and a functional CLIF written after the authors' code
(``grid_sample`` nearest, ``align_corners=False``; GroupNorm over the rendered patch).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import Tensor

from infd_core.__main__ import main
from infd_core.authors import import_authors, read_authors_checkpoint
from infd_core.autoencoder import Normalize
from infd_core.checkpoint import CheckpointError, read_config
from infd_core.geometry import PixelRange, Size, level_grid
from infd_core.pipeline import Pipeline, default_model_dir

# The authors': 128, (1, 2, 4), 2, 3, 8192, 256. Every encoder/decoder layer keeps >= 128 channels: there
# infd's Normalize and LDM's GroupNorm(32) agree (narrower infd layers use channels // 4 groups).
CH, MULT, BLOCKS, Z, CODES, WIDTH = 128, (1, 1, 2), 1, 3, 64, 32
GROUPS, EPS = 32, 1e-6

# --- an authors'-layout state dict ---------------------------------------------------------------

Shapes = dict[str, tuple[int, ...]]


def conv(s: Shapes, name: str, cin: int, cout: int, k: int) -> None:
    s[f"{name}.weight"], s[f"{name}.bias"] = (cout, cin, k, k), (cout,)


def norm(s: Shapes, name: str, c: int) -> None:
    s[f"{name}.weight"], s[f"{name}.bias"] = (c,), (c,)


def resnet(s: Shapes, name: str, cin: int, cout: int) -> None:
    norm(s, f"{name}.norm1", cin), conv(s, f"{name}.conv1", cin, cout, 3)
    norm(s, f"{name}.norm2", cout), conv(s, f"{name}.conv2", cout, cout, 3)
    if cin != cout:
        conv(s, f"{name}.nin_shortcut", cin, cout, 1)


def attn(s: Shapes, name: str, c: int) -> None:
    norm(s, f"{name}.norm", c)
    for part in ("q", "k", "v", "proj_out"):
        conv(s, f"{name}.{part}", c, c, 1)


def mid(s: Shapes, name: str, c: int) -> None:
    resnet(s, f"{name}.block_1", c, c), attn(s, f"{name}.attn_1", c), resnet(s, f"{name}.block_2", c, c)


def ldm_encoder(s: Shapes, p: str) -> None:
    """LDM ``Encoder(ch, ch_mult, num_res_blocks, attn_resolutions=[], z_channels, double_z=False)``."""
    conv(s, f"{p}.conv_in", 3, CH, 3)
    block_in = CH
    for i, m in enumerate(MULT):
        for j in range(BLOCKS):
            resnet(s, f"{p}.down.{i}.block.{j}", block_in, CH * m)
            block_in = CH * m
        if i != len(MULT) - 1:
            conv(s, f"{p}.down.{i}.downsample.conv", block_in, block_in, 3)
    mid(s, f"{p}.mid", block_in)
    norm(s, f"{p}.norm_out", block_in), conv(s, f"{p}.conv_out", block_in, Z, 3)


def ldm_decoder(s: Shapes, p: str) -> None:
    """LDM ``Decoder`` with its final ``norm_out``/``conv_out`` (the importer drops them)."""
    block_in = CH * MULT[-1]
    conv(s, f"{p}.conv_in", Z, block_in, 3)
    mid(s, f"{p}.mid", block_in)
    for i in reversed(range(len(MULT))):
        for j in range(BLOCKS + 1):
            resnet(s, f"{p}.up.{i}.block.{j}", block_in, CH * MULT[i])
            block_in = CH * MULT[i]
        if i != 0:
            conv(s, f"{p}.up.{i}.upsample.conv", block_in, block_in, 3)
    norm(s, f"{p}.norm_out", block_in), conv(s, f"{p}.conv_out", block_in, 3, 3)


def authors_shapes() -> Shapes:
    s: Shapes = {}
    ldm_encoder(s, "encoder.0")
    conv(s, "encoder.1", Z, Z, 1)
    s["quantizer.embedding.weight"] = (CODES, Z)
    conv(s, "decoder.0", Z, Z, 1)
    ldm_decoder(s, "decoder.1")
    conv(s, "renderer.net.model.0", CH + 4, WIDTH, 3)
    resnet(s, "renderer.net.model.1", WIDTH, WIDTH), resnet(s, "renderer.net.model.2", WIDTH, WIDTH)
    norm(s, "renderer.net.norm_out", WIDTH), conv(s, "renderer.net.conv_out", WIDTH, 3, 3)
    conv(s, "perc_loss.net.slice1.0", 3, 8, 3)  # training losses: not imported
    s["perc_loss.lin0.model.1.weight"] = (1, 8, 1, 1)
    conv(s, "disc.main.0", 3, 8, 4)
    return s


def random_state(shapes: Shapes, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    for name, shape in shapes.items():
        x = torch.randn(shape, generator=g)
        if name == "quantizer.embedding.weight":
            sd[name] = x
        elif len(shape) > 1:  # weights: unit-variance activations
            sd[name] = x / (torch.tensor(shape[1:]).prod().float().sqrt())
        elif ".norm" in name and name.endswith(".weight"):
            sd[name] = 1 + 0.1 * x
        else:  # biases
            sd[name] = 0.1 * x
    return sd


def save_authors_checkpoint(path: Path, sd: dict[str, Tensor]) -> Path:
    args = {"encoder": {"name": "ldm_encoder", "args": {"ch": CH, "ch_mult": list(MULT), "num_res_blocks": BLOCKS}},
            "renderer": {"name": "liif", "args": {"net": {"name": "simple_renderer_net", "args": {"hidden_channels": WIDTH}}}}}
    torch.save({"cfg": {"model": {"name": "infd", "args": args}, "max_iter": 10}, "model": {"name": "infd", "args": args, "sd": sd},
                "optimizers": {}, "iter": 5}, path)
    return path


@pytest.fixture(scope="module")
def sd() -> dict[str, Tensor]:
    return random_state(authors_shapes())


@pytest.fixture(scope="module")
def imported(sd, tmp_path_factory) -> tuple[Pipeline, Path]:
    tmp = tmp_path_factory.mktemp("authors")
    ckpt = save_authors_checkpoint(tmp / "ffhq-random.pth", sd)
    out = tmp / "model"
    import_authors(ckpt, out)
    return Pipeline.load(out), ckpt


# --- independent references ------------------------------------------------------------------------

def diffusers_coders(sd: dict[str, Tensor]) -> tuple[Encoder, Decoder]:
    """diffusers' Encoder/Decoder with the LDM weights, renamed by diffusers' own converter."""
    ldm = {k.replace("encoder.0.", "encoder.", 1).replace("decoder.1.", "decoder.", 1): v
           for k, v in sd.items() if k.startswith(("encoder.0.", "decoder.1."))}
    widths = tuple(CH * m for m in MULT)
    config = {"down_block_types": ["DownEncoderBlock2D"] * len(MULT), "up_block_types": ["UpDecoderBlock2D"] * len(MULT),
              "block_out_channels": list(widths), "layers_per_block": BLOCKS}
    converted = convert_ldm_vae_checkpoint(ldm, config)
    enc = Encoder(3, Z, config["down_block_types"], widths, BLOCKS, norm_num_groups=GROUPS, double_z=False)
    dec = Decoder(Z, 3, config["up_block_types"], widths, BLOCKS, norm_num_groups=GROUPS)
    enc.load_state_dict({k[len("encoder."):]: v for k, v in converted.items() if k.startswith("encoder.")}, strict=True)
    dec.load_state_dict({k[len("decoder."):]: v for k, v in converted.items() if k.startswith("decoder.")}, strict=True)
    return enc.eval(), dec.eval()


@torch.no_grad()
def reference_encode(sd: dict[str, Tensor], enc: Encoder, image: Tensor) -> Tensor:
    return F.conv2d(enc(image), sd["encoder.1.weight"], sd["encoder.1.bias"])


@torch.no_grad()
def reference_phi(sd: dict[str, Tensor], dec: Decoder, z: Tensor) -> Tensor:
    """Quantise, 1x1 conv, LDM decoder up to (not including) its final norm/conv."""
    codes = sd["quantizer.embedding.weight"]
    flat = z.permute(0, 2, 3, 1).reshape(-1, Z)
    zq = codes[torch.cdist(flat, codes).argmin(1)].view(z.shape[0], *z.shape[2:], Z).permute(0, 3, 1, 2)
    h = dec.conv_in(F.conv2d(zq, sd["decoder.0.weight"], sd["decoder.0.bias"]))
    h = dec.mid_block(h, None)
    for block in dec.up_blocks:
        h = block(h, None)
    return h


def make_coord_grid(h: int, w: int) -> Tensor:
    """The authors' ``make_coord_grid``: cell centres in [-1, 1], (y, x) last."""
    ys, xs = ((0.5 + torch.arange(n)) / n * 2 - 1 for n in (h, w))
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


@torch.no_grad()
def reference_render(sd: dict[str, Tensor], phi: Tensor, height: int, width: int) -> Tensor:
    """The authors' CLIF on the whole ``height x width`` grid, from the raw weights."""
    b, _, h, w = phi.shape
    coord = make_coord_grid(height, width)[None].expand(b, -1, -1, -1)
    cell = torch.tensor([2.0 / height, 2.0 / width]).expand(b, height, width, 2)
    grid = coord.flip(-1)  # grid_sample wants (x, y)
    feat = F.grid_sample(phi, grid, mode="nearest", align_corners=False)
    feat_coord = make_coord_grid(h, w).permute(2, 0, 1)[None].expand(b, -1, -1, -1)
    q_coord = F.grid_sample(feat_coord, grid, mode="nearest", align_corners=False).permute(0, 2, 3, 1)
    scale = torch.tensor([float(h), float(w)])
    x = torch.cat([feat, ((coord - q_coord) * scale).permute(0, 3, 1, 2), (cell * scale).permute(0, 3, 1, 2)], dim=1)

    def c(x: Tensor, name: str) -> Tensor:
        return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=sd[f"{name}.weight"].shape[-1] // 2)

    def gn_silu(x: Tensor, name: str) -> Tensor:
        return F.silu(F.group_norm(x, GROUPS, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=EPS))

    p = "renderer.net"
    x = c(x, f"{p}.model.0")
    for i in (1, 2):
        blk = f"{p}.model.{i}"
        x = x + c(gn_silu(c(gn_silu(x, f"{blk}.norm1"), f"{blk}.conv1"), f"{blk}.norm2"), f"{blk}.conv2")
    return c(gn_silu(x, f"{p}.norm_out"), f"{p}.conv_out")


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# --- tests -------------------------------------------------------------------------------------

def test_inferred_architecture(imported):
    pipe, _ = imported
    ae = pipe.cfg.autoencoder
    for coder in (ae.encoder, ae.decoder):
        assert (coder.ch, tuple(coder.ch_mult), coder.num_res_blocks, coder.mid_attn) == (CH, MULT, BLOCKS, True)
        assert tuple(coder.attn_resolutions) == ()
    assert (ae.renderer.kind, ae.renderer.width, ae.renderer.blocks, ae.renderer.norm) == ("clif", WIDTH, 2, "group")
    assert (ae.regularizer, ae.n_embed, ae.z_channels) == ("vq", CODES, Z)
    assert pipe.unet is None and pipe.cfg.diffusion is None
    assert pipe.cfg.meta["imported_from"] == "ffhq-random.pth"


def test_imported_weights_are_the_authors_minus_the_unused_ones(imported, sd):
    pipe, _ = imported
    ours = pipe.autoencoder.state_dict()
    dropped = {k for k in sd if k not in ours}
    assert all(k.startswith(("perc_loss.", "disc.", "decoder.1.norm_out.", "decoder.1.conv_out.")) for k in dropped)
    assert {k for k in dropped if k.startswith("decoder.1.")} == {
        "decoder.1.norm_out.weight", "decoder.1.norm_out.bias", "decoder.1.conv_out.weight", "decoder.1.conv_out.bias"}
    assert set(ours) <= set(sd) and all(torch.equal(ours[k], sd[k]) for k in ours)


def test_encoder_matches_diffusers_reference(imported, sd):
    pipe, _ = imported
    enc, _ = diffusers_coders(sd)
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = pipe.encode(image)
    assert z.shape == (1, Z, 64, 64)
    assert rel_err(z, reference_encode(sd, enc, image)) < 1e-4


@pytest.fixture(scope="module")
def latent(sd) -> Tensor:
    """Latents a little off the codebook: quantisation picks the same codes in any implementation."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, CODES, (64 * 64,), generator=g)
    z = sd["quantizer.embedding.weight"][idx].view(1, 64, 64, Z).permute(0, 3, 1, 2)
    return z + 1e-3 * torch.randn(z.shape, generator=g)


def test_phi_matches_diffusers_reference(imported, sd, latent):
    pipe, _ = imported
    _, dec = diffusers_coders(sd)
    phi = pipe.field(latent).phi
    assert phi.shape == (1, CH, 256, 256)
    assert rel_err(phi, reference_phi(sd, dec, latent)) < 1e-4


def test_pixels_match_the_authors_clif(imported, sd, latent):
    pipe, _ = imported
    field = pipe.field(latent)
    # a 256^2 level: our per-image statistics are measured on exactly this render
    ours = pipe.render_tensor(field, 256, 256, PixelRange(0, 256, 0, 256))
    assert rel_err(ours, reference_render(sd, field.phi, 256, 256)) < 1e-4
    # any other size without fixed statistics: the authors' whole render, patch statistics included
    coord, cell = level_grid(300, 200)
    with torch.no_grad():
        plain = pipe.autoencoder.renderer(field.phi, coord[None], cell[None])
    assert rel_err(plain, reference_render(sd, field.phi, 300, 200)) < 1e-4


class ExecutesCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvaluatesCode:
    def __reduce__(self):
        return (eval, ("__import__('os').system('echo pwned')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the plain pickle below uses protocol 4
@pytest.mark.parametrize("payload", ["system", "eval"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = ExecutesCode(marker) if payload == "system" else EvaluatesCode()
    path = tmp_path / "evil.pth"
    torch.save({"model": {"name": "infd", "args": {}, "sd": {"x": torch.zeros(1)}}, "hook": evil}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        import_authors(path, tmp_path / "out")
    with open(tmp_path / "plain.pkl", "wb") as f:  # a plain (non-zip) pickle too
        pickle.dump({"model": evil}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_authors_checkpoint(tmp_path / "plain.pkl")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_truncated_missing_and_foreign_checkpoints(tmp_path, sd):
    good = save_authors_checkpoint(tmp_path / "good.pth", sd)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth: not a readable torch checkpoint"):
        import_authors(truncated, tmp_path / "out")
    with pytest.raises(CheckpointError, match="missing.pth: not a readable torch checkpoint"):
        import_authors(tmp_path / "missing.pth", tmp_path / "out")
    torch.save({"state_dict": {"x": torch.zeros(1)}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="expected the authors' layout"):
        import_authors(tmp_path / "foreign.pth", tmp_path / "out")
    no_renderer = {k: v for k, v in sd.items() if not k.startswith("renderer.")}
    with pytest.raises(CheckpointError, match="renderer.net.model.0.weight"):
        import_authors(save_authors_checkpoint(tmp_path / "partial.pth", no_renderer), tmp_path / "out")
    no_encoder = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    with pytest.raises(CheckpointError, match="encoder.0"):
        import_authors(save_authors_checkpoint(tmp_path / "no-encoder.pth", no_encoder), tmp_path / "out")
    wrong = dict(sd, **{"decoder.1.up.0.block.1.conv1.weight": torch.zeros(CH, CH, 1, 1)})
    with pytest.raises(CheckpointError, match="wrong shapes"):
        import_authors(save_authors_checkpoint(tmp_path / "wrong.pth", wrong), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_import_authors(imported, tmp_path, capsys):
    _, ckpt = imported
    assert main(["import-authors", str(ckpt), "--out", str(tmp_path / "m")]) == 0
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "autoencoder.safetensors"}
    out = capsys.readouterr().out
    assert "wrote" in out and "no diffusion UNet in the checkpoint" in out


# --- golden fixtures of the authors' code ------------------------------------------------------

from infd_core.authors import adm_ddim_timesteps, authors_unet_kwargs  # noqa: E402
from infd_core.diffusion import DiffusionConfig, make_scheduler, predict_x0, sample, unet_eps  # noqa: E402
from infd_core.geometry import CELL_TIES, nearest_cell  # noqa: E402
from infd_core.tiling import iter_authors_patches, render_pixels  # noqa: E402
from infd_devkit import authors_fixtures as fx  # noqa: E402

SINGLE, RENDER, RUN = 1e-5, 1e-4, 1e-4  # single forwards (relative), renders (absolute), the 10-step run (relative)


def authors_pth(tmp: Path, name: str) -> tuple[Path, dict[str, Tensor], dict]:
    """The fixture's checkpoint rebuilt in the authors' layout, its weights and the fixture's metadata."""
    _, meta = fx.load(name)
    sd = fx.random_weights([(k, shape) for k, shape in meta["keys"]], meta["seed"])
    assert fx.weights_sha256(sd) == meta["sha256"], "regenerated weights differ from the ones the fixture was made with"
    path = tmp / f"{name}.pth"
    torch.save({"model": {"name": "infd", "args": meta["spec"], "sd": sd}, "iter": 1}, path)
    return path, sd, meta


@pytest.fixture(scope="module", params=sorted(fx.SPECS))
def golden(request, tmp_path_factory):
    """(name, imported pipeline, authors' weights, fixture tensors, metadata) per fixture model."""
    tmp = tmp_path_factory.mktemp(request.param)
    path, sd, meta = authors_pth(tmp, request.param)
    import_authors(path, tmp / "model")
    tensors, _ = fx.load(request.param)
    return request.param, Pipeline.load(tmp / "model"), sd, tensors, meta


def rel(a: Tensor, b: Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def check_summary(ours: Tensor, tensors: dict[str, Tensor], name: str, tol: float, relative: bool) -> None:
    """Compare a full tensor of ours with the fixture's samples, channel means and crop of the authors'."""
    samples = ours.flatten()[fx.sample_indices(ours.numel())]
    ref = tensors[f"{name}.samples"]
    err = rel(samples, ref) if relative else (samples - ref).abs().max().item()
    assert err <= tol, f"{name}: {err:.2e}"
    means = ours.double().mean(dim=(0, 2, 3))
    assert (means - tensors[f"{name}.channel_means"]).abs().max().item() <= tol * ref.abs().max().item()
    if f"{name}.crop" in tensors:
        crop = ours[fx.CROP]
        err = rel(crop, tensors[f"{name}.crop"]) if relative else (crop - tensors[f"{name}.crop"]).abs().max().item()
        assert err <= tol, f"{name} crop: {err:.2e}"


def test_fixture_records_the_authors_commit():
    for name in fx.SPECS:
        _, meta = fx.load(name)
        assert re.fullmatch(r"[0-9a-f]{40}", meta["authors_commit"]) and meta["authors_repository"].endswith("yinboc/infd")
    assert sum(p.stat().st_size for p in fx.FIXTURES.iterdir()) <= 3 * 2**20


def test_imported_config_has_the_authors_knobs(golden):
    name, pipe, _, _, meta = golden
    spec, ae, d = meta["spec"], pipe.cfg.autoencoder, pipe.cfg.diffusion
    for coder in (ae.encoder, ae.decoder):
        assert (coder.ch, list(coder.ch_mult), coder.norm_groups) == (spec["encoder"]["args"]["ch"],
                                                                       spec["encoder"]["args"]["ch_mult"], 32)
    assert ae.latent_size == spec["z_shape"][1] and ae.renderer.cell_ties == "grid_sample"
    unet = spec["z_dm"]["args"]
    assert d.unet["block_out_channels"] == [unet["model_channels"] * m for m in unet["channel_mult"]]
    assert d.unet["layers_per_block"] == unet["num_res_blocks"]
    assert d.unet["resnet_time_scale_shift"] == ("scale_shift" if unet.get("use_scale_shift_norm") else "default")
    assert (d.steps, d.eta, d.timestep_spacing, d.set_alpha_to_one) == (200, 1.0, "leading", True)
    assert (d.beta_start, d.beta_end, d.prediction) == (0.0015, 0.0195, "epsilon")
    assert pipe.cfg.meta["unet_weights"] == "z_dm_ema"


def test_latent_and_phi_match_the_authors(golden):
    _, pipe, sd, tensors, _ = golden
    assert rel(pipe.encode(fx.test_image()), tensors["z"]) <= SINGLE
    field = pipe.field(fx.test_latent(sd, pipe.cfg.autoencoder.latent_size))
    check_summary(field.phi, tensors, "phi", SINGLE, relative=True)


def test_renders_match_the_authors(golden):
    _, pipe, sd, tensors, _ = golden
    renderer = pipe.autoencoder.renderer
    field = pipe.field(fx.test_latent(sd, pipe.cfg.autoencoder.latent_size))
    with torch.no_grad():
        # fixed statistics are measured on a 256² render: there they are the authors' whole render
        fixed = render_pixels(renderer, field.phi, 256, 256, PixelRange(0, 256, 0, 256), norm_stats=field.norm_stats)
        check_summary(fixed, tensors, "render_256x256", RENDER, relative=False)
        for h, w in ((256, 384), (384, 384)):  # the authors' whole render, cell ties included
            coord, cell = level_grid(h, w)
            check_summary(renderer(field.phi, coord[None], cell[None]), tensors, f"render_{h}x{w}", RENDER, relative=False)
        for n in (384, 512):
            img = torch.zeros(1, 3, n, n)
            for rng, rgb in iter_authors_patches(renderer, field.phi, n, n):
                img[..., rng.r0:rng.r1, rng.c0:rng.c1] = rgb
            check_summary(img, tensors, f"patchwise_{n}", RENDER, relative=False)


def test_authors_patchwise_mode_of_the_pipeline(golden):
    _, pipe, sd, tensors, _ = golden
    field = pipe.field(fx.test_latent(sd, pipe.cfg.autoencoder.latent_size))
    img = pipe.render_authors_patchwise(field, 512, 512)
    ref = tensors["patchwise_512.crop"][0]  # rows/cols 240..272 of their 512² patchwise render
    expect = ((ref.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert abs(img[240:272, 240:272].astype(float) - expect).max() <= 1
    region = pipe.render_authors_patchwise(field, 512, 512, PixelRange(200, 300, 100, 400))
    assert (region == img[200:300, 100:400]).all()


def test_unet_forward_matches_the_authors(golden):
    _, pipe, _, tensors, _ = golden
    x, t = fx.unet_inputs(pipe.cfg.autoencoder.latent_size)
    with torch.no_grad():
        assert rel(pipe.unet(x, t).sample, tensors["unet_eps"]) <= SINGLE


@pytest.mark.parametrize("steps, tol", [(10, RUN), (200, 1e-3)])
def test_ddim_run_matches_the_authors_sampler(golden, steps, tol):
    """Same noise: x_T and one draw per step from one generator, as the authors' loop draws them."""
    _, pipe, _, tensors, _ = golden
    d, side = pipe.cfg.diffusion, pipe.cfg.autoencoder.latent_size
    x = sample(unet_eps(pipe.unet, d), d, (1, 3, side, side), steps=steps, eta=d.eta,
               generator=torch.Generator().manual_seed(fx.DDIM_SEED))
    assert rel(x, tensors[f"ddim_{steps}"]) <= tol


def test_the_authors_timesteps_and_last_step():
    d = DiffusionConfig(timestep_spacing="leading", set_alpha_to_one=True)
    sched = make_scheduler(d, "ddim")
    sched.set_timesteps(200)
    assert sched.timesteps.tolist() == list(range(995, -1, -5)) == adm_ddim_timesteps(1000, 200)
    x, eps = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    last = sched.step(eps, 0, x, eta=1.0, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.allclose(last, predict_x0(x, eps, sched.alphas_cumprod[0]), atol=1e-6)  # returns x̂0
    ours = make_scheduler(DiffusionConfig(), "ddim")  # infd's own models keep theirs
    ours.set_timesteps(200)
    assert ours.timesteps[[0, -1]].tolist() == [999, 4] and float(ours.final_alpha_cumprod) < 1


def test_old_configs_keep_infds_sampler_and_norms():
    old = {k: v for k, v in dataclasses.asdict(DiffusionConfig()).items()
           if k not in ("steps", "timestep_spacing", "set_alpha_to_one")}
    d = DiffusionConfig(**old)
    assert (d.steps, d.timestep_spacing, d.set_alpha_to_one) == (50, "trailing", False)
    cfg = read_config(default_model_dir())
    assert (cfg.diffusion.timestep_spacing, cfg.diffusion.set_alpha_to_one) == ("trailing", False)
    assert cfg.autoencoder.encoder.norm_groups is None and cfg.autoencoder.renderer.cell_ties == "floor"
    assert Normalize(64).num_groups == 16 and Normalize(64, 32).num_groups == 32


@pytest.mark.parametrize("h, w", [(256, 384), (384, 384), (640, 640), (300, 200)])
def test_grid_sample_ties_are_grid_samples(h, w):
    coord, _ = level_grid(h, w)
    index = torch.stack(torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij"))[None]
    theirs = F.grid_sample(index, coord[None].flip(-1), mode="nearest", align_corners=False)[0].permute(1, 2, 0)
    size = torch.tensor([256.0, 256.0])
    assert torch.equal(nearest_cell(coord, size, "grid_sample"), theirs)
    differ = (nearest_cell(coord, size, "floor") != theirs).any(-1).float().mean().item()
    if w % 128 == 0 and (w // 128) % 2 == 1:  # odd multiples of 128: a third of the columns lie on cell edges
        assert differ > 0.3
    assert set(CELL_TIES) == {"floor", "grid_sample"}


def test_cli_reports_parts_parameters_and_sampler(tmp_path, capsys):
    path, _, _ = authors_pth(tmp_path, "base32")
    assert main(["import-authors", str(path), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "autoencoder.safetensors", "unet.safetensors"}
    for part in ("encoder", "decoder", "renderer", "unet"):
        assert re.search(rf"^{part}: \d+\.\d\dM parameters$", out, re.M)
    assert "sampler: DDIM 200 steps, eta 1, timesteps 995, 990, 985, ..., 5, 0, last step returns x0: True" in out
    assert "not imported: z_dm.* " in out


def test_what_diffusers_cannot_express_is_refused(tmp_path):
    _, sd, meta = authors_pth(tmp_path, "base32")
    args = meta["spec"]["z_dm"]["args"]
    with pytest.raises(CheckpointError, match="class conditioning"):
        authors_unet_kwargs(sd, "z_dm_ema.", {**args, "num_classes": 10}, 32)
    with pytest.raises(CheckpointError, match="one head size"):
        authors_unet_kwargs(sd, "z_dm_ema.", {**args, "num_head_channels": -1, "num_heads": 4, "num_heads_upsample": 2}, 32)
    assert authors_unet_kwargs(sd, "z_dm_ema.", {**args, "num_head_channels": -1, "num_heads": 4}, 32)[
        "attention_head_dim"] == 16  # one attention width (64): 4 heads of 16
    wide = dict(sd, **{"z_dm_ema.time_embed.0.weight": torch.zeros(128, 16)})  # model_channels 16, first level 32
    with pytest.raises(CheckpointError, match=r"channel_mult\[0\]"):
        authors_unet_kwargs(wide, "z_dm_ema.", {}, 32)
    extra = dict(sd, **{"z_dm_ema.label_emb.weight": torch.zeros(10, 128)})
    torch.save({"model": {"name": "infd", "args": meta["spec"], "sd": extra}}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="no place for.*label_emb"):
        import_authors(tmp_path / "extra.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_imported_model_generates_guides_and_serves_tiles_in_the_app(tmp_path):
    """The app end to end with an imported non-paper-size model: sample, guided edit, tiles."""
    from fastapi.testclient import TestClient

    from app.generate import Finished, generate
    from app.server import create_app
    from app.sessions import State
    from infd_core.geometry import Box
    from infd_core.regions import Region

    path, _, _ = authors_pth(tmp_path, sorted(fx.SPECS)[0])
    import_authors(path, tmp_path / "model")
    app = create_app(Pipeline.load(tmp_path / "model"))
    ctx = app.state.ctx
    s = ctx.store.create(canvas=Size(512, 512))
    assert isinstance(list(generate(ctx, s, seed=0, steps=2))[-1], Finished)
    s.commit(State(s.state.picture, (Region(Box(0.5, 0.5, 1, 1), "color", color=(1, 0, 0), id="a"),)))
    done = list(generate(ctx, s, seed=1, steps=2, guided=True, scale=0.5))[-1]
    assert done.report["held"] and s.state.picture.label.startswith("guided")
    with TestClient(app) as client:
        r = client.get(f"/tiles/{s.key}/{s.view.gen}/9/0_0.png")
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
